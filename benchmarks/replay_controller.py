"""Replay any controller, in seconds, on the probe traces of a real controller run, and score it on the grid.

A trace stage of bench_controller.py (`--trace`) probes every grid ratio at every round of one real run and records
those micro-dev losses in its history.jsonl (`trace`). Here each controller runs offline (controller.offline) on
that surface: a probe at ratio r in round k gets the trace's loss at r (linear between grid ratios). What a replay
cannot show: how the controller's own commits would have changed the weights (the trace's run committed its own
ratios), so it ranks variants for a real run, it does not replace one.

For each case it also prints what the traces say by themselves: per round, the rank correlation between the
micro-dev loss at the grid ratios and the grid's val loss (Spearman; 1 = the round's probes order the ratios as the
grid does), and the ratio each round's probes favour.

`--taylor`: instead, for every controller stage run with `--probe taylor`, how well its estimates predict the loss
changes its forward probes measured in the same rounds (all of them with `calibrate_every=1`): the correlation of
each term with the measurement, candidates that prune more and ones that revive apart, and, round by round, a
calibration fitted on the earlier rounds scored on this one (its share of the measured sum of squares explained, and
whether it picks the round's best candidate).

`--periods`: whether the committed periods themselves rank the ratios as the grid does. Each round's base loss is
the micro-dev loss after K steps at the committed p; per controller stage, base_k = c0 + c1 k + c2 k^2 + beta p_k by
least squares, beta's standard error beside the grid's slope over the ratios that run visited; then, per start, the
level the seeds share (they train on the same examples in the same order) taken out by pairing them round by round.

`--fork VARIANT --set KEY=VALUE ...`: for every stage of a recorded variant, the first round at which a controller
with those options changed would probe or decide otherwise. Until then a run with the new options is the recorded run
exactly (the same seeds and the same decisions give the same weights on CPU), so a stage it never leaves, or leaves
only in its last round, gives the new variant's p* without a run; the others say from which step a run is needed.

    python benchmarks/replay_controller.py [--out runs/bench-controller] [--case mlqa-ar ...]
        [--controllers reinforce nes fit] [--starts 0.2 0.4 0.6] [--seeds 42 1337 9001]
        [--taylor | --periods | --fork VARIANT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from cases import interpolate, regret_on
from grasp_lora.config import ControllerOptions, build
from grasp_lora.controller import CONTROLLERS, Controller, calibrate, offline
from grasp_lora.files import read_jsonl


def grid_curve(case: Path) -> dict[float, float]:
    """The mean grid curve over the seeds run at every ratio (as bench_controller's summary)."""
    points: dict[float, dict[str, float]] = {}
    for done in case.glob("grid/p*/seed*/done.json"):
        points.setdefault(float(done.parts[-3][1:]), {})[done.parts[-2]] = json.loads(done.read_text())["val_loss"]
    seeds = set.intersection(*(set(v) for v in points.values())) if points else set()
    return {p: float(np.mean([v[s] for s in seeds])) for p, v in sorted(points.items())} if seeds else {}


def spearman(x: list[float], y: list[float]) -> float:
    rank = lambda v: np.argsort(np.argsort(v))
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-controller")
    ap.add_argument("--case", nargs="+", default=["mlqa-ar", "mlqa-zh", "demo"])
    ap.add_argument("--controllers", nargs="+", default=sorted(CONTROLLERS), choices=sorted(CONTROLLERS))
    ap.add_argument("--starts", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1337, 9001], help="controller seeds")
    ap.add_argument("--rounds", type=int, help="replay only the first N rounds of each trace (a run of round_every "
                    "K gets its steps / K)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a controller option for every replayed controller (e.g. group_size=4)")
    ap.add_argument("--taylor", action="store_true", help="score the estimates of --probe taylor stages against their "
                    "measured probes")
    ap.add_argument("--periods", action="store_true", help="the committed periods' base losses against the grid's "
                    "slope (the stages of --controllers)")
    ap.add_argument("--fork", metavar="VARIANT", help="where the stages of this recorded variant would first go "
                    "otherwise under the options of --set, and the p* of those that never do")
    args = ap.parse_args()
    for name in args.case:
        case = Path(args.out) / name
        if args.fork:
            print(f"case {name}: {args.fork} with {' '.join(args.set) or 'its own options'}")
            fork_report(case, grid_curve(case), args.fork, dict(kv.split("=", 1) for kv in args.set))
            continue
        if args.periods:
            print(f"case {name}:")
            periods_report(case, grid_curve(case), args.controllers)
            continue
        if args.taylor:
            for path in sorted(case.glob("search/*/p*/seed*/history.jsonl")) + sorted(
                    case.glob("search/*/p*/seed*/.*/history.jsonl")):
                history = [r for r in read_jsonl(path) if r.get("measured")]
                if history:
                    print(f"case {name}: {path.relative_to(case)}, {len(history)} measured rounds")
                    taylor_report(history)
            continue
        curve = grid_curve(case)
        # finished trace stages, else ones still running (their staging folder)
        traces = sorted(case.glob("trace*/seed*/history.jsonl")) or sorted(case.glob("trace*/seed*/.*/history.jsonl"))
        if not traces or len(curve) < 2:
            print(f"case {name}: no trace or grid in {case} (bench_controller.py --trace)")
            continue
        print(f"case {name}: grid best p = {min(curve, key=curve.get)} over {len(curve)} ratios")
        for path in traces:
            history = read_jsonl(path)
            for key in ("trace", "trace_lookahead", "trace_online"):
                rounds = [r[key] for r in history if key in r][:args.rounds]
                if rounds:
                    # probes from the starting weights do not depend on the run's commits: the replay is exact
                    stage = path.relative_to(case).parts[0]  # trace[-start][-lookaheadN]
                    start = key != "trace" and stage.startswith("trace-start")
                    print(f"  {key} of {path.relative_to(case)}: {len(rounds)} rounds"
                          + (" (from the starting weights: an exact replay)" if start else ""))
                    options = dict(kv.split("=", 1) for kv in args.set)
                    if start:
                        steps = re.search(r"lookahead(\d+)", stage)
                        options.update(probe_from="start", lookahead_steps=int(steps[1]) if steps else 0,
                                       probe_loss="online" if key == "trace_online" else "micro_dev")
                    analyse(rounds, [r["p"] for r in history if key in r][:args.rounds], curve, args, options)


def analyse(rounds: list[list], committed: list[float], curve: dict[float, float], args, options: dict) -> None:
    regret = lambda p: regret_on(curve, p)
    rhos = [spearman([l for r, l in t if r in curve], [curve[r] for r, _ in t if r in curve]) for t in rounds]
    print(f"    per round, Spearman(probe loss, grid val loss): {' '.join(f'{x:+.2f}' for x in rhos)} "
          f"(mean {np.mean(rhos):+.2f})")
    print(f"    per round, the ratio with the lowest probe loss: "
          f"{' '.join(f'{min(t, key=lambda x: x[1])[0]:.1f}' for t in rounds)}; committed p: "
          f"{' '.join(f'{p:.2f}' for p in committed)}")

    def loss_at(k: int, p: float, ratio: float) -> float:
        return interpolate({r: l for r, l in rounds[k]}, ratio)

    print(f"    {'controller':<12}{'start':>6}  {'p* per seed':<24}{'regret':>8}{'start held':>12}")
    for c in args.controllers:
        for p0 in args.starts:
            ps = [offline(build(ControllerOptions, overrides={**options, "controller": c, "p_init": p0,
                                                              "controller_seed": s},
                                source="replay"), loss_at, len(rounds)).result()["prune_ratio"] for s in args.seeds]
            print(f"    {c:<12}{p0:>6}  {' '.join(f'{p:.3f}' for p in ps):<24}"
                  f"{np.mean([regret(p) for p in ps]):>8.3f}{regret(p0):>12.3f}")


class Diverged(Exception):
    """The replayed controller probes ratios the recorded run did not."""


def fork(history: list[dict], settings: ControllerOptions) -> tuple[int | None, float | None, Controller]:
    """Replay a recorded run's rounds through a controller with `settings`: the step of the first round whose probes
    or decision differ from the record (None when none does), the mean it then moves to (None when the probes
    differ: nothing was decided), and the controller after the rounds replayed."""
    row: dict = {}

    def probe(ratios: list[float]) -> list[float]:
        if not np.allclose(ratios, row["candidates"]):
            raise Diverged
        return [float("nan") if x is None else x for x in row["losses"]]

    ctrl = Controller(settings, probe, lambda ratio: None, lambda: row["base_loss"], trace_fn=lambda ratios: {})
    for row in history:
        try:
            record = ctrl.round(row["step"])
        except Diverged:
            return row["step"], None, ctrl
        if record is None or any(abs(record[k] - row[k]) > 1e-9 for k in ("p_next", "mu_next", "sigma_next")):
            return row["step"], None if record is None else record["mu_next"], ctrl
    return None, None, ctrl


def fork_report(case: Path, curve: dict[float, float], variant: str, changes: dict) -> None:
    regret = lambda p: regret_on(curve, p)
    names = {f.name for f in dataclasses.fields(ControllerOptions)}
    known = []
    for stage in sorted(s for s in case.glob(f"search/{variant}/p*/seed*") if (s / "done.json").is_file()):  # finished
        done = json.loads((stage / "done.json").read_text())
        history = read_jsonl(stage / "history.jsonl")
        recorded = {k: v for k, v in done["options"].items() if k in names}
        if recorded.get("probe") == "taylor":
            raise SystemExit(f"{stage}: a taylor stage's estimates are not replayed; leave it out")
        at, mu, ctrl = fork(history, build(ControllerOptions, overrides={**recorded, **changes}, source="replay"))
        # a decision changed only in the last round: no training follows it, so p* is exact (changed probes are not)
        last = at is None or (mu is not None and at == history[-1]["step"])
        p_star = ctrl.result()["prune_ratio"] if last else None
        if p_star is not None:
            known.append((stage.parent.name, regret(p_star)))
        was = next((r["mu_next"] for r in history if r["step"] == at), None)
        print(f"  {stage.relative_to(case)}: recorded p* {done['prune_ratio']:.3f}; "
              + ("the same run" if at is None else f"goes otherwise at step {at}"
                 + (f" (mu {was:.3f} -> {mu:.3f})" if mu is not None else ""))
              + (f": p* {p_star:.3f}, regret {regret(p_star):.3f}" if p_star is not None
                 else f": needs a run (the record holds up to step {at})"))
    for start in sorted({s for s, _ in known}):
        r = [x for s, x in known if s == start]
        print(f"  from {start}: mean regret {np.mean(r):.3f} over the {len(r)} stages known without a run")


def periods_report(case: Path, curve: dict[float, float], controllers: list[str], skip: int = 3) -> None:
    """beta of base loss on committed p per stage (quadratic trend in the round), then per start paired across seeds
    (rounds after the first `skip`, whose losses still fall fast)."""
    grid_slope = lambda ps: float(np.polyfit(ps, [interpolate(curve, x) for x in ps], 1)[0])
    for c in controllers:
        for start in sorted(case.glob(f"search/{c}/p*")):
            runs = []
            for path in sorted(start.glob("seed*/history.jsonl")):
                rows = [r for r in read_jsonl(path) if r.get("base_loss") is not None]
                p, base = np.asarray([r["p"] for r in rows]), np.asarray([r["base_loss"] for r in rows])
                if len(p) < 6 or np.ptp(p) == 0:  # too few rounds, or p never moved: no slope to fit
                    continue
                k = np.arange(len(p))
                x = np.c_[np.ones_like(k), k, k ** 2, p]
                coef, *_ = np.linalg.lstsq(x, base, rcond=None)
                resid = base - x @ coef
                sd = float(np.sqrt(resid @ resid / (len(p) - 4)))
                print(f"  {path.parent.relative_to(case)}: p {p.min():.2f}-{p.max():.2f}, detrended sd {sd:.3f}, "
                      f"beta {coef[3]:+.3f} ± {sd * np.sqrt(np.linalg.inv(x.T @ x)[3, 3]):.3f}, "
                      f"the grid's slope there {grid_slope(p):+.3f}")
                runs.append((p, base))
            n = min((len(p) for p, _ in runs), default=0)
            if len(runs) >= 2 and n > skip + 1:
                p = np.asarray([r[0][skip:n] for r in runs])
                base = np.asarray([r[1][skip:n] for r in runs])
                dp, db = p - p.mean(0), base - base.mean(0)
                beta = float((dp * db).sum() / (dp ** 2).sum())
                resid = db - beta * dp
                dof = resid.size - p.shape[1] - 1  # a level per round, and beta
                se = float(np.sqrt((resid ** 2).sum() / dof / (dp ** 2).sum()))
                print(f"  {start.relative_to(case)}, {len(runs)} seeds paired round by round (rounds {skip + 1}-{n}): "
                      f"sd {resid.std():.3f}, beta {beta:+.3f} ± {se:.3f}, the grid's slope there "
                      f"{grid_slope(p.ravel()):+.3f}")


def taylor_report(history: list[dict]) -> None:
    pairs = [(c > r["p"], *e, loss - r["base_loss"]) for r in history
             for c, e, loss in zip(r["candidates"], r["estimates"], r["losses"])]
    for more, label in ((True, "prune more"), (False, "revive")):
        sel = np.asarray([x[1:] for x in pairs if x[0] == more])
        if len(sel) >= 3:
            corr = [float(np.corrcoef(sel[:, j], sel[:, 2])[0, 1]) for j in (0, 1)]
            print(f"    {label:<11} {len(sel):>3} candidates: Pearson with the measured change: first-order "
                  f"{corr[0]:+.2f}, second-order {corr[1]:+.2f}")
    explained, same = [], []
    for k in range(1, len(history)):
        cal = calibrate([[*e, loss - r["base_loss"]] for r in history[:k]
                         for e, loss in zip(r["estimates"], r["losses"])])
        if cal is None:
            continue
        r = history[k]
        measured = np.asarray(r["losses"]) - r["base_loss"]
        predicted = np.asarray([cal(e) for e in r["estimates"]])
        explained.append(1 - float(np.sum((measured - predicted) ** 2)) / float(np.sum(measured ** 2)))
        same.append(int(np.argmin(predicted) == np.argmin(measured)))
    if explained:
        print(f"    calibrated on the earlier rounds, on each next one ({len(explained)} rounds): share explained "
              f"median {np.median(explained):+.2f} (min {min(explained):+.2f}), the round's best candidate picked "
              f"{sum(same)}/{len(same)} (by chance {1 / len(history[0]['candidates']):.2f})")
    else:
        print("    no calibration fits any prefix of the rounds (it never explains half the measured changes)")


if __name__ == "__main__":
    main()
