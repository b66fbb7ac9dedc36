"""Text normalisation and tokens as MLQA's official evaluation defines them (reimplemented).

lowercase -> remove Unicode punctuation -> remove articles (en: a/an/the; ar: every "ال"; zh: none)
-> tokens: whitespace for most languages; for zh each CJK character plus each run of other text.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata

PUNCT = {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")} | set(string.punctuation)
CJK = re.compile(r"[\u4e00-\u9fa5]")
CJK_LANGS = {"zh"}
ARTICLES = {"en": re.compile(r"\b(a|an|the)\b"), "ar": re.compile(r"\sال^|ال")}


def remove_punc(text: str) -> str:
    return "".join(ch for ch in text if ch not in PUNCT)


def cjk_segments(text: str) -> list[str]:
    """Each CJK character (and punctuation mark) alone; the text between them split on whitespace."""
    out, run = [], ""
    for ch in text:
        if CJK.match(ch) or ch in PUNCT:
            out.extend(run.split())
            run = ""
            out.append(ch)
        else:
            run += ch
    out.extend(run.split())
    return out


def tokens(text: str, lang: str) -> list[str]:
    return cjk_segments(text) if lang in CJK_LANGS else text.split()


def normalize(text: str, lang: str) -> str:
    text = remove_punc(text.lower())
    if lang in ARTICLES:
        text = ARTICLES[lang].sub(" ", text)
    return " ".join(t for t in tokens(text, lang) if t.strip())
