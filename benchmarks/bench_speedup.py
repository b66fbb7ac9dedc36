"""GRASP's speed-up against the 8-point grid, and against what a practitioner would use instead, measured in one run.

Every side trains with the same loop, data, hardware, batching and stopping rules (a fixed number of epochs, val
loss after each) from the same two adapters. The controller run takes the grid's micro-batches and accumulation
(batch 1 x accumulation 1, the authors' controller run and `run`'s default, is `--set search_batch_size=1 --set
search_grad_accum=1`: on CPU a micro-batch of 1 costs more per example, a cost of the hardware, not of the method).

  grid       the 8 final runs p in {0.1, ..., 0.8}, one seed; the winner (lowest val loss) is its pick
  GRASP      the controller run (`search`), then one final run at its p*
  one-run    the same controller run, its own adapter exported at p* (`search --export-adapter`): one run
  ASHA       the same 8 points as Ray Tune trials under the ASHA scheduler (successive halving on the val loss of
             each epoch, or of every --asha-eval-every steps: a run of one epoch has no rung otherwise), one trial
             at a time on the same cores

It prints each side's wall time (model loading included; adapters, data and scoring excluded: they are common), the
speed-ups, and each side's quality: the val loss of its exported adapter (read back as PEFT loads it) and EM and
token F1 on the test split. Each side's pick is scored as regret on the grid's mean curve over its seed and
`--curve-seeds` (the grid run again at those seeds after every side has finished, not counted in any side's time;
or read with `--curve-from` from a bench_controller case that ran the same grid, checked on the timed seed):
on the timed seed alone the grid's and ASHA's picks would score 0 by construction, in sample, and every other pick
would carry that seed's noise. It also prints the costs behind the speed-up (each run's part outside its training
loop, seconds per trained example, seconds of probes per controller round) and what they predict at other run
lengths: the probes cost a fixed amount per round, so the speed-ups grow as runs get longer than the rounds.

Default: the bundled demo corpus (en -> ar QA) on the packaged SmolLM2-135M, about an hour on 2 CPU cores
(the output says its estimate); `--case mlqa-ar|mlqa-zh|mlqa-es|mlqa-de` for real MLQA v1 dev (../shared/data,
English source adapter); `--data DIR --adapters SRC TGT` for any prepared target folder and adapters.
Every stage writes done.json, and scores its own adapter before it ends: rerun the same command to continue an
interrupted benchmark; `--keep-state DIR` copies the finished stages' records out of runs/ (not kept between
sessions), for a benchmark longer than a session. The run that tests the goals at a longer scale (all 176 train
records of the demo corpus, 4 epochs: about 2.2 hours without ASHA and before the curve seeds, measured; both goals
are met there; each curve seed adds 7 runs, about 1.4 hours) is

    python benchmarks/bench_speedup.py --out runs/bench-speedup-long --no-asha \
        --set target_sizes=176,16,16,32 --set epochs=4

    python benchmarks/bench_speedup.py [--case demo] [--out runs/bench-speedup] [--set key=value ...] [--no-asha]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from cases import CASE_NAMES, GRID, check_adapters, data_and_adapters, data_case, final_run, interpolate, keep_state
from grasp_lora.config import ControllerOptions, ExperimentConfig, SearchConfig, build
from grasp_lora.controller import trains_pair
from grasp_lora.files import RUN_NAME, read_jsonl
from grasp_lora.pipeline import Experiment, search_batching
from grasp_lora.report import grid_winner
from grasp_lora.train import evaluation_steps

# The demo corpus's Arabic QA: 40 records to train on, 3 epochs of them per run (about 3 minutes on 2 cores).
# The controller's round comes every K steps of its own (pair-online, the default: 2); `--rounds N` sets K for N
# rounds per run instead: a probing controller's round costs the same whatever K is (`sliced`: G = 3 candidates on
# 2 micro-dev examples, about 2 s here), so for it the rounds, not K, set what the probes add. The paper's protocol
# (a batch-1 controller run, K = 10) on the demo's 48 records is `--rounds 14 --set target_sizes=48,16,16,32
# --set search_batch_size=1 --set search_grad_accum=1 --set controller=sliced`.
DEFAULTS = dict(source_sizes="96,16,0,16", target_sizes="40,16,16,32", lr=1e-3, batch_size=2, grad_accum=3,
                eval_batch_size=16, patience=0, epochs=3, max_steps=0, seed=42, checkpoint_every=20, max_length=512,
                max_new_tokens=16, generate_batch_size=16, ray_workers=1)
CURVE_SEEDS = [1337, 9001]
GOALS = {"grasp": 3.5, "one_run": 6.5}
# the options only the controller run reads: the controller's own and the experiment's search_*
CONTROLLER_OPTIONS = {f.name for f in fields(ControllerOptions)} | {
    f.name for f in fields(ExperimentConfig) if f.name.startswith("search_")}
# measured on the demo corpus (2026-12-03, 2 CPU cores, RESULTS.md): a grid run's seconds outside its training loop
# and per trained example, a `sliced` probe round's seconds; only for the duration the output announces
SECONDS_PER_RUN, SECONDS_PER_EXAMPLE, SECONDS_PER_ROUND = 25, 1.03, 2.3


def val_loss(exp: Experiment, data: str, adapter: str) -> float:
    """The val loss of an exported adapter as PEFT loads it onto the base model (each example's mean target NLL)."""
    from peft import PeftModel

    from grasp_lora.config import TrainAdapterConfig
    from grasp_lora.inputs import load_inputs
    from grasp_lora.models import load_model
    from grasp_lora.train import LossProbe

    cfg = exp.train_cfg(TrainAdapterConfig, data=data, out=adapter)
    inputs = load_inputs(cfg, ("val",))
    model = PeftModel.from_pretrained(load_model(cfg.model, str(inputs.device), cfg.dtype), adapter)
    return LossProbe(inputs.examples["val"], inputs.tok.pad_token_id, inputs.device, cfg.eval_batch_size)(model)


def timed(fn: Callable, *args, **kwargs) -> tuple:
    """fn's result and its wall seconds."""
    start = time.time()
    return fn(*args, **kwargs), time.time() - start


def quality(exp: Experiment, data: str, adapter: str, folder: Path) -> dict:
    """An exported adapter's val loss as PEFT loads it, and its EM and F1 on the test split (predictions in folder).
    Each stage scores its own adapter before it ends, so a later session needs the stage's record, not its files."""
    folder.mkdir(parents=True, exist_ok=True)
    exp.evaluate_into(folder, adapter)
    return {"val_loss": val_loss(exp, data, adapter), **json.loads((folder / "metrics.json").read_text())}


def asha(exp: Experiment, data: str, adapters: list[str], folder: Path, n_train: int, reduction_factor: int,
         eval_every: int) -> dict:
    """The 8 grid points as Ray Tune trials under ASHA (successive halving on each val evaluation's loss: each
    epoch's, and every eval_every steps within one)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from grasp_lora.ray_executor import connect

    cfg = exp.cfg
    start = time.time()
    resources = connect(cfg)  # one trial at a time on all the cores, as the other sides run
    ray_start = time.time() - start
    # absolute paths: Ray Tune runs each trial in a folder of its own
    data, adapters, folder = str(Path(data).resolve()), [str(Path(a).resolve()) for a in adapters], folder.resolve()

    def trainable(config: dict) -> None:
        import torch

        torch.set_num_threads(int(resources["cpu"]))
        final_run(exp, data, adapters, config["p"], cfg.seed, folder / f"p{config['p']}", report_to=["ray"],
                  eval_every=eval_every)

    # a trial's time unit is one val evaluation (a Tune report)
    reports = len(evaluation_steps(n_train, replace(cfg, eval_every=eval_every)))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=1,
                              reduction_factor=reduction_factor)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources), param_space={"p": tune.grid_search(GRID)},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="asha", storage_path=str(folder / "ray"), verbose=0))
    results = tuner.fit()
    trials = {}
    for r in results:
        if r.error:
            raise SystemExit(f"ASHA trial p={r.config['p']} failed: {str(r.error).splitlines()[-1]}")
        trials[str(r.config["p"])] = [float(v) for v in r.metrics_dataframe["val_loss"]]
    # what a practitioner keeps: the best of the trials that ran every epoch. ASHA usually stops a trial at its
    # last report, before the run publishes its folder; its best-val adapter was written before that report.
    complete = {p: min(v) for p, v in trials.items() if len(v) == reports}
    best = min(complete, key=complete.get)
    run = folder / f"p{best}"
    adapter = run / "adapter" if (run / "adapter").is_dir() else run / RUN_NAME / "adapter"
    return {"run_seconds": time.time() - start, "ray_start_seconds": ray_start, "epochs_per_trial": trials,
            "prune_ratio": float(best), "adapter": str(adapter), "reduction_factor": reduction_factor,
            "reports": reports, "eval_every": eval_every}


def curve_from(case: Path, adapters: list[str], grid: dict, seed: int, seeds: list[int]) -> dict[float, list[float]]:
    """The curve seeds' grid val losses from a bench_controller case folder, if it ran the same recipe: the same
    adapters (adapters.json: the same bits, or tensor statistics within check_adapters' tolerance) and, at the
    timed seed, the same val loss at every ratio within its grid's mean seed-to-seed standard deviation: the thread
    count changes float rounding, which 50 steps of training grow to differences of up to half that on MLQA es 300
    (2 threads against 1, benchmarks/RESULTS.md), so a rerun agrees only as closely as a part of a seed's noise;
    else it stops."""
    def grid_of(s: int) -> dict[float, float]:
        found = {p: case / "grid" / f"p{p}" / f"seed{s}" / "done.json" for p in GRID}
        missing = [str(f) for f in found.values() if not f.is_file()]
        if missing:
            raise SystemExit(f"--curve-from {case}: no finished grid run {missing[0]} (and {len(missing) - 1} more)")
        return {p: json.loads(f.read_text())["val_loss"] for p, f in found.items()}

    if not (case / "adapters.json").is_file():
        raise SystemExit(f"--curve-from {case}: no adapters.json (a bench_controller case folder has one): give the "
                         "folder of one case, such as runs/bench-controller/mlqa-es")
    try:
        check_adapters(case, adapters)
    except SystemExit as e:
        raise SystemExit(f"--curve-from {case}: not the same adapters as this benchmark's: {e}") from None
    theirs, others = grid_of(seed), {s: grid_of(s) for s in seeds}
    sd = float(np.mean(np.std([[g[p] for p in GRID] for g in [theirs, *others.values()]], axis=0, ddof=1)))
    worst = max(abs(theirs[p] - grid[p]["val_loss"]) for p in GRID)
    if worst > sd:
        raise SystemExit(f"--curve-from {case}: its seed-{seed} grid differs from this one's by up to {worst:.4f} in "
                         f"val loss, more than its seed-to-seed sd ({sd:.4f}): another recipe; run the "
                         "curve seeds here (leave --curve-from out)")
    print(f"curve seeds {', '.join(map(str, seeds))} read from {case}: its seed-{seed} grid agrees with this one's "
          f"within {worst:.4f} (its seed-to-seed sd: {sd:.4f})", flush=True)
    return {p: [others[s][p] for s in seeds] for p in GRID}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="demo", choices=CASE_NAMES,
                    help="the target data: the demo corpus's Arabic QA, or an MLQA v1 dev language from ../shared/data")
    ap.add_argument("--out", default="runs/bench-speedup")
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--data", help="a prepared target data folder (with --adapters)")
    ap.add_argument("--adapters", nargs=2, metavar=("SRC", "TGT"), help="trained source and target PEFT adapters")
    ap.add_argument("--lang", default="ar", help="with --data: the target language")
    ap.add_argument("--rounds", type=int, help="controller rounds per run (sets K; default: the controller's own K)")
    ap.add_argument("--curve-seeds", type=int, nargs="+", default=CURVE_SEEDS,
                    help="the grid's other seeds: the mean curve that scores every side's pick, and the winner's "
                         "seed-to-seed spread (run last, untimed)")
    ap.add_argument("--curve-from", metavar="DIR", help="read the curve seeds' grid from a bench_controller case "
                    "folder (DIR/grid/p*/seed*/done.json) instead of running them: it must rest on the same adapters "
                    "and its grid at the timed seed must agree with this one's within its seed-to-seed "
                    "standard deviation (the same recipe), else it stops")
    ap.add_argument("--asha-reduction-factor", type=int, default=4, help="ASHA's eta (Ray Tune's default: 4)")
    ap.add_argument("--asha-eval-every", type=int, default=0, metavar="STEPS",
                    help="ASHA's trials evaluate val loss every STEPS steps within an epoch too (0: each epoch's end "
                         "only): its rungs; the other sides evaluate at each epoch's end")
    ap.add_argument("--no-asha", action="store_true", help="leave ASHA out (it can cost as much as the grid)")
    ap.add_argument("--set", action="append", default=[], help="key=value: an experiment option")
    ap.add_argument("--keep-state", metavar="DIR", help="copy the finished stages' records (done.json, history, "
                    "ratio.json, the adapters' fingerprints) of --out to DIR and stop: a later session copies them back "
                    "into --out and continues where this one stopped (runs/ is not kept between sessions)")
    args = ap.parse_args()
    if args.keep_state:
        keep_state(Path(args.out), Path(args.keep_state), ["grid/*/*", "grasp/*", "asha"],
                   "python benchmarks/bench_speedup.py --out ... (the same options)")
        return
    if bool(args.data) != bool(args.adapters):
        ap.error("--data and --adapters go together: a prepared target folder and the two adapters to merge")
    settings = {**DEFAULTS, **data_case(args.case), "model": args.model, **({"target_lang": args.lang} if args.data else {}),
                **dict(kv.split("=", 1) for kv in args.set)}
    # the same loop on every side: the controller run takes the grid's batching unless told otherwise
    settings.setdefault("search_batch_size", settings["batch_size"])
    settings.setdefault("search_grad_accum", settings["grad_accum"])
    cfg = build(ExperimentConfig, overrides=settings, source="bench_speedup")
    out = Path(args.out)
    exp = Experiment(cfg, out)
    if args.adapters:
        data, adapters = args.data, list(args.adapters)
    else:
        adapters = data_and_adapters(exp, exp.stage)
        check_adapters(out, adapters)
        data = str(exp.data["target"])
    n_train = len(read_jsonl(Path(data) / "train.jsonl"))
    per_step = cfg.batch_size * cfg.grad_accum
    steps = cfg.epochs * math.ceil(n_train / per_step)
    search_steps = cfg.epochs * math.ceil(n_train / (cfg.search_batch_size * cfg.search_grad_accum))
    k = cfg.round_every if args.rounds is None else max(1, search_steps // args.rounds)
    rounds = search_steps // k
    # runs: the grid at every seed + the final run + the controller run (about one run and its probes, or two
    # members' runs); ASHA at most the grid again
    pair = trains_pair(cfg.controller)
    runs = len(GRID) * (1 + len(args.curve_seeds)) + 2 + pair + (0 if args.no_asha else len(GRID))
    hours = (runs * (SECONDS_PER_RUN + cfg.epochs * n_train * SECONDS_PER_EXAMPLE)
             + (not pair) * rounds * SECONDS_PER_ROUND) / 3600
    print(f"bench_speedup: {cfg.model}, {cfg.source_lang} -> {cfg.target_lang} qa, {n_train} train examples, "
          f"{cfg.epochs} epochs per run ({steps} steps of batch {cfg.batch_size} x accumulation {cfg.grad_accum}; the "
          f"controller run: {search_steps} steps of batch {cfg.search_batch_size} x accumulation "
          f"{cfg.search_grad_accum}, {cfg.controller}, a round every K = {k} steps, {rounds} rounds"
          f"{'' if pair else f', G = {cfg.group_size}'}), lr {cfg.lr}, no early stopping; about {hours:.1f} hours on "
          "2 CPU cores by the demo's unit costs", flush=True)

    def run(p: float, seed: int, scored: bool = True):
        def fn(d: Path) -> dict:
            summary, seconds = timed(final_run, exp, data, adapters, p, seed, d)
            info = {"run_seconds": seconds, "train_seconds": summary["seconds"], "val_loss": summary["best_val_loss"],
                    "adapter": str(d / "adapter")}
            return {**info, "quality": quality(exp, data, info["adapter"], d / "quality")} if scored else info
        return fn

    # what every stage depends on: a rerun with other settings redoes the stages (Experiment.stage). A grid or final
    # run reads no option of the controller run: other controller settings keep the grid.
    deps = json.loads(json.dumps({"settings": settings, "data": data, "adapters": adapters}))
    run_deps = {**deps, "settings": {k: v for k, v in deps["settings"].items() if k not in CONTROLLER_OPTIONS}}
    grid = {p: exp.stage(f"grid/p{p}/seed{cfg.seed}", run(p, cfg.seed), run_deps) for p in GRID}
    winner = grid_winner({p: [g["val_loss"]] for p, g in grid.items()})

    def controller(d: Path) -> dict:
        from grasp_lora.controller_run import search

        search_cfg = exp.train_cfg(SearchConfig, data=data, adapters=adapters, out=str(d), merge_form=cfg.merge_form,
                                   criterion=cfg.search_criterion, export_adapter=True, resume=True,
                                   **search_batching(cfg), round_every=k)
        (result, _), seconds = timed(search, search_cfg)
        adapter = str(d / "adapter")
        return {**result, "run_seconds": seconds, "train_seconds": result["seconds"], "adapter": adapter,
                "quality": quality(exp, data, adapter, d / "quality")}

    def scored_asha(d: Path) -> dict:
        info = asha(exp, data, adapters, d, n_train, args.asha_reduction_factor, args.asha_eval_every)
        return {**info, "quality": quality(exp, data, info["adapter"], d / "quality")}

    # the controller's resolved options: a run stored under another default controller is redone, not reused
    options = {**{f.name: getattr(cfg, f.name) for f in fields(ControllerOptions)}, "round_every": k}
    search = exp.stage("grasp/search", controller, {**deps, "controller_options": options})
    final = exp.stage("grasp/final", run(search["prune_ratio"], cfg.seed), {**run_deps, "p": search["prune_ratio"]})
    # last, untimed (the speed-ups are on disk before them): the grid's other seeds, the winner's first
    others = (curve_from(Path(args.curve_from), adapters, grid, cfg.seed, args.curve_seeds) if args.curve_from else
              {p: [exp.stage(f"grid/p{p}/seed{s}", run(p, s, scored=False), run_deps)["val_loss"]
                   for s in args.curve_seeds] for p in [winner] + [p for p in GRID if p != winner]})
    sides = {"grid": ([grid[p]["run_seconds"] for p in GRID], grid[winner]["quality"], winner),
             "grasp": ([search["run_seconds"], final["run_seconds"]], final["quality"], search["prune_ratio"]),
             "one_run": ([search["run_seconds"]], search["quality"], search["prune_ratio"])}
    if not args.no_asha:
        ashas = exp.stage("asha", scored_asha, {**run_deps, "reduction_factor": args.asha_reduction_factor,
                                                **({"eval_every": args.asha_eval_every} if args.asha_eval_every else {})})
        sides["asha"] = ([ashas["run_seconds"]], ashas["quality"], ashas["prune_ratio"])

    grid_s = sum(sides["grid"][0])
    seeds_val = [grid[winner]["val_loss"]] + others[winner]
    lo, hi = min(seeds_val), max(seeds_val)
    seeds = ", ".join(map(str, [cfg.seed] + args.curve_seeds))
    print("grid val loss: " + "  ".join(f"{p}:{grid[p]['val_loss']:.4f}" for p in GRID))
    curve = {p: float(np.mean([grid[p]["val_loss"]] + others[p])) for p in GRID}
    print(f"grid mean val loss over seeds {seeds}: " + "  ".join(f"{p}:{v:.4f}" for p, v in curve.items()))
    print(f"grid winner p = {winner}: val loss over seeds {seeds}: "
          + ", ".join(f"{v:.4f}" for v in seeds_val) + f" (spread {lo:.4f}..{hi:.4f})")
    regret = lambda p: (interpolate(curve, p) - min(curve.values())) / (max(curve.values()) - min(curve.values()))
    print(f"{'side':<9}{'runs':>5}{'wall min':>10}{'speed-up':>10}{'p':>7}{'regret':>8}{'val loss':>10}{'EM':>7}"
          f"{'F1':>7}  within the winner's seed spread")
    for name, (seconds, q, p) in sides.items():
        runs = {"grid": 8, "grasp": 2, "one_run": 1}.get(name) or sum(
            len(v) for v in ashas["epochs_per_trial"].values()) / ashas.get("reports", cfg.epochs)
        within = "yes" if q["val_loss"] <= hi else f"no (+{q['val_loss'] - hi:.4f})"
        print(f"{name:<9}{runs:>5.2g}{sum(seconds) / 60:>10.2f}{grid_s / sum(seconds):>9.2f}x{p:>7.3f}{regret(p):>8.3f}"
              f"{q['val_loss']:>10.4f}{q['exact_match']:>7.2f}{q['f1']:>7.2f}  {within}")
    print(f"regret: the side's p on the grid's mean val-loss curve (seeds {seeds}), normalised: 0 = the curve's best "
          "p, 1 = its worst")
    for name, goal in GOALS.items():
        got = grid_s / sum(sides[name][0])
        print(f"goal {name}: >= {goal}x -> {got:.2f}x, {'met' if got >= goal else 'NOT met'}")

    # the costs behind those numbers: a run is a part outside its training loop (loading the model, the importance
    # statistics of input_weighted pruning, exporting the adapter), fixed as runs get more epochs, and a part per
    # trained example (its val evaluations included); the controller run adds its probes (a pair: its second
    # member's training, on the first pass only), a fixed cost as runs get more epochs
    examples = cfg.epochs * n_train
    fixed_grid = float(np.mean([grid[p]["run_seconds"] - grid[p]["train_seconds"] for p in GRID]))
    t_grid = float(np.mean([grid[p]["train_seconds"] for p in GRID])) / examples
    fixed_search = search["run_seconds"] - search["train_seconds"]
    t_search = (search["train_seconds"] - search["probe_seconds"]) / examples
    rounds = max(1, search["rounds"])
    probes = search["probe_seconds"]
    print(f"costs (outside the training loop + per trained example): a grid run {fixed_grid:.0f} s + {t_grid:.3f} s; "
          f"the controller run {fixed_search:.0f} s + {t_search:.3f} s, + {probes / rounds:.1f} s of probes per round "
          f"({rounds} rounds: {probes / search['run_seconds']:.0%} of the controller run; probe seconds / training "
          f"seconds {probes / (search['train_seconds'] - probes):.2f})")
    for n in sorted({examples, 1000, 3000, 10000}):
        grid_run, one_run = fixed_grid + n * t_grid, fixed_search + n * t_search + probes
        print(f"  predicted at {n} trained examples per run (more epochs), {rounds} rounds: GRASP "
              f"{8 * grid_run / (one_run + grid_run):.2f}x, one-run {8 * grid_run / one_run:.2f}x")
    # the run length from which each goal holds: 8 grid(n) >= goal * (controller(n) [+ grid(n)])
    for name, final_runs in (("grasp", 1), ("one_run", 0)):
        goal = GOALS[name]
        slope = 8 * t_grid - goal * (t_search + final_runs * t_grid)
        need = goal * (fixed_search + probes + final_runs * fixed_grid) - 8 * fixed_grid
        at = (f"from about {max(0, math.ceil(need / slope))} trained examples per run" if slope > 0
              else "at no run length with this many rounds")
        print(f"  goal {name} >= {goal}x predicted {at}")
    if args.no_asha:
        print("ASHA: not run (--no-asha)")
        return
    per_trial = ashas["epochs_per_trial"]
    every = f"every {ashas['eval_every']} steps and each epoch's end" if ashas.get("eval_every") else "each epoch's end"
    print(f"ASHA (reduction factor {ashas['reduction_factor']}, grace 1 val evaluation, at most "
          f"{ashas.get('reports', cfg.epochs)}: {every}): evaluations run per p "
          + " ".join(f"{p}:{len(v)}" for p, v in per_trial.items()) + f"; Ray start {ashas['ray_start_seconds']:.1f} s")
    for name in ("grasp", "one_run"):
        seconds, q, p = sides[name]
        a, g = ashas["run_seconds"] / 60, sum(seconds) / 60
        print(f"ASHA's pick against {name}'s: regret {regret(ashas['prune_ratio']):.3f} against {regret(p):.3f} "
              f"({'no worse' if regret(p) <= regret(ashas['prune_ratio']) else 'WORSE'} than ASHA's)")
        asha_loss, loss = ashas["quality"]["val_loss"], q["val_loss"]
        # the same pick trains the same weights: rounding, not a difference
        than = "the same" if f"{asha_loss:.4f}" == f"{loss:.4f}" else "better" if asha_loss < loss else "worse"
        print(f"ASHA against {name}: {'faster' if a < g else 'slower'} ({a:.2f} against {g:.2f} min) and "
              f"{than} on val loss ({asha_loss:.4f} against {loss:.4f})")


if __name__ == "__main__":
    main()
