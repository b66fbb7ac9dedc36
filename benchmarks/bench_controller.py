"""Does the controller learn a prune ratio that beats picking one at random? Measured against the 8-point grid.

For each case: train the source and target adapters, then the grid p in {0.1, ..., 0.8} (final runs, every
grid seed) for its val-loss curve, and the controller run (`search`) for every controller seed. Each ratio
rule reads p* off the same controller runs; its normalised regret is

    (val_loss(p*) - min grid) / (max grid - min grid),   val_loss(p*) interpolated on the grid's mean curve,

0 = the grid's best. A uniformly random p scores (mean grid - min grid) / (max grid - min grid).

Cases (default: all three; the packaged SmolLM2-135M on 2 CPU cores, about an hour per case):
  mlqa-ar, mlqa-zh   real MLQA v1 dev from ../shared/data (en source adapter, ar/zh target)
  demo               the bundled demo corpus (en -> ar QA)
or `--data DIR --adapters SRC TGT` for any prepared target folder and trained adapters.

Every stage writes done.json: an interrupted benchmark continues where it stopped (rerun the same command);
a stage killed half-way resumes from its checkpoint. Stages run grid seed 1 first, then the controller seeds,
then the other grid seeds, so partial results print early (said in the output).

    python benchmarks/bench_controller.py [--case demo mlqa-ar mlqa-zh] [--out runs/bench-controller]
        [--variant NAME:key=value,key=value ...] [--report-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cases import ADAPTER_STEPS, GRID, MLQA, check_adapters, data_and_adapters, final_run, keep_state
from grasp_lora.config import ControllerOptions, ExperimentConfig, SearchConfig, build
from grasp_lora.controller import RATIO_RULES, ControllerState, ratios_by_rule
from grasp_lora.demo import corpus_file
from grasp_lora.files import read_jsonl, write_json
from grasp_lora.pipeline import Experiment, search_batching

# What each case trains. Adapters: cases.ADAPTER_STEPS steps. Final/grid runs: lr 1e-3, batch 2 x accumulation 3,
# a step cap covering a few epochs of the 50 target examples. The controller run sees the same examples with the
# authors' batch 1 x accumulation 1 (search_batching).
COMMON = dict(target_sizes="50,50,16,100", source_sizes="96,16,0,16", lr=1e-3, batch_size=2, grad_accum=3,
              eval_batch_size=16, patience=0, epochs=100, seed=42, checkpoint_every=10)
CASES = {
    "demo": dict(source_input=str(corpus_file("qa", "en")), target_input=str(corpus_file("qa", "ar")),
                 target_lang="ar", max_steps=30, max_length=512),
    "mlqa-ar": dict(source_input=str(MLQA / "dev-context-en-question-en.json"),
                    target_input=str(MLQA / "dev-context-ar-question-ar.json"), target_lang="ar",
                    max_steps=25, max_length=256),
    "mlqa-zh": dict(source_input=str(MLQA / "dev-context-en-question-en.json"),
                    target_input=str(MLQA / "dev-context-zh-question-zh.json"), target_lang="zh",
                    max_steps=25, max_length=256),
}


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value -> controller options of one more set of controller runs."""
    name, _, rest = text.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    # check names, types and choices now (the case fills data, lang, adapters and out later)
    build(SearchConfig, overrides={"data": "d", "lang": "ar", "adapters": ["a", "b"], "out": "o", **opts},
          source=f"--variant {name}")
    return name, opts


def run_case(name: str, cfg: ExperimentConfig, out: Path, grid_seeds: list[int], controller_seeds: list[int],
             variants: dict[str, dict], data: str | None, adapters: list[str] | None, report_only: bool,
             verify: bool = False) -> dict:
    from grasp_lora.controller_run import search

    exp = Experiment(cfg, out)
    stage = (lambda n, fn: json.loads((out / n / "done.json").read_text()) if (out / n / "done.json").is_file()
             else None) if report_only else exp.stage
    target = data or str(exp.data["target"])
    if adapters is None:
        adapters = data_and_adapters(exp, stage)
        if verify:
            verify_retrained(exp, adapters)
        if not report_only:
            check_adapters(out, adapters)

    def grid_point(p: float, seed: int):
        def fn(d: Path) -> dict:
            summary = final_run(exp, target, adapters, p, seed, d)
            return {"val_loss": summary["best_val_loss"], "train_seconds": summary["seconds"]}
        return fn

    def controller(seed: int, opts: dict):
        def fn(d: Path) -> dict:
            search_cfg = exp.train_cfg(SearchConfig, data=target, adapters=adapters, out=str(d),
                                       merge_form=cfg.merge_form, criterion=cfg.search_criterion,
                                       controller_seed=seed, resume=True, **search_batching(cfg))
            result, _ = search(build(SearchConfig, overrides={**search_cfg.__dict__, **opts}, source="variant"))
            return result
        return fn

    grid: dict[float, dict[int, float]] = {p: {} for p in GRID}
    searches: dict[str, dict[int, dict]] = {v: {} for v in variants}

    def run_grid(seeds):
        for s in seeds:
            for p in GRID[::7] + GRID[4:5] + GRID[1:4] + GRID[5:7]:  # the ends and the middle first: the shape early
                info = stage(f"grid/p{p}/seed{s}", grid_point(p, s))
                if info:
                    grid[p][s] = info["val_loss"]

    run_grid(grid_seeds[:1])
    for v, opts in variants.items():
        for s in controller_seeds:
            info = stage(f"search/{v}/seed{s}", controller(s, opts))
            if info:
                info["history"] = read_jsonl(out / "search" / v / f"seed{s}" / "history.jsonl")
                searches[v][s] = info
    run_grid(grid_seeds[1:])
    return summarise(name, grid, searches, out)


def verify_retrained(exp: Experiment, adapters: list[str]) -> None:
    """Rerun the first finished grid point with this machine's retrained adapters; when its val loss matches the
    kept one within 1e-3, record these adapters (adapters.json) so the case continues on them."""
    kept = json.loads((exp.out / "grid/p0.1/seed42/done.json").read_text())["val_loss"]
    summary = final_run(exp, str(exp.data["target"]), adapters, 0.1, 42, exp.out / "verify" / "p0.1")
    diff = summary["best_val_loss"] - kept
    print(f"  grid p=0.1 seed 42 with this machine's adapters: val loss {summary['best_val_loss']:.6f}, kept "
          f"{kept:.6f} ({diff:+.2e})", flush=True)
    if abs(diff) > 1e-3:
        raise SystemExit(f"{exp.out}: the retrained adapters do not reproduce the kept grid point; start afresh")
    (exp.out / "adapters.sha256.json").unlink()


def interpolate(curve: dict[float, float], p: float) -> float:
    xs = sorted(curve)
    return float(np.interp(p, xs, [curve[x] for x in xs]))


def summarise(name: str, grid: dict, searches: dict, out: Path) -> dict:
    complete = {p: v for p, v in grid.items() if v}
    if len(complete) < len(GRID):
        return {"case": name, "status": f"grid incomplete ({len(complete)}/{len(GRID)} points)"}
    curve = {p: float(np.mean(list(v.values()))) for p, v in complete.items()}
    lo, hi = min(curve.values()), max(curve.values())
    span = hi - lo
    regret = lambda p: (interpolate(curve, p) - lo) / span
    best_p = min(curve, key=curve.get)
    seed_spread = float(np.mean([np.std(list(v.values())) for v in complete.values()])) if \
        min(len(v) for v in complete.values()) > 1 else None
    result = {"case": name, "grid": {str(p): complete[p] for p in GRID}, "curve": {str(p): curve[p] for p in GRID},
              "grid_best": best_p, "best_inside": GRID[0] < best_p < GRID[-1],
              "random_regret": (float(np.mean(list(curve.values()))) - lo) / span, "seed_spread": seed_spread,
              "variants": {}}
    for v, runs in searches.items():
        if not runs:
            continue
        rules = {}
        settings = ControllerOptions()  # the rules read p_min/p_max only; the runs use the defaults
        states = {s: ControllerState.from_history(r["history"]) for s, r in runs.items()}
        # re-read from history: a rule added later scores old runs too
        read = {s: ratios_by_rule(st, settings) for s, st in states.items()}
        for rule in RATIO_RULES:
            ps = {s: by_rule[rule] for s, by_rule in read.items()}
            rules[rule] = {"p_star": ps, "regret": float(np.mean([regret(p) for p in ps.values()]))}
        mus = {s: [h["mu"] for h in r["history"]] + [r["final_mu"]] for s, r in runs.items()}
        result["variants"][v] = {
            "rules": rules, "rounds": {s: r["rounds"] for s, r in runs.items()},
            "mu_path": {s: [round(m, 4) for m in ms] for s, ms in mus.items()},
            "sigma_end": {s: r["final_sigma"] for s, r in runs.items()},
            "committed_path": {s: [h["p"] for h in r["history"]] + [r["final_p"]] for s, r in runs.items()},
            "search_seconds": {s: r["seconds"] for s, r in runs.items()},
        }
    write_json(out / "summary.json", result)
    plot(result, out / "controller_vs_grid.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [float(p) for p in result["curve"]]
    ax.plot(xs, list(result["curve"].values()), "k-o", label="grid, mean over seeds", zorder=3)
    for p, per_seed in result["grid"].items():
        ax.scatter([float(p)] * len(per_seed), list(per_seed.values()), color="0.6", s=12, zorder=2)
    markers = {"best_trial": "v", "committed": "s", "policy_mean": "D", "pooled": "*"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curve = {float(p): v for p, v in result["curve"].items()}
    k = 0
    for v, info in result["variants"].items():
        for rule, r in info["rules"].items():
            ps = list(r["p_star"].values())
            ax.scatter(ps, [interpolate(curve, p) for p in ps], marker=markers.get(rule, "o"), s=60,
                       color=colors[k % len(colors)], label=f"{v}/{rule} (regret {r['regret']:.2f})", zorder=4,
                       alpha=0.8)
            k += 1
    ax.set_xlabel("prune ratio p")
    ax.set_ylabel("val loss")
    ax.set_title(f"{result['case']}: learned p* on the grid's val-loss curve (random regret "
                 f"{result['random_regret']:.2f})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(name: str, cfg: ExperimentConfig, grid_seeds, controller_seeds) -> str:
    sb = search_batching(cfg)
    return (f"case {name}: {cfg.model}, {cfg.source_lang} -> {cfg.target_lang} qa, target splits {cfg.target_sizes} "
            f"(train/val/micro_dev/test), examples cut to {cfg.max_length} tokens; adapters trained {ADAPTER_STEPS} steps\n"
            f"  grid and final runs: {cfg.max_steps} steps of batch {cfg.batch_size} x accumulation {cfg.grad_accum}, "
            f"lr {cfg.lr}, {cfg.final_criterion} re-pruned {cfg.reprune}; grid seeds {grid_seeds}\n"
            f"  controller runs: {sb['max_steps']} steps of batch {sb['batch_size']} x accumulation "
            f"{sb['grad_accum']} (the same examples), K={cfg.round_every}, G={cfg.group_size}, {cfg.search_criterion}; "
            f"controller seeds {controller_seeds}")


def report(r: dict) -> str:
    if "curve" not in r:
        return f"  {r['status']}: rerun the same command to continue"
    lines = ["  grid val loss (mean over seeds): " + "  ".join(f"{p}:{v:.3f}" for p, v in r["curve"].items())]
    where = "inside the range" if r["best_inside"] else "AT AN END of the range: a controller biased there looks perfect"
    spread = f", mean seed-to-seed std {r['seed_spread']:.3f}" if r["seed_spread"] is not None else " (one seed so far)"
    lines.append(f"  grid best p = {r['grid_best']} ({where}); span {min(r['curve'].values()):.3f}.."
                 f"{max(r['curve'].values()):.3f}{spread}")
    lines.append(f"  {'rule':<24}{'p* per controller seed':<34}mean normalised regret")
    for v, info in r["variants"].items():
        for rule, x in info["rules"].items():
            ps = " ".join(f"{p:.3f}" for p in x["p_star"].values())
            lines.append(f"  {v + '/' + rule:<24}{ps:<34}{x['regret']:.3f}")
    lines.append(f"  {'random p (uniform)':<58}{r['random_regret']:.3f}")
    for v, info in r["variants"].items():
        for s, path in info["mu_path"].items():
            steps = np.abs(np.diff(path)) if len(path) > 1 else np.zeros(1)
            lines.append(f"  {v} seed {s}: {info['rounds'][s]} rounds, mu {path[0]:.3f} -> {path[-1]:.3f} (largest "
                         f"move {steps.max():.3f}), sigma -> {info['sigma_end'][s]:.3f}, committed p "
                         f"{info['committed_path'][s][0]:.2f} -> {info['committed_path'][s][-1]:.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", default=["mlqa-ar", "mlqa-zh", "demo"], choices=sorted(CASES) + ["custom"])
    ap.add_argument("--out", default="runs/bench-controller")
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--data", help="a prepared target data folder (with --adapters: the `custom` case)")
    ap.add_argument("--adapters", nargs=2, metavar=("SRC", "TGT"), help="trained source and target PEFT adapters")
    ap.add_argument("--lang", default="ar", help="with --data: the target language")
    ap.add_argument("--grid-seeds", type=int, nargs="+", default=[42, 1337])
    ap.add_argument("--controller-seeds", type=int, nargs="+", default=[42, 1337, 9001])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,...: another set of controller runs with these controller options "
                         "(the defaults always run, as `default`)")
    ap.add_argument("--set", action="append", default=[], help="key=value: an experiment option for every case")
    ap.add_argument("--verify-retrained", action="store_true",
                    help="the kept stages' adapters differ in bits from this machine's: rerun grid p=0.1 seed 42 and "
                         "continue on these adapters if its val loss matches the kept one within 1e-3")
    ap.add_argument("--report-only", action="store_true", help="print what finished; run nothing")
    ap.add_argument("--keep-state", metavar="DIR", help="copy the finished stages' records (done.json, history, "
                    "ratio.json, the adapters' fingerprints) of --out to DIR and stop: a later session copies them back "
                    "into --out and continues where this one stopped (runs/ is not kept between sessions)")
    args = ap.parse_args()
    if args.keep_state:
        keep_state(Path(args.out), Path(args.keep_state), ["*/grid/*/*", "*/search/*/*"],
                   "python benchmarks/bench_controller.py --case ...")
        return
    variants = dict([("default", {})] + [parse_variant(v) for v in args.variant])
    if bool(args.data) != bool(args.adapters):
        ap.error("--data and --adapters go together: a prepared target folder and the two adapters to merge")
    cases = ["custom"] if args.data else args.case
    for name in cases:
        settings = {**COMMON, **CASES.get(name, {"target_lang": args.lang}), "model": args.model,
                    **dict(kv.split("=", 1) for kv in args.set)}
        cfg = build(ExperimentConfig, overrides=settings, source=f"case {name}")
        print(describe(name, cfg, args.grid_seeds, args.controller_seeds), flush=True)
        r = run_case(name, cfg, Path(args.out) / name, args.grid_seeds, args.controller_seeds, variants,
                     args.data, args.adapters, args.report_only, args.verify_retrained)
        print(report(r), flush=True)
        if "curve" in r:
            print(f"  plot: {Path(args.out) / name / 'controller_vs_grid.png'}", flush=True)


if __name__ == "__main__":
    main()
