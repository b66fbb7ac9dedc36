"""The paper's five metrics (SPEC §1.9), 0-100: EM and token F1 (QA), BLEU-4 and ROUGE-L (summarization),
BERTScore-F1 (both)."""

# each metric's name in tables and model cards
METRIC_LABELS = {"bertscore_f1": "BERTScore-F1", "bleu": "BLEU-4", "rouge_l": "ROUGE-L", "exact_match": "EM",
                 "f1": "Token F1"}
