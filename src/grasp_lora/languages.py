"""Languages: everything the tool needs to know about one, in one entry.

A language is its prompt templates (SPEC §1.2), the articles MLQA's evaluation drops before EM/F1, how its text
splits into tokens (EM/F1 and the default ROUGE-L), its XL-Sum file name and its BLEU tokenizer. The seven MLQA
languages are built in; any other is an entry of the YAML file given with --prompts:

    sw:                                  # the language code used with --lang
      qa: "Jibu swali ...\\nMuktadha:{context}\\nSwali:{question}\\nJibu:"
      summarization: "Fupisha ...\\nMakala:{article}\\nMuhtasari:"
      articles: []                       # words EM/F1 drop (default: none)
      tokenize: whitespace               # whitespace | char (scripts written without spaces) | mixed (CJK: each
                                         #   ideograph a token, other text split on spaces)
      xlsum: swahili                     # XL-Sum's file name (default: XL-Sum's name for the code)
      bleu_tokenize: intl                # sacrebleu tokenizer (default: by tokenize, see BLEU_BY_TOKENIZE)
      rouge_language: swahili            # multilingual-rouge's name, for --rouge-tokenize xlsum (default: xlsum)

Files of the older layout, task -> language -> template (`qa: {fr: "..."}`), are read too; the same file may
hold both. An entry for a built-in language changes only the fields it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from .data.records import FIELDS
from .errors import OptionError, UserError
from .files import read_yaml

TOKENIZE = ("whitespace", "mixed", "char")
# A new language's tokens when its entry names none: these scripts are written without spaces between words.
NO_SPACES = {"ja": "char", "th": "char", "my": "char", "lo": "char", "km": "char", "bo": "char", "zh-CN": "mixed",
             "zh-TW": "mixed", "yue": "mixed"}
# sacrebleu's tokenizers that need no download (flores/spm fetch a model); ja-mecab and ko-mecab need their packages.
BLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "none", "ja-mecab", "ko-mecab")
# A configured language's BLEU tokenizer when its entry names none: intl splits any script's punctuation.
BLEU_BY_TOKENIZE = {"whitespace": "intl", "mixed": "zh", "char": "char"}

# XL-Sum v2.0's 45 languages: code -> the name its files carry (`{name}_{train,val,test}.jsonl`).
XLSUM_FILES = {
    "am": "amharic", "ar": "arabic", "az": "azerbaijani", "bn": "bengali", "my": "burmese",
    "zh": "chinese_simplified", "zh-CN": "chinese_simplified", "zh-TW": "chinese_traditional", "en": "english",
    "fr": "french", "gu": "gujarati", "ha": "hausa", "hi": "hindi", "ig": "igbo", "id": "indonesian",
    "ja": "japanese", "rn": "kirundi", "ko": "korean", "ky": "kyrgyz", "mr": "marathi", "ne": "nepali",
    "om": "oromo", "ps": "pashto", "fa": "persian", "pcm": "pidgin", "pt": "portuguese", "pa": "punjabi",
    "ru": "russian", "gd": "scottish_gaelic", "sr": "serbian_cyrillic", "sr-Latn": "serbian_latin",
    "si": "sinhala", "so": "somali", "es": "spanish", "sw": "swahili", "ta": "tamil", "te": "telugu",
    "th": "thai", "ti": "tigrinya", "tr": "turkish", "uk": "ukrainian", "ur": "urdu", "uz": "uzbek",
    "vi": "vietnamese", "cy": "welsh", "yo": "yoruba",
}


@dataclass(frozen=True)
class Language:
    code: str
    templates: dict = field(default_factory=dict)  # task -> template string, or {template, target_prefix}
    articles: str | None = None  # regex of what EM/F1 normalisation removes (MLQA: after punctuation)
    tokenize: str = "whitespace"
    xlsum: str | None = None
    bleu_tokenize: str | None = None
    rouge_language: str | None = None
    source: str = "built in"

    @property
    def target_prefix(self) -> str:
        """Written between the answer keyword and the target: none where words are not space-separated."""
        return "" if self.tokenize in ("mixed", "char") else " "

    @property
    def bleu(self) -> str:
        return self.bleu_tokenize or BLEU_BY_TOKENIZE[self.tokenize]

    @property
    def rouge_name(self) -> str:
        return self.rouge_language or self.xlsum or XLSUM_FILES.get(self.code, self.code)

    @property
    def xlsum_names(self) -> list[str]:
        """The names its XL-Sum files may carry: its own, XL-Sum's for its code, the code itself."""
        names = [self.xlsum, XLSUM_FILES.get(self.code), self.code]
        return list(dict.fromkeys(n for n in names if n))


def _words(*words: str) -> str:
    return r"\b(" + "|".join(map(re.escape, words)) + r")\b"


# MLQA's official evaluation (mlqa_evaluation_v1.py): its article lists, and whitespace tokens everywhere but zh.
BUILTIN = {lang.code: lang for lang in (
    Language("en", {
        "qa": "Answer the question based on the context.\nContext:{context}\nQuestion:{question}\nAnswer:",
        "summarization": "Summarize the following English news article.\nArticle:{article}\nSummary:"},
        articles=_words("a", "an", "the"), bleu_tokenize="13a"),
    Language("ar", {
        "qa": "أجب على السؤال بناءً على النص التالي.\nالنص:{context}\nالسؤال:{question}\nالإجابة:",
        "summarization": "لخّص الخبر العربي التالي.\nالمقال:{article}\nالملخّص:"},
        articles=r"\sال^|ال", bleu_tokenize="intl"),  # the official pattern: every "ال", even inside a word
    Language("zh", {
        "qa": "请根据下列内容回答问题。\n内容:{context}\n问题:{question}\n答案:",
        "summarization": "请用中文概括下面的新闻报道。\n文章:{article}\n摘要:"},
        tokenize="mixed", bleu_tokenize="zh", rouge_language="chinese"),
    Language("es", {
        "qa": "Responde a la pregunta según el contexto.\nContexto:{context}\nPregunta:{question}\nRespuesta:",
        "summarization": "Resume la siguiente noticia en español.\nArtículo:{article}\nResumen:"},
        articles=_words("un", "una", "unos", "unas", "el", "la", "los", "las"), bleu_tokenize="13a"),
    Language("de", {
        "qa": "Beantworte die Frage anhand des Kontexts.\nKontext:{context}\nFrage:{question}\nAntwort:",
        "summarization": "Fasse den folgenden deutschen Nachrichtenartikel zusammen.\nArtikel:{article}\n"
                         "Zusammenfassung:"},
        articles=_words("ein", "eine", "einen", "einem", "eines", "einer", "der", "die", "das", "den", "dem", "des"),
        bleu_tokenize="13a", rouge_language="german"),
    Language("hi", {
        "qa": "संदर्भ के आधार पर प्रश्न का उत्तर दीजिए।\nसंदर्भ:{context}\nप्रश्न:{question}\nउत्तर:",
        "summarization": "निम्नलिखित हिंदी समाचार लेख का सारांश लिखिए।\nलेख:{article}\nसारांश:"},
        bleu_tokenize="intl"),  # MLQA: "Hindi does not have formal articles"
    Language("vi", {
        "qa": "Trả lời câu hỏi dựa vào ngữ cảnh.\nNgữ cảnh:{context}\nCâu hỏi:{question}\nTrả lời:",
        "summarization": "Tóm tắt bài báo tiếng Việt sau đây.\nBài báo:{article}\nTóm tắt:"},
        articles=_words("của", "là", "cái", "chiếc", "những"), bleu_tokenize="13a"),
)}
KEYS = ("articles", "tokenize", "xlsum", "bleu_tokenize", "rouge_language", *FIELDS)


def new_language(code: str, source: str) -> Language:
    return Language(code, tokenize=NO_SPACES.get(code, "whitespace"), source=source)


def _entry(code: str, raw, known: Language | None, source: str) -> Language:
    """One language-first YAML entry, over the built-in one of the same code when there is one."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: '{code}' must map fields ({', '.join(KEYS)}) to values")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UserError(f"{source}: {code}: unknown field(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    lang = replace(known, source=source) if known else new_language(code, source)
    if "articles" in raw:
        words = raw["articles"] or []
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise UserError(f"{source}: {code}.articles must be a list of words, e.g. [a, an, the]")
        lang = replace(lang, articles=_words(*words) if words else None)
    if "tokenize" in raw and raw["tokenize"] not in TOKENIZE:
        raise UserError(f"{source}: {code}.tokenize must be one of {', '.join(TOKENIZE)}, not {raw['tokenize']!r}")
    if "bleu_tokenize" in raw and raw["bleu_tokenize"] not in BLEU_TOKENIZERS:
        raise UserError(f"{source}: {code}.bleu_tokenize must be one of {', '.join(BLEU_TOKENIZERS)}")
    for key in ("tokenize", "xlsum", "bleu_tokenize", "rouge_language"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise UserError(f"{source}: {code}.{key} must be a non-empty string")
            lang = replace(lang, **{key: raw[key]})
    templates = {task: raw[task] for task in FIELDS if task in raw}
    return replace(lang, templates={**lang.templates, **templates})


def load(prompts_file: str | None = None) -> dict[str, Language]:
    """The built-in languages, with the entries of `prompts_file` added or changing them."""
    langs = dict(BUILTIN)
    if not prompts_file:
        return langs
    source = str(prompts_file)
    for key, value in read_yaml(prompts_file).items():
        key = str(key)
        if key in FIELDS:  # the older layout: task -> lang -> template
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{key}' must map language codes to templates")
            for code, template in value.items():
                code = str(code)
                base = langs.get(code) or new_language(code, source)
                langs[code] = replace(base, templates={**base.templates, key: template}, source=source)
        else:
            langs[key] = _entry(key, value, langs.get(key), source)
    return langs


def template_yaml(code: str) -> str:
    """What to write for a language that is not known yet (said in the error)."""
    return (f"{code}: {{qa: \"...{{context}}...{{question}}...<answer keyword>:\", tokenize: whitespace, articles: []}}")


def pick(langs: dict[str, Language], code: str, prompts_file: str | None) -> Language:
    """`code`'s entry of `load(prompts_file)`, or the one line that says what entry to write."""
    if code not in langs:
        where = f"add it to {prompts_file}" if prompts_file else "describe it in a YAML file passed with <prompts>"
        raise OptionError({"lang": code}, f"unknown language (built in: {', '.join(sorted(BUILTIN))}); {where}: "
                                          f"{template_yaml(code)} (README: Another language)")
    return langs[code]


def get_language(code: str, prompts_file: str | None = None) -> Language:
    return pick(load(prompts_file), code, prompts_file)


def as_language(lang: str | Language) -> Language:
    """A Language, or the built-in one of a code (library calls that name a language by its code)."""
    return lang if isinstance(lang, Language) else get_language(lang)
