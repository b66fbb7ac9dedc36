"""How many examples does it take to tell two prune ratios apart? Train a grid run (a final run, as
bench_controller.py's grid does) at each of two ratios on one seed, then score both trained models example by example
on the case's val, micro-dev and test splits: the mean difference of the per-example losses, its spread (sd, ddof 1),
its standard error on that split, and how many examples a z of 2 would take at that spread.

A controller sees other examples than the grid's val set: where a split's standard error is near the difference, the
split orders the two ratios by its own examples, and a fixed micro-dev set keeps that error every round.

    python benchmarks/example_noise.py --case demo --seed 42 --ratios 0.5 0.7 --bench runs/bench-controller \
        --out runs/example-noise
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench_controller import CASES, COMMON
from grasp_lora.config import ExperimentConfig, FinetuneMergedConfig, build
from grasp_lora.final_run import finetune_merged
from grasp_lora.inputs import load_inputs
from grasp_lora.pipeline import Experiment
from grasp_lora.train import example_losses

SPLITS = ("val", "micro_dev", "test")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="demo", choices=sorted(CASES))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ratios", type=float, nargs=2, default=[0.5, 0.7], metavar=("P1", "P2"))
    ap.add_argument("--bench", default="runs/bench-controller", help="bench_controller.py's --out: its data and "
                    "adapters are used (made there first when missing)")
    ap.add_argument("--out", default="runs/example-noise")
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--set", action="append", default=[], help="key=value: an experiment option, as bench_controller's")
    args = ap.parse_args()
    settings = {**COMMON, **CASES[args.case], "model": args.model, **dict(kv.split("=", 1) for kv in args.set)}
    cfg = build(ExperimentConfig, overrides=settings, source=f"case {args.case}")
    exp = Experiment(cfg, Path(args.bench) / args.case)
    losses = {}
    for p in args.ratios:
        run = exp.train_cfg(FinetuneMergedConfig, data=str(exp.data["target"]), adapters=exp.adapters, prune_ratio=p,
                            seed=args.seed, out=str(Path(args.out) / args.case / f"p{p}" / f"seed{args.seed}"),
                            merge_form=cfg.merge_form, criterion=cfg.final_criterion, reprune=cfg.reprune, resume=True)
        summary, model = finetune_merged(run)  # the model as last trained (the grid's val loss is its best on the way)
        inputs = load_inputs(run, SPLITS)
        model.eval()
        with torch.no_grad():
            losses[p] = {s: example_losses(model, inputs.examples[s], inputs.tok.pad_token_id, inputs.device).numpy()
                         for s in SPLITS}
        print(f"p {p}: best val {summary['best_val_loss']:.4f}; as last trained "
              + ", ".join(f"{s} {losses[p][s].mean():.4f}" for s in SPLITS), flush=True)
    a, b = args.ratios
    for s in SPLITS:
        d = losses[b][s] - losses[a][s]
        sd = d.std(ddof=1)
        print(f"{s}: n {len(d)}, mean difference (p {b} - p {a}) {d.mean():+.4f}, sd {sd:.4f}, standard error "
              f"{sd / np.sqrt(len(d)):.4f} (z {d.mean() / (sd / np.sqrt(len(d))):+.2f}); examples for z = 2 at this "
              f"difference: {(2 * sd / max(abs(d.mean()), 1e-9)) ** 2:.0f}")


if __name__ == "__main__":
    main()
