"""Prompts (SPEC §1.2): each language's templates (languages.py, or its entry in the --prompts YAML) rendered.

A template is a string with the record's fields in braces, or a mapping {template: ..., target_prefix: ...}. It
must end with the answer keyword of its own language; over-long prompts lose text from the long field only, so
the keyword always stays at the end. Raw text, no chat template; the tokenizer's BOS is prepended at
tokenization time.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..errors import OptionError, UserError
from ..languages import Language, load, pick
from .records import FIELDS, LONG_FIELD


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


def table(langs: dict[str, Language]) -> dict[str, dict[str, Prompt]]:
    """task -> language -> Prompt: the templates of `langs` (languages.load), each checked."""
    out: dict[str, dict[str, Prompt]] = {}
    for lang in langs.values():
        for task, entry in lang.templates.items():
            template, prefix = (entry.get("template"), entry.get("target_prefix")) if isinstance(entry, dict) \
                else (entry, None)
            if not isinstance(template, str):
                raise UserError(f"{lang.source}: {task}/{lang.code} needs a template string")
            _check_template(task, lang.code, template, lang.source)
            out.setdefault(task, {})[lang.code] = Prompt(task, lang.code, template,
                                                         lang.target_prefix if prefix is None else str(prefix))
    return out


def get_prompt(task: str, lang: str, prompts_file: str | None = None) -> Prompt:
    langs = load(prompts_file)
    pick(langs, lang, prompts_file)  # an unknown language: the YAML entry to write
    prompts = table(langs)
    if task not in prompts:
        raise OptionError({"task": task}, f"unknown task; known: {', '.join(prompts)}")
    if lang not in prompts[task]:
        where = f"in {prompts_file}" if prompts_file else "in a YAML file passed with <prompts>"
        raise OptionError({"lang": lang}, f"no {task} prompt for this language (known: "
                          f"{', '.join(sorted(prompts[task]))}); give its entry a `{task}:` template {where}")
    return prompts[task][lang]
