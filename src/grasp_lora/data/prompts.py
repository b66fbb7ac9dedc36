"""The prompt table (SPEC §1.2). A new language or task is an entry in a YAML file, not code.

A YAML file given with --prompts maps task -> lang -> template, where a template is a string with the
record's fields in braces, or a mapping {template: ..., target_prefix: ...}. The template must end with
the answer keyword of its own language; over-long prompts lose text from the long field only, so the
keyword always stays at the end.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..errors import OptionError, UserError
from ..files import read_yaml
from .records import FIELDS, LONG_FIELD

# Raw text, no chat template; the tokenizer's BOS is prepended at tokenization time.
BUILTIN = {
    "summarization": {
        "en": "Summarize the following English news article.\nArticle:{article}\nSummary:",
        "ar": "لخّص الخبر العربي التالي.\nالمقال:{article}\nالملخّص:",
        "zh": "请用中文概括下面的新闻报道。\n文章:{article}\n摘要:",
    },
    "qa": {
        "en": "Answer the question based on the context.\nContext:{context}\nQuestion:{question}\nAnswer:",
        "ar": "أجب على السؤال بناءً على النص التالي.\nالنص:{context}\nالسؤال:{question}\nالإجابة:",
        "zh": "请根据下列内容回答问题。\n内容:{context}\n问题:{question}\n答案:",
    },
}
# Languages written without spaces between words take the target right after the keyword.
NO_SPACE_LANGS = {"zh", "ja", "th"}


@dataclass(frozen=True)
class Prompt:
    task: str
    lang: str
    template: str
    target_prefix: str

    @property
    def long_field(self) -> str:
        return LONG_FIELD[self.task]

    def render(self, record: dict, long_text: str | None = None) -> str:
        values = {k: record.get(k, "") for k in FIELDS[self.task] if k != "answers"}
        if long_text is not None:
            values[self.long_field] = long_text
        return self.template.format(**values)


def _check_template(task: str, lang: str, template: str, source: str) -> None:
    if task not in FIELDS:
        raise UserError(f"{source}: unknown task '{task}'; known: {', '.join(FIELDS)}")
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    allowed = set(FIELDS[task]) - {"answers"}
    if not names <= allowed:
        raise UserError(f"{source}: {task}/{lang} template uses {sorted(names - allowed)}; allowed fields: {sorted(allowed)}")
    if LONG_FIELD[task] not in names:
        raise UserError(f"{source}: {task}/{lang} template must contain {{{LONG_FIELD[task]}}}")


def table(prompts_file: str | None = None) -> dict[str, dict[str, Prompt]]:
    """The built-in prompts, with the entries of `prompts_file` added or replacing them."""
    entries: dict[str, dict[str, object]] = {t: dict(v) for t, v in BUILTIN.items()}
    if prompts_file:
        for task, langs in read_yaml(prompts_file).items():
            if not isinstance(langs, dict):
                raise UserError(f"{prompts_file}: '{task}' must map language codes to templates")
            entries.setdefault(task, {}).update(langs)
    out: dict[str, dict[str, Prompt]] = {}
    for task, langs in entries.items():
        for lang, entry in langs.items():
            source = prompts_file or "built-in prompts"
            if isinstance(entry, dict):
                template, prefix = entry.get("template"), entry.get("target_prefix")
            else:
                template, prefix = entry, None
            if not isinstance(template, str):
                raise UserError(f"{source}: {task}/{lang} needs a template string")
            _check_template(task, lang, template, source)
            if prefix is None:
                prefix = "" if lang in NO_SPACE_LANGS else " "
            out.setdefault(task, {})[lang] = Prompt(task, lang, template, str(prefix))
    return out


def get_prompt(task: str, lang: str, prompts_file: str | None = None) -> Prompt:
    prompts = table(prompts_file)
    if task not in prompts:
        raise OptionError({"task": task}, f"unknown task; known: {', '.join(prompts)}")
    if lang not in prompts[task]:
        raise OptionError({"lang": lang}, f"no {task} prompt for this language (known: {', '.join(sorted(prompts[task]))}); "
                          "add one with <prompts> FILE")
    return prompts[task][lang]


def known_languages(prompts_file: str | None = None) -> set[str]:
    return {lang for langs in table(prompts_file).values() for lang in langs}
