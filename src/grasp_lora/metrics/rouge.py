"""ROUGE-L F-measure with language-aware tokens (the default rouge-score tokenizer scores 0 on ar/zh).

`cjk_char` (default, SPEC §1.9): lowercase, Unicode punctuation removed, CJK characters one token each,
other text split on whitespace. `xlsum`: XL-Sum's own language tokenizers (jieba for Chinese). The LCS
itself is the multilingual-rouge scorer's (XL-Sum's fork of rouge-score).
"""

from __future__ import annotations

from .text import remove_punc, tokens

XLSUM_LANG = {"en": "english", "ar": "arabic", "zh": "chinese"}


def _cjk_char_tokenizer(lang: str):
    return lambda text: [t for t in tokens(remove_punc(text.lower()), lang) if t.strip()]


def rouge_l(predictions: list[str], references: list[str], lang: str, tokenizer: str = "cjk_char") -> dict:
    from multilingual_rouge import rouge_scorer

    if tokenizer == "cjk_char":
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, callable_tokenizer=_cjk_char_tokenizer(lang))
    else:
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, lang=XLSUM_LANG.get(lang, lang))
    f = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {"rouge_l": 100 * sum(f) / max(len(f), 1), "rouge_tokenizer": tokenizer}
