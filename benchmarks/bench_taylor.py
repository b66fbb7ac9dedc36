"""Can a probe be estimated instead of measured? `--probe taylor`'s estimate against the forward probe it replaces.

On one case's merged adapters (a bench_controller.py case folder: its adapters and target data), pruned at `--p` with
magnitude importance: the gradients of `--examples` training examples at batch 1 (what a round of the paper's
controller run trains on) give every entry's mean gradient and empirical Fisher (taylor.GradientMoments); then, for
every grid ratio, the estimated loss change (its first- and second-order terms) beside the measured change of the
loss of those same training examples and of the micro-dev set, and the seconds of one estimate against one forward
probe of the micro-dev set, measured side by side. The starting weights only: what training does to the estimates
is in a controller run's history (`search --probe taylor --calibrate-every 1`, scored by
`replay_controller.py --taylor`).

    python benchmarks/bench_taylor.py [--case-dir runs/bench-controller/mlqa-es] [--p 0.4] [--examples 10]

(the case folder's name is its bench_controller case: mlqa-es, mlqa-ar, ..., demo)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from cases import GRID, data_case
from grasp_lora import prune
from grasp_lora.config import SearchConfig, build
from grasp_lora.merged_run import setup_merged
from grasp_lora.taylor import GradientMoments
from grasp_lora.train import LossProbe, example_nll
from grasp_lora.data.batching import collate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case-dir", default="runs/bench-controller/mlqa-es",
                    help="a bench_controller.py case folder (adapters/source, adapters/target, data/target)")
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--p", type=float, default=0.4, help="the committed ratio the estimates start from")
    ap.add_argument("--examples", type=int, default=10, help="training examples of the gradients (K at batch 1)")
    args = ap.parse_args()
    case = Path(args.case_dir)
    cfg = build(SearchConfig, overrides=dict(model=args.model, adapters=[str(case / "adapters" / s) for s in
                                                                        ("source", "target")],
                                             data=str(case / "data" / "target"), lang=data_case(case.name)["target_lang"],
                                             out="unused", dropout=0.0), source="bench_taylor")
    setup = setup_merged(cfg, ("train", "micro_dev"))
    model, pad = setup.model, setup.tok.pad_token_id
    scores = prune.CRITERIA["magnitude"](model, None).scores()
    prune.commit_masks(model, prune.masks_for_ratio(scores, args.p))
    train = setup.examples["train"][:args.examples]
    moments = GradientMoments(model, per_step=1)
    model.train()
    for ex in train:  # batch 1: one optimizer step's gradient per example, no step taken
        example_nll(model, collate([ex], pad, setup.device)).sum().backward()
        moments.add_step()
        model.zero_grad(set_to_none=True)
    model.eval()
    micro_dev = LossProbe(setup.examples["micro_dev"], pad, setup.device, cfg.eval_batch_size)
    train_loss = LossProbe(train, pad, setup.device, cfg.eval_batch_size)
    base = (train_loss(model), micro_dev(model))
    print(f"bench_taylor: {cfg.model}, {case}, committed p = {args.p}, gradients of {len(train)} training examples "
          f"(batch 1), {len(setup.examples['micro_dev'])} micro-dev examples; losses at p: train {base[0]:.4f}, "
          f"micro-dev {base[1]:.4f}")
    print(f"{'ratio':>6} {'train change':>13} {'micro-dev change':>17} {'first-order':>12} {'second-order':>13}")
    seconds = {"estimate": [], "forward": []}
    for ratio in GRID:
        masks = prune.masks_for_ratio(scores, ratio)
        start = time.perf_counter()
        first, second = moments.estimate(masks)
        seconds["estimate"].append(time.perf_counter() - start)
        with torch.no_grad(), prune.trial(model, masks):
            start = time.perf_counter()
            measured_dev = micro_dev(model) - base[1]
            seconds["forward"].append(time.perf_counter() - start)
            measured_train = train_loss(model) - base[0]
        print(f"{ratio:>6.1f} {measured_train:>13.4f} {measured_dev:>17.4f} {first:>12.4f} {second:>13.5f}")
    est, fwd = np.mean(seconds["estimate"]), np.mean(seconds["forward"])
    print(f"seconds per candidate: estimate {est:.3f} (masks for the ratio included), forward probe {fwd:.3f}: "
          f"the estimate costs {est / fwd:.2g}x a forward probe")


if __name__ == "__main__":
    main()
