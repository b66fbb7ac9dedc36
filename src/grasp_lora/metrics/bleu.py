"""Corpus BLEU-4 with sacrebleu; the signature says how it was computed."""

from __future__ import annotations

from ..languages import Language, as_language


def bleu_tokenizer(lang: str | Language, override: str | None = None) -> str:
    """The language's own (languages.py: 13a for en/de/es/vi, intl for ar/hi, zh for zh; a configured language's
    `bleu_tokenize`, else by its tokens: intl, zh or char) unless the user names one."""
    return override or as_language(lang).bleu


def corpus_bleu(predictions: list[str], references: list[str], tokenize: str) -> dict:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(predictions, [references])
    return {"bleu": score.score, "bleu_signature": str(metric.get_signature())}
