"""What `report` reads from folders written by the standalone commands, which hold no run.json: each
metrics file of `evaluate` is traced through its predictions' generate config to the adapter, and the adapter to the command
that made it (its config.yaml), which gives its row of the table; `search` and `finetune-merged` folders give the
runtime table its runs.

The rows: no adapter → zero shot; `train-adapter` → LoRA (target); `ties`, `lorahub` → theirs; `finetune-merged` at
0 → Adaptive LoRA Merge, at a ratio a reported `search` learned → GRASP, at any other ratio → the grid (whose row
is its best-val ratio); `search --export-adapter` → GRASP (one run).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .files import RECORDS, read_json, read_yaml

FIX = "repair it, rerun the command that wrote it, or leave its folder out of the report"


def _json(path: Path) -> dict:
    """A record a command wrote ({} when there is none); a damaged one stops the report (files.read_json)."""
    return read_json(path, FIX) if path.is_file() else {}


def _any_json(path: Path) -> dict:
    """A JSON file of any name, maybe not ours (a tokenizer's, a user's): {} when it is no JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _yaml(path: Path) -> dict:
    """The config a command saved ({} when there is none); an empty or damaged one stops the report."""
    if not path.is_file():
        return {}
    config = read_yaml(path)
    if not config:
        raise UserError(f"{path}: empty; {FIX}")
    return config


def _config(folder: Path) -> dict:
    """The config.yaml a command saved beside its outputs ({} when there is none)."""
    return _yaml(folder / "config.yaml")


def _existing(path: str | None, near: Path) -> Path | None:
    """A path as a command recorded it: relative to where it ran (here, most likely) or to the file naming it."""
    if not path:
        return None
    for candidate in (Path(path), near / path):
        if candidate.exists():
            return candidate
    return None


def final_run_method(prune_ratio: float, learned: set[float]) -> str:
    return "alm" if prune_ratio == 0 else "grasp" if prune_ratio in learned else "alm_grid"


def made_by(adapter: Path | None, learned: set[float]) -> tuple[str, dict, Path | None]:
    """(the table row, the config of the command that made the adapter, that command's folder)."""
    if adapter is None:
        return "zero_shot", {}, None
    own = _config(adapter)
    if (adapter / "lorahub.json").is_file():
        return "lorahub", own, adapter
    if "density" in own:
        return "ties", own, adapter
    if "rank" in own:
        return "target_lora", own, adapter
    parent = _config(adapter.parent)
    if adapter.name == "adapter" and (adapter.parent / "ratio.json").is_file():  # search --export-adapter
        ratio = _json(adapter.parent / "ratio.json")
        return "grasp_one_run", {**parent, "prune_ratio": ratio.get("prune_ratio"), "seconds": ratio.get("seconds")}, \
            adapter.parent
    if adapter.name == "adapter" and "prune_ratio" in parent:
        return final_run_method(parent["prune_ratio"], learned), parent, adapter.parent
    return adapter.name, own, adapter


def standalone_runs(root: Path, learned: set[float]) -> list[dict]:
    """Runs under `root` without run.json: evaluated ones (metrics.json) and timed ones (search, finetune-merged)."""
    runs, traced = [], set()
    for path in sorted(root.rglob("*.json")):  # evaluate's output, by its content (users name it as they like)
        metrics = _json(path) if path.name in RECORDS else _any_json(path)
        if path.with_name("run.json").is_file() or not {"task", "lang", "n", "predictions"} <= set(metrics):
            continue
        predictions = Path(metrics.get("predictions", ""))
        generate = _yaml(predictions.with_name(f"{predictions.stem}.config.yaml"))
        method, made, folder = made_by(_existing(generate.get("adapter"), predictions.parent), learned)
        summary = _json(folder / "train_summary.json") if folder else {}
        if method != "grasp_one_run":  # a one-run export's search also times GRASP's two-run mode, below
            traced.add(folder.resolve() if folder else None)
        runs.append({"method": method, "task": metrics["task"], "lang": metrics["lang"], "seed": made.get("seed"),
                     "prune_ratio": made.get("prune_ratio"),
                     "seconds": summary.get("seconds", made.get("seconds") or 0.0),
                     "val_loss": summary.get("best_val_loss"), "metrics": metrics, "folder": str(path.parent)})
    for config in sorted(root.rglob("config.yaml")):
        folder, made = config.parent, _config(config.parent)
        ratio = _json(folder / "ratio.json")
        if (folder / "run.json").is_file() or folder.resolve() in traced or not {"task", "lang"} <= set(made):
            continue
        if ratio:  # a controller run: GRASP's first run
            runs.append({"method": "grasp_search", "task": made["task"], "lang": made["lang"], "seed": made.get("seed"),
                         "prune_ratio": ratio.get("prune_ratio"), "seconds": ratio.get("seconds", 0.0),
                         "metrics": None, "folder": str(folder)})
        elif "prune_ratio" in made and (folder / "train_summary.json").is_file():  # a final run nobody evaluated
            summary = _json(folder / "train_summary.json")
            runs.append({"method": final_run_method(made["prune_ratio"], learned), "task": made["task"],
                         "lang": made["lang"], "seed": made.get("seed"), "prune_ratio": made["prune_ratio"],
                         "seconds": summary.get("seconds", 0.0), "val_loss": summary.get("best_val_loss"),
                         "metrics": None, "folder": str(folder)})
    return runs


def learned_ratios(roots: list[Path]) -> set[float]:
    """The ratios `search` runs under `roots` learned (ratio.json beside a search config)."""
    return {r["prune_ratio"] for root in roots for path in root.rglob("ratio.json")
            if isinstance((r := _json(path)).get("prune_ratio"), float)}
