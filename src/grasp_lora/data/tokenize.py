"""Prompt + target -> token ids with loss only on the target and EOS (SPEC §1.2)."""

from __future__ import annotations

from ..errors import UserError
from .prompts import Prompt
from .records import target_text


def _prefix(tok) -> list[int]:
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def _ids(tok, text: str) -> list[int]:
    """Token ids without special tokens. verbose=False: we cut long texts ourselves (fit_prompt), so the tokenizer's
    "sequence length is longer than the specified maximum" warning would only be noise."""
    return tok(text, add_special_tokens=False, verbose=False)["input_ids"]


def fit_prompt(tok, prompt: Prompt, record: dict, budget: int) -> list[int]:
    """Prompt ids (BOS first) of at most `budget` tokens, cutting only the long field's tail."""

    def encode(long_text: str | None = None) -> list[int]:
        return _prefix(tok) + _ids(tok, prompt.render(record, long_text))

    ids = encode()
    if len(ids) <= budget:
        return ids
    field_ids = _ids(tok, record[prompt.long_field])
    keep = len(field_ids) - (len(ids) - budget)
    while keep > 0:
        # Decoding a cut can merge differently on re-encoding, so re-measure until it fits.
        ids = encode(tok.decode(field_ids[:keep]))
        if len(ids) <= budget:
            return ids
        keep -= max(1, len(ids) - budget)
    ids = encode("")
    if len(ids) > budget:
        raise UserError(f"record {record.get('id')}: even with an empty {prompt.long_field} the prompt needs "
                        f"{len(ids)} tokens > budget {budget}; raise --max-length")
    return ids


def encode_example(tok, prompt: Prompt, record: dict, max_length: int) -> dict:
    """input_ids and labels (-100 on prompt tokens) for teacher-forced training or loss."""
    target = _ids(tok, prompt.target_prefix + target_text(prompt.task, record))
    target = target + [tok.eos_token_id]
    budget = max_length - len(target)
    if budget <= len(_prefix(tok)):
        raise UserError(f"record {record.get('id')}: its target alone is {len(target)} tokens, "
                        f"over --max-length {max_length}; raise --max-length")
    prompt_ids = fit_prompt(tok, prompt, record, budget)
    return {"input_ids": prompt_ids + target, "labels": [-100] * len(prompt_ids) + target}


def encode_split(tok, prompt: Prompt, records: list[dict], max_length: int) -> list[dict]:
    return [encode_example(tok, prompt, r, max_length) for r in records]
