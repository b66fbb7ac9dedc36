"""The paper's five metrics (SPEC §1.9), 0-100: EM and token F1 (QA), BLEU-4 and ROUGE-L (summarization),
BERTScore-F1 (both)."""
