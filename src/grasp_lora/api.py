"""The Python API, for notebooks: each command as a function of keyword arguments (the same names and checks as
its flags and YAML keys), and two functions that put merged, pruned adapters onto a `transformers` model you
already hold. Importable from `grasp_lora` directly:

    import grasp_lora
    found = grasp_lora.search(adapters=["adapters/en", "adapters/ar"], data="data/ar", lang="ar")
    found["prune_ratio"], found["history"]

    model = grasp_lora.merge_adapters(model, ["adapters/en", "adapters/ar"], prune_ratio=found["prune_ratio"])
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .config import (EvaluateConfig, ExperimentConfig, FinetuneMergedConfig, GenerateConfig, SearchConfig,
                     TrainAdapterConfig, build)
from .files import output_lock, read_jsonl


def _call(cls, name: str, options: dict, fn: Callable[[Any], Any], temp_out: bool = False,
          lock: bool = True) -> tuple[Any, Any]:
    """Build `cls` from keyword options and run `fn` (under the output folder's lock, as the CLI does);
    `temp_out`: a missing `out` is a fresh temporary folder."""
    if temp_out and "out" not in options:
        options = {**options, "out": tempfile.mkdtemp(prefix=f"grasp-lora-{name}-")}
    cfg = build(cls, overrides=options, source=f"grasp_lora.{name}")
    with output_lock(cfg.out, f"grasp_lora.{name}") if lock else contextlib.nullcontext():
        return cfg, fn(cfg)


def train_adapter(**options) -> dict:
    """`grasp-lora train-adapter` (options as its flags): the training summary, with `out` (the adapter folder)."""
    from .adapter_training import train_adapter as train

    cfg, summary = _call(TrainAdapterConfig, "train_adapter", options, train, temp_out=True)
    return {**summary, "out": cfg.out}


def search(**options) -> dict:
    """`grasp-lora search`: ratio.json's content (`prune_ratio`, `rule`, `by_rule`, ...) with `history` (one
    record per controller round) and `out`."""
    from .controller_run import search as run_search

    cfg, (result, _) = _call(SearchConfig, "search", options, run_search, temp_out=True)
    return {**result, "history": read_jsonl(Path(cfg.out) / "history.jsonl"), "out": cfg.out}


def finetune_merged(**options) -> dict:
    """`grasp-lora finetune-merged` (`prune_ratio` a number or a ratio.json): the summary, with `adapter` (the
    exported PEFT adapter folder)."""
    from .final_run import finetune_merged as run_final

    cfg, (summary, _) = _call(FinetuneMergedConfig, "finetune_merged", options, run_final, temp_out=True)
    return {**summary, "adapter": str(Path(cfg.out) / "adapter")}


def predict(**options) -> list[dict]:
    """`grasp-lora generate --data ...`: one row per record (prediction, references, ...), also written to `out`."""
    from .generate import generate

    return _call(GenerateConfig, "predict", options, generate, lock=False)[1]


def complete(prompt: str, **options) -> str:
    """`grasp-lora generate --prompt`: the greedy completion of one prompt (adapter=..., model=... as the flags)."""
    from .generate import complete as run_complete

    return _call(GenerateConfig, "complete", {**options, "prompt": prompt}, run_complete, lock=False)[1]


def score(**options) -> dict:
    """`grasp-lora evaluate`: the metrics, also written to `out`."""
    from .evaluate import evaluate

    return _call(EvaluateConfig, "score", options, evaluate, lock=False)[1]


def run(**options) -> dict:
    """`grasp-lora run`: the whole protocol; the results and runtime tables (rows as dicts)."""
    from .pipeline import run_experiment

    return _call(ExperimentConfig, "run", options, run_experiment)[1]


def merge_adapters(model: torch.nn.Module, adapters: list[str], prune_ratio: float = 0.0, *,
                   merge_form: str = "sum", criterion: str = "magnitude", scope: str = "per_tensor",
                   batches: Callable[[], Iterable[dict]] | None = None, dropout: float | None = None,
                   allow_other_base: bool = False) -> torch.nn.Module:
    """Put PEFT adapters (folders, source first), merged and pruned at `prune_ratio` (a drop rate), onto a loaded
    `transformers` causal LM, in place; returns it ready to generate, or to train: the base is frozen and the LoRA
    factors are its only trainable parameters. `batches`: for criteria that read activations (input_weighted,
    sensitivity), a function returning batches of {"input_ids", "attention_mask"}. Save with export_adapter."""
    from . import prune
    from .adapter_io import check_compatible, load_adapter, put_on
    from .errors import OptionError

    if not 0 <= prune_ratio < 1:
        raise OptionError({"prune_ratio": prune_ratio}, "must be in [0, 1)")
    if criterion not in prune.CRITERIA or scope not in prune.SCOPES:
        raise OptionError({"criterion": criterion, "scope": scope},
                          f"choose a criterion of {', '.join(prune.CRITERIA)} and a scope of {', '.join(prune.SCOPES)}")
    loaded = [load_adapter(p) for p in adapters]
    check_compatible(loaded, merge_form, getattr(model, "name_or_path", None) or None, allow_other_base)
    model.requires_grad_(False)
    layers = put_on(model, loaded, merge_form, dropout)
    for layer in layers.values():
        for p in (*layer.lora_A, *layer.lora_B):
            p.requires_grad_(True)
    if prune_ratio > 0:
        scores = prune.CRITERIA[criterion](model, batches or (lambda: iter(()))).scores()
        prune.commit_masks(model, prune.masks_for_ratio(scores, prune_ratio, scope))
    return model


def export_adapter(model: torch.nn.Module, out: str, base_model: str | None = None, dropout: float = 0.0) -> str:
    """Write the merged (and masked) adapters of a model from merge_adapters as ONE standard PEFT adapter folder
    (`base_model`: what it records as its base, default the model's name_or_path)."""
    from .adapter_io import export_peft
    from .merge import merged_layers

    export_peft(merged_layers(model), out, base_model or getattr(model, "name_or_path", ""), dropout)
    return out
