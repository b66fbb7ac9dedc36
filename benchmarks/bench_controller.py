"""Does the controller learn a prune ratio, or only keep the one it starts from? Measured against the 8-point grid.

For each case: train the source and target adapters, then the grid p in {0.1, ..., 0.8} (final runs, every
grid seed) for its val-loss curve, and the controller run (`search`) for every controller, start p_init and
controller seed. Each ratio rule reads p* off the same controller runs; its normalised regret is

    (val_loss(p*) - min grid) / (max grid - min grid),   val_loss(p*) interpolated on the grid's mean curve,

0 = the grid's best. Beside it, on the same scale, the rules that learn nothing: the start value held constant,
a uniformly random p ((mean grid - min grid) / (max grid - min grid)), and the best constant chosen on the *other*
cases (leave one case out). A case's discriminating power is the span of its mean grid curve over the mean
seed-to-seed standard deviation (ddof 1): below about 3 the grid itself cannot tell its best ratio from noise.

Cases (default: mlqa-ar, mlqa-zh, demo; the packaged SmolLM2-135M on 2 CPU cores, about an hour per case and
grid seed):
  mlqa-ar, mlqa-zh, mlqa-es, mlqa-de   real MLQA v1 dev from ../shared/data (en source adapter, the language as
                                       target)
  demo, demo-zh                        the bundled demo corpus (en -> ar, en -> zh QA)
or `--data DIR --adapters SRC TGT` for any prepared target folder and trained adapters.

Every stage writes done.json: an interrupted benchmark continues where it stopped (rerun the same command);
a stage killed half-way resumes from its checkpoint. Stages run grid seed 1 first, then the controller seeds,
then the other grid seeds, so partial results print early (said in the output).

    python benchmarks/bench_controller.py [--case demo mlqa-ar mlqa-zh] [--out runs/bench-controller]
        [--controllers reinforce fit] [--starts 0.2 0.4 0.6] [--variant NAME:key=value,key=value ...]
        [--trace] [--report-only]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from cases import (ADAPTER_STEPS, CASE_NAMES, DEMO_TARGETS, GRID, check_adapters, data_and_adapters, data_case,
                   final_run, interpolate, keep_state, regret_on)
from grasp_lora.config import ControllerOptions, ExperimentConfig, SearchConfig, build
from grasp_lora.controller import CONTROLLERS, RATIO_RULES, SHARED_DEFAULTS, ControllerState, ratios_by_rule, trains_pair
from grasp_lora.files import read_jsonl, write_json
from grasp_lora.pipeline import Experiment, search_batching
from grasp_lora.prune import CRITERIA

# What each case trains. Adapters: cases.ADAPTER_STEPS steps. Final/grid runs: lr 1e-3, batch 2 x accumulation 3,
# a step cap covering a few epochs of the 50 target examples. The controller run sees the same examples with the
# authors' batch 1 x accumulation 1 (search_batching).
COMMON = dict(target_sizes="50,50,16,100", source_sizes="96,16,0,16", lr=1e-3, batch_size=2, grad_accum=3,
              eval_batch_size=16, patience=0, epochs=100, seed=42, checkpoint_every=10)
TARGET_REGRET = 0.10  # issue 23's regret target per case and start
RESOLVES = 3  # the discriminating power from which a case's grid tells its best ratio from noise (the targets' cases)
CASES = {name: {**data_case(name), **(dict(max_steps=30, max_length=512) if name in DEMO_TARGETS
                                       else dict(max_steps=25, max_length=256))} for name in CASE_NAMES}


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value -> controller options of one more set of controller runs."""
    name, _, rest = text.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    # check names, types and choices now (the case fills data, lang, adapters and out later)
    build(SearchConfig, overrides={"data": "d", "lang": "ar", "adapters": ["a", "b"], "out": "o", **opts},
          source=f"--variant {name}")
    return name, opts


def run_case(name: str, cfg: ExperimentConfig, out: Path, grid_seeds: list[int], controller_seeds: list[int],
             variants: dict[str, dict], starts: list[float], data: str | None, adapters: list[str] | None,
             report_only: bool, verify: bool = False, trace: tuple[list[float], dict] | None = None,
             grid_ratios: list[float] | None = None) -> dict:
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

    def controller(seed: int, opts: dict, folder: str):
        # another controller: the options the case's config resolved from its own controller's preset go back to
        # unset, so they take this controller's values (those the variant names itself still win), and so do the
        # search batching and criterion the experiment gives it
        reset = {k: None for k in {**SHARED_DEFAULTS, **CONTROLLERS[opts["controller"]][1]}} if "controller" in opts \
            else {}
        own = replace(cfg, controller=opts["controller"], search_batch_size=None, search_grad_accum=None,
                      search_criterion=None, **reset) if "controller" in opts else cfg
        search_cfg = exp.train_cfg(SearchConfig, data=target, adapters=adapters, out=str(out / folder),
                                   merge_form=cfg.merge_form, criterion=own.search_criterion,
                                   controller_seed=seed, resume=True, **search_batching(own))
        # pair draws nothing from its RNG: its seeds are data seeds (else its three runs would be one)
        data_seed = {"seed": seed} if trains_pair(own.controller) else {}
        run_cfg = build(SearchConfig, overrides={**search_cfg.__dict__, **reset, **opts, **data_seed},
                        source="variant")
        options = {f.name: getattr(run_cfg, f.name) for f in fields(ControllerOptions)}
        check_stored_options(out / folder, options)

        def fn(d: Path) -> dict:
            result, _ = search(run_cfg)
            return {**result, "options": options}
        return fn

    grid: dict[float, dict[int, float]] = {p: {} for p in GRID}
    searches: dict[str, dict[float, dict[int, dict]]] = {v: {p0: {} for p0 in starts} for v in variants}

    # the ends and the middle first: the curve's shape early
    order = grid_ratios or GRID[::7] + GRID[4:5] + GRID[1:4] + GRID[5:7]

    def run_grid(seeds):
        for s in seeds:
            for p in order:
                info = stage(f"grid/p{p}/seed{s}", grid_point(p, s))
                if info:
                    grid[p][s] = info["val_loss"]

    run_grid(grid_seeds[:1])
    if trace:  # one reinforce run from 0.4 that also probes fixed ratios each round (replay_controller.py)
        ratios, opts = trace
        # the stage's name says how its probes differ from instant ones: trace[-start][-lookaheadN][-batchB][-criterion]
        kind = "".join(["trace", "-start" * (opts.get("probe_from") == "start"),
                        *(f"-{key}{opts[key]}" for key in ("lookahead", "batch") if opts.get(key)),
                        f"-{opts['criterion']}" * bool(opts.get("criterion"))])
        names = {"lookahead": "lookahead_steps", "batch": "lookahead_batch"}
        folder = f"{kind}/seed{controller_seeds[0]}"
        stage(folder, controller(controller_seeds[0], {
            "controller": "reinforce", "trace_ratios": ratios,
            **{names.get(k, k): v for k, v in opts.items() if v is not None}}, folder))
    for s in controller_seeds:  # every start and variant of one seed before the next seed: all columns fill early
        for v, opts in variants.items():
            for p0 in starts:
                folder = f"search/{v}/p{p0}/seed{s}"
                info = stage(folder, controller(s, {**opts, "p_init": p0}, folder))
                if info:
                    info["history"] = read_jsonl(out / folder / "history.jsonl")
                    searches[v][p0][s] = info
    run_grid(grid_seeds[1:])
    return summarise(name, grid, searches, out)


def check_stored_options(folder: Path, options: dict) -> None:
    """A finished controller stage is reused by its name: stop when it ran with other options than the ones asked
    (a default changed since, or a variant reuses a name), rather than report it under the wrong ones."""
    done = folder / "done.json"
    stored = json.loads(done.read_text()).get("options") if done.is_file() else None
    if stored is None:
        return
    # an option a stage does not record did not exist when it ran: it ran as that option's default does
    differ = sorted(k for k in set(stored) & set(options) if k != "trace_ratios" and stored[k] != options[k])
    if differ:
        raise SystemExit(f"{done}: this stage ran with " + ", ".join(f"{k}={stored[k]!r}" for k in differ)
                         + "; asked: " + ", ".join(f"{k}={options[k]!r}" for k in differ)
                         + ". Name the variant after what it runs (--variant NAME:key=value,...) or delete the stage")


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


def discriminating_power(grid: dict[float, dict[int, float]]) -> float | None:
    """Span of the mean grid curve / mean seed-to-seed standard deviation (ddof 1); None with one seed."""
    if min(len(v) for v in grid.values()) < 2:
        return None
    curve = [np.mean(list(v.values())) for v in grid.values()]
    return float((max(curve) - min(curve)) / np.mean([np.std(list(v.values()), ddof=1) for v in grid.values()]))


def one_seed_grid(complete: dict[float, dict[int, float]]) -> dict | None:
    """The 8-point grid itself with one seed, the yardstick of any rule that reads one training run: each seed's pick
    scored on the mean curve of all seeds (in sample: its own seed counts) and on the mean curve of the other seeds
    (out of sample, normalised by that curve's span). None with one seed."""
    seeds = sorted(next(iter(complete.values())))
    if len(seeds) < 2:
        return None

    def norm(p: float, use: list[int]) -> float:
        return regret_on({q: float(np.mean([complete[q][s] for s in use])) for q in complete}, p)

    picks = {s: min(complete, key=lambda p: complete[p][s]) for s in seeds}
    return {"picks": picks, "regret_in_sample": float(np.mean([norm(p, seeds) for p in picks.values()])),
            "regret": float(np.mean([norm(p, [o for o in seeds if o != s]) for s, p in picks.items()]))}


def probe_slopes(histories: list[list[dict]]) -> dict | None:
    """Each round's least-squares slope of probe loss on ratio (nats per unit ratio), over every round of the runs
    given: the direction the controller was told, set beside the trained curve's slope. Rounds whose candidates
    coincide tell no direction and are left out."""
    rounds = [(np.asarray(h["candidates"], float), np.asarray(h["losses"], float)) for hist in histories for h in hist]
    slopes = [float(np.polyfit(c, loss, 1)[0]) for c, loss in rounds if np.ptp(c) > 1e-6 and np.isfinite(loss).all()]
    if not slopes:
        return None
    return {"rounds": len(slopes), "rising": float(np.mean(np.array(slopes) > 0)), "median": float(np.median(slopes))}


def common_seeds(grid: dict[float, dict[int, float]]) -> dict[float, dict[int, float]]:
    """The ratios run so far, each with only the seeds run at all of them: a seed still part-way would tilt the mean
    curve where it has run. Empty when no seed is common to them."""
    ran = {p: v for p, v in grid.items() if v}
    seeds = sorted(set.intersection(*(set(v) for v in ran.values()))) if ran else []
    return {p: {s: v[s] for s in seeds} for p, v in ran.items()} if seeds else {}


def partial_grid(part: dict[float, dict[int, float]]) -> str:
    """What a part-run grid (`--grid-ratios`, as common_seeds gives it) says so far: the mean val loss, the
    discriminating power on those ratios alone, and each seed's best among them (a pilot of a new case: does one
    seed's best carry over to the next?). Empty with fewer than 2 ratios or 2 seeds."""
    if len(part) < 2 or len(next(iter(part.values()))) < 2:
        return ""
    means = "  ".join(f"{p}:{np.mean(list(v.values())):.4f}" for p, v in part.items())
    picks = " ".join(map(str, one_seed_grid(part)["picks"].values()))
    return (f"; so far over ratios {' '.join(map(str, part))} and seeds {' '.join(map(str, next(iter(part.values()))))}"
            f": mean val loss {means}, discriminating power on these ratios {discriminating_power(part):.2f}, "
            f"each seed's best {picks}")


def summarise(name: str, grid: dict, searches: dict, out: Path) -> dict:
    complete = common_seeds(grid)
    if len(complete) < len(GRID):
        done = sum(bool(v) for v in grid.values())
        return {"case": name, "status": f"grid incomplete ({done}/{len(GRID)} points in some seed, none in all)"
                                      + partial_grid(complete)}
    curve = {p: float(np.mean(list(v.values()))) for p, v in complete.items()}
    lo, hi = min(curve.values()), max(curve.values())
    regret = lambda p: regret_on(curve, p)
    best_p = min(curve, key=curve.get)
    result = {"case": name, "grid": {str(p): complete[p] for p in GRID}, "curve": {str(p): curve[p] for p in GRID},
              "grid_best": best_p, "best_inside": GRID[0] < best_p < GRID[-1],
              "random_regret": (float(np.mean(list(curve.values()))) - lo) / (hi - lo),
              "power": discriminating_power(complete), "grid_seeds": min(len(v) for v in complete.values()),
              "one_seed_grid": one_seed_grid(complete),
              "grid_slope": float(np.polyfit(GRID, [curve[p] for p in GRID], 1)[0]),
              "probes": {v: probe_slopes([r["history"] for runs in by_start.values() for r in runs.values()])
                         for v, by_start in searches.items()},
              "variants": {}}
    for v, by_start in searches.items():
        result["variants"][v] = {}
        for p0, runs in by_start.items():
            if not runs:
                continue
            settings = ControllerOptions(**{k: x for k, x in next(iter(runs.values())).get("options", {}).items()
                                            if k != "trace_ratios"})  # the rules read p_min/p_max only
            read = {s: ratios_by_rule(ControllerState.from_history(r["history"]), settings) for s, r in runs.items()}
            rules = {rule: {"p_star": {s: by_rule[rule] for s, by_rule in read.items()},
                            "regret": float(np.mean([regret(by_rule[rule]) for by_rule in read.values()]))}
                     for rule in RATIO_RULES}  # re-read from history: a rule added later scores old runs too
            result["variants"][v][str(p0)] = {
                "start_regret": regret(p0), "rule": runs[next(iter(runs))].get("rule"), "rules": rules,
                "rounds": {s: r["rounds"] for s, r in runs.items()},
                "mu_path": {s: [round(h["mu"], 4) for h in r["history"]] + [round(r["final_mu"], 4)]
                            for s, r in runs.items()},
                "sigma_path": {s: [round(h["sigma"], 4) for h in r["history"]] + [round(r["final_sigma"], 4)]
                               for s, r in runs.items()},
                "committed_path": {s: [h["p"] for h in r["history"]] + [r["final_p"]] for s, r in runs.items()},
                "search_seconds": {s: r["seconds"] for s, r in runs.items()},
                "probe_seconds": {s: r.get("probe_seconds") for s, r in runs.items()},
            }
    write_json(out / "summary.json", result)
    plot(result, out / "controller_vs_grid.png")
    return result


def leave_one_out(results: list[dict]) -> None:
    """Each case's regret of the best constant ratio chosen on the *other* cases' mean grid curves (the constant
    with the lowest mean normalised regret there): what a practitioner with the other cases' grids would pick."""
    done = [r for r in results if "curve" in r]
    for r in done:
        others = [o for o in done if o is not r]
        if not others:
            continue
        norm = lambda o, p: regret_on({float(q): v for q, v in o["curve"].items()}, p)
        pick = min(GRID, key=lambda p: np.mean([norm(o, p) for o in others]))
        r["loo_constant"] = {"p": pick, "regret": norm(r, pick), "from": [o["case"] for o in others]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [float(p) for p in result["curve"]]
    ax.plot(xs, list(result["curve"].values()), "k-o", label="grid, mean over seeds", zorder=3)
    for p, per_seed in result["grid"].items():
        ax.scatter([float(p)] * len(per_seed), list(per_seed.values()), color="0.6", s=12, zorder=2)
    markers = {"0.2": "<", "0.4": "D", "0.6": ">"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curve = {float(p): v for p, v in result["curve"].items()}
    for k, (v, by_start) in enumerate(result["variants"].items()):
        for p0, info in by_start.items():
            r = info["rules"][info["rule"]] if info.get("rule") in info["rules"] else info["rules"]["policy_mean"]
            ps = list(r["p_star"].values())
            ax.scatter(ps, [interpolate(curve, p) for p in ps], marker=markers.get(p0, "o"), s=60,
                       color=colors[k % len(colors)], alpha=0.8, zorder=4,
                       label=f"{v} from {p0} (regret {r['regret']:.2f}; start's {info['start_regret']:.2f})")
    ax.set_xlabel("prune ratio p")
    ax.set_ylabel("val loss")
    power = f", power {result['power']:.1f}" if result["power"] else ""
    ax.set_title(f"{result['case']}: learned p* on the grid's val-loss curve (random regret "
                 f"{result['random_regret']:.2f}{power})", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(name: str, cfg: ExperimentConfig, grid_seeds, controller_seeds, starts) -> str:
    sb = search_batching(cfg)
    return (f"case {name}: {cfg.model}, {cfg.source_lang} -> {cfg.target_lang} qa, target splits {cfg.target_sizes} "
            f"(train/val/micro_dev/test), examples cut to {cfg.max_length} tokens; adapters trained {ADAPTER_STEPS} steps\n"
            f"  grid and final runs: {cfg.max_steps} steps of batch {cfg.batch_size} x accumulation {cfg.grad_accum}, "
            f"lr {cfg.lr}, {cfg.final_criterion} re-pruned {cfg.reprune}; grid seeds {grid_seeds}\n"
            f"  controller runs: {sb['max_steps']} steps of batch {sb['batch_size']} x accumulation "
            f"{sb['grad_accum']} (the same examples), K={cfg.round_every}, G={cfg.group_size}, {cfg.search_criterion}; "
            f"starts p_init {starts}; controller seeds {controller_seeds}")


def report(r: dict) -> str:
    if "curve" not in r:
        return f"  {r['status']}: rerun the same command to continue"
    lines = ["  grid val loss (mean over seeds): " + "  ".join(f"{p}:{v:.3f}" for p, v in r["curve"].items())]
    where = "inside the range" if r["best_inside"] else "AT AN END of the range: a controller biased there looks perfect"
    power = (f"discriminating power {r['power']:.2f} ({r['grid_seeds']} grid seeds)" if r["power"] is not None
             else "one grid seed so far")
    lines.append(f"  grid best p = {r['grid_best']} ({where}); span {min(r['curve'].values()):.3f}.."
                 f"{max(r['curve'].values()):.3f}, {power}")
    lines.append(f"  {'controller/rule':<26}{'start':>6}  {'p* per controller seed':<26}{'regret':>7}{'start held':>11}"
                 f"{'probe/train s':>14}")
    for v, by_start in r["variants"].items():
        for p0, info in by_start.items():
            for rule, x in info["rules"].items():
                mark = "*" if rule == info.get("rule") else " "
                ps = " ".join(f"{p:.3f}" for p in x["p_star"].values())
                probe = [info["probe_seconds"][s] / max(info["search_seconds"][s] - info["probe_seconds"][s], 1e-9)
                         for s in info["search_seconds"] if info["probe_seconds"][s] is not None]
                cost = f"{np.mean(probe):.2f}" if probe else "-"
                lines.append(f" {mark}{v + '/' + rule:<26}{p0:>6}  {ps:<26}{x['regret']:>7.3f}"
                             f"{info['start_regret']:>11.3f}{cost:>14}")
    lines.append(f"  {'random p (uniform)':<60}{r['random_regret']:>7.3f}")
    if r.get("one_seed_grid"):
        g = r["one_seed_grid"]
        picks = " ".join(str(p) for p in g["picks"].values())
        lines.append(f"  {'grid of one seed (picks ' + picks + '), on the others':<60}{g['regret']:>7.3f}"
                     f"   (in sample {g['regret_in_sample']:.3f})")
    if "loo_constant" in r:
        lines.append(f"  {'best constant on the other cases (p = ' + str(r['loo_constant']['p']) + ')':<60}"
                     f"{r['loo_constant']['regret']:>7.3f}")
    lines.append("  (* the controller's own rule; probe/train s: probe seconds over the rest of the controller run)")
    for v, pr in r.get("probes", {}).items():
        if pr:  # does what the probes say point where training at a ratio goes?
            lines.append(f"  {v} probes: loss rose with the ratio in {pr['rising']:.0%} of {pr['rounds']} rounds, median "
                         f"slope {pr['median']:+.3f} nats per unit ratio; the grid's trained curve {r['grid_slope']:+.3f}")
    for v, by_start in r["variants"].items():
        for p0, info in by_start.items():
            for s, path in info["mu_path"].items():
                steps = np.abs(np.diff(path)) if len(path) > 1 else np.zeros(1)
                sig = info["sigma_path"][s]
                lines.append(f"  {v} from {p0} seed {s}: {info['rounds'][s]} rounds, mu {path[0]:.3f} -> {path[-1]:.3f} "
                             f"(largest move {steps.max():.3f}), sigma {sig[0]:.3f} -> {sig[-1]:.3f} (min {min(sig):.3f}),"
                             f" committed p {info['committed_path'][s][0]:.2f} -> {info['committed_path'][s][-1]:.2f}")
    return "\n".join(lines)


def overall(results: list[dict]) -> str:
    """Mean regret over cases and starts, per controller, beside the constants that learn nothing."""
    done = [r for r in results if "curve" in r]
    if not done:
        return ""
    lines = ["over all cases (mean normalised regret; own rule of each controller, every start):"]
    variants = {v for r in done for v in r["variants"]}
    for v in sorted(variants):
        cells = [(r["case"], p0, own_rule(info)["regret"], info["start_regret"])
                 for r in done for p0, info in r["variants"].get(v, {}).items() if info.get("rule") in info["rules"]]
        if cells:
            lines.append(f"  {v:<14} {np.mean([c[2] for c in cells]):.3f}   start value held constant "
                         f"{np.mean([c[3] for c in cells]):.3f}   ({len(cells)} case x start cells)")
    lines.append(f"  random p       {np.mean([r['random_regret'] for r in done]):.3f}")
    loo = [r["loo_constant"]["regret"] for r in done if "loo_constant" in r]
    if loo:
        lines.append(f"  leave-one-out constant {np.mean(loo):.3f}")
    lines += [line for v in sorted(variants) if (line := verdict(v, done, np.mean(loo) if loo else None))]
    grids = [r["one_seed_grid"] for r in done if r.get("one_seed_grid")]
    if grids:
        lines.append(f"  the grid itself, one seed: {np.mean([g['regret'] for g in grids]):.3f} on the other seeds, "
                     f"{np.mean([g['regret_in_sample'] for g in grids]):.3f} in sample ({len(grids)} cases)")
        # a controller's pick is scored out of sample, like this one: where eight full runs miss a regret of 0.10,
        # one run reaching it would be luck, and the case cannot show that a controller learns
        resolving = {r["case"]: r["one_seed_grid"]["regret"] for r in done
                     if r.get("one_seed_grid") and (r["power"] or 0) >= RESOLVES}
        if resolving:
            lines.append(f"    on the cases of power >= {RESOLVES}: "
                         + ", ".join(f"{c} {g:.3f}" for c, g in resolving.items())
                         + f"; above {TARGET_REGRET:.2f} on {sum(g > TARGET_REGRET for g in resolving.values())} of "
                         f"{len(resolving)}")
    return "\n".join(lines)


def own_rule(info: dict) -> dict:
    """A controller start's figures under the controller's own ratio rule."""
    return info["rules"][info["rule"]]


def on_targets(cells: list[tuple[dict, dict]], label: str) -> str:
    """Issue 23's per-case targets over these cells: regret <= TARGET_REGRET from each start, and per-start mean p*
    within 0.15 of each other on each case (it converges rather than keeps its start)."""
    if not cells:
        return f"no case of {label}"
    near = sum(own_rule(info)["regret"] <= TARGET_REGRET for _, info in cells)
    spreads = {}
    for r, info in cells:
        spreads.setdefault(r["case"], []).append(np.mean(list(own_rule(info)["p_star"].values())))
    converge = sum(max(m) - min(m) <= 0.15 for m in spreads.values())
    return (f"regret <= {TARGET_REGRET:.2f} in {near} of {len(cells)} cells of {label}; per-start mean p* within "
            f"0.15 on {converge} of {len(spreads)} such cases")


def verdict(v: str, done: list[dict], loo: float | None) -> str:
    """What a controller that learns must show (the targets of issue 23): the per-case targets (on_targets) on every
    case whose grid resolves its ratios (power >= RESOLVES), and -- the rule registered for the es300 and de300
    cases -- on those of them where the grid of one seed also scores <= TARGET_REGRET out of sample (where eight full
    runs of one seed miss it, one controller run reaching it would be luck); over all cases at most half the start
    held's regret, and below the best constant of the other cases."""
    cells = [(r, info) for r in done for info in r["variants"].get(v, {}).values() if info.get("rule") in info["rules"]]
    if not cells:
        return ""
    resolving = [(r, info) for r, info in cells if (r["power"] or 0) >= RESOLVES]
    settled = [(r, info) for r, info in resolving
               if r.get("one_seed_grid") and r["one_seed_grid"]["regret"] <= TARGET_REGRET]
    mean, held = np.mean([own_rule(i)["regret"] for _, i in cells]), np.mean([i["start_regret"] for _, i in cells])
    yes = lambda ok: "yes" if ok else "no"
    return (f"  {v} against the targets: {on_targets(resolving, f'power >= {RESOLVES}')}; over all {mean:.3f}, at most "
            f"half the start held ({held / 2:.3f}): {yes(mean <= held / 2)}"
            + (f"; below the leave-one-out constant ({loo:.3f}): {yes(mean < loo)}" if loo is not None else "")
            + f"\n    of those, where one seed's grid scores <= {TARGET_REGRET:.2f} out of sample: "
            + on_targets(settled, "such power and one-seed grid"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", default=["mlqa-ar", "mlqa-zh", "demo"], choices=sorted(CASES) + ["custom"])
    ap.add_argument("--out", default="runs/bench-controller")
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--data", help="a prepared target data folder (with --adapters: the `custom` case)")
    ap.add_argument("--adapters", nargs=2, metavar=("SRC", "TGT"), help="trained source and target PEFT adapters")
    ap.add_argument("--lang", default="ar", help="with --data: the target language")
    ap.add_argument("--grid-seeds", type=int, nargs="+", default=[42, 1337, 9001])
    ap.add_argument("--grid-ratios", type=float, nargs="+", choices=GRID, metavar="P",
                    help="run only these grid ratios, in this order (default: all eight, the ends and the middle "
                         "first): two processes given disjoint ratios share one grid seed without running a stage twice")
    ap.add_argument("--controller-seeds", type=int, nargs="+", default=[42, 1337, 9001])
    ap.add_argument("--controllers", nargs="*", default=["reinforce", "fit"], choices=sorted(CONTROLLERS),
                    help="controllers to run (each a set of controller runs under its name)")
    ap.add_argument("--starts", type=float, nargs="+", default=[0.2, 0.4, 0.6], help="p_init of the controller runs")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,...: another set of controller runs with these controller options")
    ap.add_argument("--trace", action="store_true", help="first one reinforce run that also probes every grid ratio "
                    "each round (stage trace/): the recorded losses replay any controller in seconds "
                    "(replay_controller.py)")
    ap.add_argument("--trace-ratios", type=float, nargs="+", default=GRID, help="with --trace: the ratios probed")
    ap.add_argument("--trace-lookahead", type=int, default=0, metavar="N", help="with --trace: that run's probes "
                    "train N steps under each mask first (stage trace-lookaheadN/; its trace holds both)")
    ap.add_argument("--trace-from", choices=["current", "start"], default="current", help="with --trace-lookahead: "
                    "the probes train from the run's weights or from its starting weights (stage trace-start-...; "
                    "such probes do not depend on what the run committed, so a replay on them is exact)")
    ap.add_argument("--trace-batch", type=int, metavar="B", help="with --trace-lookahead: training examples per "
                    "look-ahead step (6: the grid runs' batching)")
    ap.add_argument("--trace-criterion", choices=sorted(CRITERIA),
                    help="the trace run's pruning criterion (default: the controller's, magnitude)")
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
        keep_state(Path(args.out), Path(args.keep_state), ["*/grid/*/*", "*/search/*/*/*", "*/trace*/*"],
                   "python benchmarks/bench_controller.py --case ...")
        return
    variants = dict([(c, {"controller": c}) for c in args.controllers] + [parse_variant(v) for v in args.variant])
    if bool(args.data) != bool(args.adapters):
        ap.error("--data and --adapters go together: a prepared target folder and the two adapters to merge")
    cases = ["custom"] if args.data else args.case
    results = []
    for name in cases:
        settings = {**COMMON, **CASES.get(name, {"target_lang": args.lang}), "model": args.model,
                    **dict(kv.split("=", 1) for kv in args.set)}
        cfg = build(ExperimentConfig, overrides=settings, source=f"case {name}")
        print(describe(name, cfg, args.grid_seeds, args.controller_seeds, args.starts), flush=True)
        results.append(run_case(name, cfg, Path(args.out) / name, args.grid_seeds, args.controller_seeds, variants,
                                args.starts, args.data, args.adapters, args.report_only, args.verify_retrained,
                                (args.trace_ratios, {"lookahead": args.trace_lookahead, "probe_from": args.trace_from,
                                                     "batch": args.trace_batch, "criterion": args.trace_criterion})
                                if args.trace else None, args.grid_ratios))
    leave_one_out(results)
    for r in results:
        print(f"case {r['case']}:\n{report(r)}", flush=True)
        if "curve" in r:
            write_json(Path(args.out) / r["case"] / "summary.json", r)
            print(f"  plot: {Path(args.out) / r['case'] / 'controller_vs_grid.png'}", flush=True)
    print(overall(results), flush=True)


if __name__ == "__main__":
    main()
