"""Corpus BLEU-4 with sacrebleu; the signature says how it was computed."""

from __future__ import annotations

# sacrebleu's flores/spm tokenizers download a model, so they are not offered.
DEFAULT_TOKENIZE = {"zh": "zh", "ar": "intl", "ja": "ja-mecab", "ko": "ko-mecab"}
OFFLINE_TOKENIZERS = ("13a", "intl", "zh", "char", "none", "ja-mecab", "ko-mecab")


def bleu_tokenizer(lang: str, override: str | None = None) -> str:
    return override or DEFAULT_TOKENIZE.get(lang, "13a")


def corpus_bleu(predictions: list[str], references: list[str], tokenize: str) -> dict:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(predictions, [references])
    return {"bleu": score.score, "bleu_signature": str(metric.get_signature())}
