"""Text normalisation and tokens as MLQA's official evaluation defines them (reimplemented), for any language.

lowercase -> remove Unicode punctuation -> remove the language's articles (languages.py: MLQA's lists for its
seven languages) -> tokens: whitespace; for `mixed` languages (zh) each CJK ideograph alone plus each run of
other text split on whitespace; for `char` languages (scripts without spaces: th, ja, my) each character.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata

from ..languages import Language, as_language

PUNCT = {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")} | set(string.punctuation)
CJK = re.compile(r"[\u4e00-\u9fa5]")  # the official script's range


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


def tokens(text: str, lang: str | Language) -> list[str]:
    how = as_language(lang).tokenize
    if how == "mixed":
        return cjk_segments(text)
    if how == "char":
        return [ch for ch in text if not ch.isspace()]
    return text.split()


def normalize(text: str, lang: str | Language) -> str:
    lang = as_language(lang)
    text = remove_punc(text.lower())
    if lang.articles:
        text = re.sub(lang.articles, " ", text)
    return " ".join(t for t in tokens(text, lang) if t.strip())
