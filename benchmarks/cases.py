"""What the benchmarks share: the real data they read and the first two stages of every case (the target and
source splits, then the two adapters that get merged)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from grasp_lora.config import DataPrepareConfig, ExperimentConfig, FinetuneMergedConfig, TrainAdapterConfig
from grasp_lora.data.prepare import prepare_data
from grasp_lora.files import write_json
from grasp_lora.pipeline import Experiment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MLQA = SHARED / "mlqa-v1-dev"
GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
# The benchmarks' real-data cases: English source adapter, an MLQA v1 dev language as the target.
MLQA_TARGETS = ("ar", "zh", "es", "de")


def data_case(name: str) -> dict:
    """The data options of a case: `demo` / `demo-zh` (the bundled en -> ar / en -> zh QA corpus) or
    `mlqa-<lang>`."""
    from grasp_lora.demo import corpus_file

    if name in DEMO_TARGETS:
        lang = DEMO_TARGETS[name]
        return dict(source_input=str(corpus_file("qa", "en")), target_input=str(corpus_file("qa", lang)),
                    target_lang=lang)
    lang = name.removeprefix("mlqa-")
    return dict(source_input=str(MLQA / "dev-context-en-question-en.json"),
                target_input=str(MLQA / f"dev-context-{lang}-question-{lang}.json"), target_lang=lang)


# The bundled corpus's cases: `demo` is the CLI's demo (en -> ar); `demo-zh` the same corpus's Chinese side.
DEMO_TARGETS = {"demo": "ar", "demo-zh": "zh"}
CASE_NAMES = list(DEMO_TARGETS) + [f"mlqa-{lang}" for lang in MLQA_TARGETS]

# Adapters trained this many steps: with adapters trained 30 steps the merged adapter is already good and every
# extra pruned entry costs val loss (the demo grid's best at p = 0.1, the end of the range); with 10-step
# adapters the best lies inside it, as in the paper.
ADAPTER_STEPS = 10


def data_and_adapters(exp: Experiment, stage: Callable) -> list[str]:
    """Prepare both sides' splits and train both adapters through `stage` (Experiment.stage, or a reader of
    finished stages); returns the adapters' folders."""
    from grasp_lora.adapter_training import train_adapter

    cfg: ExperimentConfig = exp.cfg
    sides = (("source", cfg.source_lang), ("target", cfg.target_lang))
    for side, lang in sides:
        stage(f"data/{side}", lambda d, side=side, lang=lang: prepare_data(DataPrepareConfig(
            dataset="mlqa", lang=lang, input=getattr(cfg, f"{side}_input"), out=str(d), seed=cfg.seed,
            sizes=getattr(cfg, f"{side}_sizes"), scale_down=True)))
    for side, lang in sides:
        stage(f"adapters/{side}", lambda d, side=side, lang=lang: train_adapter(exp.train_cfg(
            TrainAdapterConfig, lang=lang, data=str(exp.data[side]), out=str(d), resume=True,
            max_steps=ADAPTER_STEPS)))
    return exp.adapters


def final_run(exp: Experiment, data: str, adapters: list[str], p: float, seed: int, out: Path, **options) -> dict:
    """One final (grid) run at prune ratio p, resumable; its training summary."""
    from grasp_lora.final_run import finetune_merged

    cfg = exp.cfg
    summary, _ = finetune_merged(exp.train_cfg(
        FinetuneMergedConfig, data=data, adapters=adapters, prune_ratio=p, seed=seed, out=str(out),
        merge_form=cfg.merge_form, criterion=cfg.final_criterion, reprune=cfg.reprune, resume=True, **options))
    return summary


def interpolate(curve: dict[float, float], p: float) -> float:
    """A grid curve's value at p, linear between its ratios."""
    xs = sorted(curve)
    return float(np.interp(p, xs, [curve[x] for x in xs]))


def regret_on(curve: dict[float, float], p: float) -> float:
    """p's normalised regret on a val-loss curve, (curve(p) - min) / (max - min), linear between its ratios."""
    lo, hi = min(curve.values()), max(curve.values())
    return float((interpolate(curve, p) - lo) / (hi - lo))


STAGE_RECORDS = ("done.json", "history.jsonl", "ratio.json", "val_log.jsonl")  # val logs: how early a run ranks


def keep_state(out: Path, keep: Path, stages: list[str], command: str) -> None:
    """Copy the small records of every finished stage matching the globs `stages` (done.json, history, ratio.json, val log)
    and the adapters' fingerprints (adapters.json) from `out` to `keep`: runs/ is not kept between sessions, so a
    later session copies them back and continues. Data and adapters are remade (cheap, and checked against the
    fingerprints, check_adapters); stages are redone only where their records are missing."""
    import shutil

    kept = list(out.glob("**/adapters.json"))
    for done in (d for pattern in stages for d in out.glob(f"{pattern}/done.json")):
        kept += [done.parent / name for name in STAGE_RECORDS if (done.parent / name).is_file()]
    for f in kept:
        target = keep / f.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    print(f"kept {len(kept)} files in {keep}; continue with `cp -r {keep}/. {out}/ && {command}`")


def adapter_fingerprint(adapter: str) -> dict:
    """The sha256 of an adapter's weights, and per tensor its L2 norm, sum and sum of absolute values: the same
    recipe retrained on another CPU gives other bits (float rounding) but the same statistics to a few digits."""
    import torch
    from safetensors.torch import load_file

    path = Path(adapter) / "adapter_model.safetensors"
    tensors = load_file(path)
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "stats": {k: [float(t.double().norm()), float(t.double().sum()), float(t.double().abs().sum())]
                      for k, t in sorted(tensors.items()) if t.dtype in (torch.float32, torch.float16, torch.bfloat16)}}


def check_adapters(out: Path, adapters: list[str], rtol: float = 1e-3) -> None:
    """The adapters every stage of a case rests on, by content (adapters.json, written on the first run). A later
    session retrains them (runs/ is not kept): the same bytes, or -- on another CPU -- the same statistics within
    `rtol` (said in the output), or the case stops rather than mix two sets of adapters. Kept state:
    benchmarks/state/ (copy it to --out to continue a case)."""
    now = {Path(a).name: adapter_fingerprint(a) for a in adapters}
    record, legacy = out / "adapters.json", out / "adapters.sha256.json"
    if not record.is_file() and legacy.is_file():  # stages recorded before adapters.json: by sha256 alone
        if json.loads(legacy.read_text()) != {n: f["sha256"] for n, f in now.items()}:
            raise SystemExit(f"{out}: the retrained adapters differ in bits from the ones the finished stages used, "
                             f"known only by sha256 ({legacy}); rerun with --verify-retrained to compare a grid point")
    if record.is_file():
        kept = json.loads(record.read_text())
        if any(kept[n]["sha256"] != now[n]["sha256"] for n in now):
            worst = max(abs(a - b) / max(abs(b), 1e-12) for n in now for k, vals in kept[n]["stats"].items()
                        for a, b in zip(now[n]["stats"][k], vals))
            if worst > rtol:
                raise SystemExit(f"{out}: the retrained adapters differ from the ones the finished stages used "
                                 f"({record}: largest relative difference of a tensor statistic {worst:.2e}); "
                                 "start the case afresh in another --out")
            print(f"  {out.name}: retrained adapters differ in bits from the recorded ones (float rounding on this CPU);"
                  f" tensor statistics agree within {worst:.1e} (tolerance {rtol:g})", flush=True)
        return
    write_json(record, now)
