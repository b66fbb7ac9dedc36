"""Cut train / val / micro_dev / test splits the way the paper does (SPEC §1.1).

Shuffle the source indices with the seed (numpy's default_rng permutation, as `datasets.shuffle` does)
and cut consecutive disjoint blocks in the order train, val, micro_dev, test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OptionError, UserError
from ..files import read_json

SPLITS = ("train", "val", "micro_dev", "test")
# (dataset, lang) -> paper sizes; every other language is a low-resource target.
PAPER_SIZES = {
    ("mlqa", "en"): (3030, 315, 0, 315),
    ("xlsum", "en"): (10000, 1000, 0, 1000),
}
TARGET_SIZES = (50, 50, 16, 100)


def default_sizes(dataset: str, lang: str) -> tuple[int, ...]:
    return PAPER_SIZES.get((dataset, lang), TARGET_SIZES)


def parse_sizes(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 4 or any(s < 0 for s in sizes):
        raise OptionError({"sizes": repr(text)}, "expected four non-negative integers TRAIN,VAL,MICRO,TEST, e.g. 50,50,16,100")
    return sizes


def scaled(sizes: tuple[int, ...], available: int) -> tuple[int, ...]:
    """Shrink the sizes in proportion so they fit; a split asked for stays non-empty."""
    factor = available / sum(sizes)
    out = [max(1, int(s * factor)) if s else 0 for s in sizes]
    while sum(out) > available:  # the max(1, …) floor can overshoot by a few
        out[int(np.argmax(out))] -= 1
    return tuple(out)


def cut(records: list[dict], sizes: tuple[int, ...], seed: int) -> dict[str, list[dict]]:
    order = np.random.default_rng(seed).permutation(len(records))
    out, start = {}, 0
    for name, size in zip(SPLITS, sizes):
        out[name] = [records[i] for i in order[start:start + size]]
        start += size
    return out


def check_unique_ids(records: list[dict], source: str) -> None:
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen:
            raise UserError(f"{source}: id {r['id']!r} occurs twice; splits must be disjoint, so ids must be unique")
        seen.add(r["id"])


def load_split(data_dir: str, split: str, task: str) -> list[dict]:
    """Read one prepared split, checking that it is the task's schema."""
    from .readers import read_jsonl

    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing; run `grasp-lora data prepare ... --out {data_dir}` first")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty split; prepare the data with a size > 0 for {split}")
    return read_jsonl(path, task)


def check_language(data_dir: str, lang: str) -> None:
    """The language `data prepare` recorded in splits.json must be the one the command is told (prompts, BLEU and
    ROUGE tokenizers and EM normalisation depend on it). Data prepared by other means has no splits.json."""
    info = Path(data_dir) / "splits.json"
    if not info.is_file():
        return
    said = read_json(info, f"prepare the data again (`grasp-lora data prepare ... --out {data_dir}`)")["lang"]
    if said != lang:
        raise OptionError({"lang": lang}, f"{info} says the data is '{said}'; pass <lang> {said} or prepare data "
                                          f"in '{lang}'")
