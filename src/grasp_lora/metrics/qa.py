"""Exact match and token F1, max over gold answers, as MLQA's official evaluation computes them."""

from __future__ import annotations

from collections import Counter

from ..languages import Language, as_language
from .text import normalize


def f1(prediction: str, gold: str, lang: str | Language) -> float:
    pred, ref = normalize(prediction, lang).split(), normalize(gold, lang).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, lang: str | Language) -> float:
    return float(normalize(prediction, lang) == normalize(gold, lang))


def qa_scores(predictions: list[str], golds: list[list[str]], lang: str | Language) -> dict[str, float]:
    """Corpus EM and F1 on 0-100."""
    lang = as_language(lang)
    em = [max(exact_match(p, g, lang) for g in gs) for p, gs in zip(predictions, golds)]
    f = [max(f1(p, g, lang) for g in gs) for p, gs in zip(predictions, golds)]
    n = max(len(predictions), 1)
    return {"exact_match": 100 * sum(em) / n, "f1": 100 * sum(f) / n}
