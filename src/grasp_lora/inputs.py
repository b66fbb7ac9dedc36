"""The load sequence every command that trains, scores or generates shares: prompt -> splits -> tokenizer ->
encoded examples, and the device (each command then loads the model after its own checks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .data.prompts import Prompt, get_prompt
from .data.splits import check_language, load_split
from .data.tokenize import encode_split
from .models import load_tokenizer, pick_device, resolve


@dataclass
class TaskInputs:
    prompt: Prompt
    records: dict[str, list[dict]]  # split -> records
    tok: Any
    examples: dict[str, list[dict]]  # split -> encoded examples (empty when not encoded)
    device: torch.device


def load_inputs(cfg, splits: tuple[str, ...], *, limit: int = 0, encode: bool = True) -> TaskInputs:
    """`cfg`: a config with DataOptions and ModelOptions (and `max_length` when encoding); `limit`: the first N
    records of each split (0 = all)."""
    check_language(cfg.data, cfg.lang)
    prompt = get_prompt(cfg.task, cfg.lang, cfg.prompts)
    records = {s: load_split(cfg.data, s, cfg.task)[:limit or None] for s in splits}
    resolve(cfg.model)
    device = pick_device(cfg.device)
    tok = load_tokenizer(cfg.model)
    examples = {s: encode_split(tok, prompt, r, cfg.max_length) for s, r in records.items()} if encode else {}
    return TaskInputs(prompt, records, tok, examples, device)
