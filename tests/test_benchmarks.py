"""The benchmarks are code too: bench_speedup end to end on the tiny model, and its kept state continues it;
bench_controller's yardsticks and replay_controller on hand-made stage records."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def bench_speedup(*args, rc: int = 0) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_speedup.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == rc, done.stderr[-3000:]
    return done.stdout if rc == 0 else done.stderr


@pytest.mark.slow
def test_bench_speedup_runs_and_its_kept_state_continues_it(tiny_model, tmp_path):
    out, keep = tmp_path / "bench", tmp_path / "kept"
    args = ["--model", tiny_model, "--out", out, "--no-asha", "--rounds", 2, "--set", "epochs=1",
            "--set", "target_sizes=8,4,4,4", "--set", "source_sizes=8,4,0,4", "--curve-seeds", 1337]
    first = bench_speedup(*args)
    report = first[first.index("grid val loss"):]
    # every side's pick is scored on the mean curve of both seeds, the grid's own pick included (not 0 by construction)
    one, two = ({float(p): float(v) for p, v in (kv.split(":") for kv in line.split(": ", 1)[1].split())}
                for line in report.splitlines()[:2])
    mean = {p: (one[p] + float(json.loads((out / f"grid/p{p}/seed1337/done.json").read_text())["val_loss"])) / 2
            for p in one}
    assert report.splitlines()[1].startswith("grid mean val loss over seeds 42, 1337") and two == pytest.approx(
        {p: round(v, 4) for p, v in mean.items()}, abs=1e-4)
    rows = {line.split()[0]: line.split() for line in report.splitlines()
            if line.split() and line.split()[0] in ("grid", "grasp", "one_run")}
    assert set(rows) == {"grid", "grasp", "one_run"}
    winner = min(one, key=one.get)  # the grid's pick, by seed 42 alone; scored on the mean curve
    assert float(rows["grid"][5]) == pytest.approx((mean[winner] - min(mean.values()))
                                                   / (max(mean.values()) - min(mean.values())), abs=1e-3)
    assert [rows[s][1] for s in ("grid", "grasp", "one_run")] == ["8", "2", "1"]
    assert rows["grid"][3] == "1.00x" and float(rows["one_run"][3].rstrip("x")) > 1
    assert "ASHA: not run (--no-asha)" in report and "goal grasp" in report

    # a later session: runs/ is gone, the kept records come back, and nothing is trained again
    bench_speedup(*args, "--keep-state", keep)
    assert (keep / "adapters.json").is_file() and (keep / "grasp" / "search" / "history.jsonl").is_file()
    assert not list(keep.rglob("*.safetensors"))  # records only: each stage scored its own adapter
    shutil.rmtree(out)
    shutil.copytree(keep, out)
    again = bench_speedup(*args)
    assert stages_run(again) and all(s.startswith(("data/", "adapters/")) for s in stages_run(again))
    assert again[again.index("grid val loss"):] == report

    # another controller setting redoes the controller run (and its final run), never the grid
    assert "the controller run: 2 steps of batch 2 x accumulation 3" in first  # the grid's batching
    batch_1 = ["--set", "search_batch_size=1", "--set", "search_grad_accum=1"]
    other = bench_speedup(*args, *batch_1)
    assert "the controller run: 8 steps of batch 1 x accumulation 1" in other
    assert "grasp/search:" in set(stages_run(other)) and not [s for s in stages_run(other) if s.startswith("grid/")]

    # ASHA added to the finished benchmark: only its stage runs, and it is compared with both GRASP modes
    with_asha = bench_speedup(*[a for a in args if a != "--no-asha"], *batch_1, "--asha-reduction-factor", 2)
    assert [s for s in stages_run(with_asha) if not s.startswith(("data/", "adapters/"))] == ["asha:"]
    asha_row = next(line.split() for line in with_asha.splitlines() if line.startswith("asha "))
    assert asha_row[3].endswith("x") and float(asha_row[4]) in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    assert "ASHA against grasp: " in with_asha and "ASHA against one_run: " in with_asha
    # rungs within the one epoch: ASHA's trials also evaluate every step (2 evaluations each), and only ASHA reruns
    rungs = bench_speedup(*[a for a in args if a != "--no-asha"], *batch_1, "--asha-reduction-factor", 2,
                          "--asha-eval-every", 1)
    assert {s for s in stages_run(rungs) if not s.startswith(("data/", "adapters/"))} == {"asha:"}
    per_p = re.search(r"at most 2: every 1 steps and each epoch's end\): evaluations run per p (.*);", rungs)
    counts = [int(kv.split(":")[1]) for kv in per_p.group(1).split()]
    assert len(counts) == 8 and max(counts) == 2 and min(counts) == 1  # halved at the first rung

    # the curve seeds read from a bench_controller case that ran the same grid: the same report, nothing run
    case = tmp_path / "case"
    shutil.copytree(out / "grid", case / "grid")
    shutil.copy(out / "adapters.json", case / "adapters.json")
    read = bench_speedup(*args, *batch_1, "--curve-from", case)  # the last controller setting: its stage is kept
    assert not [s for s in stages_run(read) if not s.startswith(("data/", "adapters/"))]
    curve_lines = lambda text: text[text.index("grid val loss"):].splitlines()[:3]
    assert "curve seeds 1337 read from" in read and curve_lines(read) == curve_lines(report)
    # ...and refused where its timed seed's grid is another recipe's
    done = case / "grid" / "p0.3" / "seed42" / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "val_loss": 9.0}))
    refused = bench_speedup(*args, *batch_1, "--curve-from", case, rc=1)
    assert "differs from this one's by up to" in refused and "Traceback" not in refused


def stages_run(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.strip().startswith("stage ")]


def stage_records(case: Path, curves: dict[int, dict[float, float]], controllers: dict[tuple[str, float], list]) -> None:
    """Finished grid and controller stages of one case, as bench_controller writes them."""
    from grasp_lora.config import ControllerOptions
    from grasp_lora.controller import offline

    for seed, curve in curves.items():
        for p, loss in curve.items():
            (case / f"grid/p{p}/seed{seed}").mkdir(parents=True)
            (case / f"grid/p{p}/seed{seed}/done.json").write_text(json.dumps({"val_loss": loss}))
    for (name, p0), losses in controllers.items():
        ctrl = offline(ControllerOptions(controller=name, p_init=p0), losses, 6)
        d = case / f"search/{name}/p{p0}/seed42"
        d.mkdir(parents=True)
        (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ctrl.history))
        (d / "done.json").write_text(json.dumps({**ctrl.result(), "seconds": 10.0, "probe_seconds": 4.0,
                                                 "options": {"controller": name, "p_init": p0}}))


def test_bench_controller_yardsticks(tmp_path, monkeypatch):
    """Discriminating power (span / mean seed std, ddof 1), the start held constant, random and the leave-one-out
    constant, on hand-made curves whose answers are known; and the replay of a trace."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_controller as bc
    import replay_controller

    grid = bc.GRID
    v = lambda best: {p: 1.0 + (p - best) ** 2 for p in grid}
    # case a: optimum 0.2, seeds differ by +-0.01 everywhere (std 0.01414); case b: optimum 0.7
    for name, best in (("a", 0.2), ("b", 0.7)):
        stage_records(tmp_path / name, {42: {p: x + 0.01 for p, x in v(best).items()},
                                         1337: {p: x - 0.01 for p, x in v(best).items()}},
                      {("fit", 0.4): lambda k, p, r, best=best: 2.0 + 3 * (r - best) ** 2})
    results = []
    for name in ("a", "b"):
        grid_runs = {p: {s: json.loads((tmp_path / name / f"grid/p{p}/seed{s}/done.json").read_text())["val_loss"]
                         for s in (42, 1337)} for p in grid}
        hist = [json.loads(line) for line in (tmp_path / name / "search/fit/p0.4/seed42/history.jsonl").open()]
        run = {**json.loads((tmp_path / name / "search/fit/p0.4/seed42/done.json").read_text()), "history": hist}
        results.append(bc.summarise(name, grid_runs, {"fit": {0.4: {42: run}}}, tmp_path / name))
    a, b = results
    span = 0.6 ** 2  # case a: (0.8 - 0.2)^2
    # a third seed run at one ratio so far changes nothing: the curve holds the seeds run at every ratio
    part_way = {p: {**s, **({9001: 5.0} if p == 0.1 else {})} for p, s in grid_runs.items()}
    assert bc.summarise("b", part_way, {}, tmp_path / "b")["curve"] == b["curve"]
    # a pilot's part-run grid (--grid-ratios 0.1 0.5 0.8): its power and each seed's best on those ratios alone
    pilot = {p: (dict(runs) if p in (0.1, 0.5, 0.8) else {}) for p, runs in grid_runs.items()}
    status = bc.summarise("b", pilot, {}, tmp_path / "b")["status"]
    three = [1.0 + (p - 0.7) ** 2 for p in (0.1, 0.5, 0.8)]
    assert "ratios 0.1 0.5 0.8 and seeds 42 1337" in status and "each seed's best 0.8 0.8" in status
    assert f"power on these ratios {(max(three) - min(three)) / (0.02 / 2 ** 0.5):.2f}" in status
    assert a["power"] == pytest.approx(span / (0.02 / 2 ** 0.5))
    assert a["grid_best"] == 0.2 and b["grid_best"] == 0.7
    assert a["variants"]["fit"]["0.4"]["start_regret"] == pytest.approx(0.2 ** 2 / span)
    assert a["variants"]["fit"]["0.4"]["rules"]["fit"]["regret"] == pytest.approx(0.0, abs=1e-3)  # found it
    assert a["one_seed_grid"] == {"picks": {42: 0.2, 1337: 0.2}, "regret_in_sample": 0.0, "regret": 0.0}
    # seeds that disagree: each one's pick scored on the other's curve (0.16 / 0.25 and 0.16 / 0.36), and on their mean
    split = bc.one_seed_grid({p: {1: (p - 0.2) ** 2, 2: (p - 0.6) ** 2} for p in grid})
    assert split["picks"] == {1: 0.2, 2: 0.6}
    assert split["regret"] == pytest.approx((0.16 / 0.25 + 0.16 / 0.36) / 2)
    assert split["regret_in_sample"] == pytest.approx(0.25)
    bc.leave_one_out(results)
    assert a["loo_constant"]["p"] == 0.7 and a["loo_constant"]["regret"] == pytest.approx(0.5 ** 2 / span)
    text = bc.report(a) + bc.overall(results)
    assert "discriminating power" in text and "best constant on the other cases (p = 0.7)" in text
    assert "grid of one seed (picks 0.2 0.2), on the others" in text
    # the least-squares slope of (p - 0.2)^2 over evenly spaced p is 2 * mean(p) - 0.4 = 0.5
    assert "fit probes: loss rose with the ratio in" in text and "the grid's trained curve +0.500" in text
    # the probes' direction: slopes +1 and -2; coinciding candidates and a failed probe tell none
    rounds = [{"candidates": [0.1, 0.2, 0.3], "losses": [1.0, 1.1, 1.2]},
              {"candidates": [0.3, 0.5, 0.4], "losses": [2.0, 1.6, 1.8]},
              {"candidates": [0.4, 0.4, 0.4], "losses": [1.0, 2.0, 3.0]},
              {"candidates": [0.1, 0.2, 0.3], "losses": [1.0, None, 1.0]}]
    assert bc.probe_slopes([rounds[:2], rounds[2:]]) == pytest.approx({"rounds": 2, "rising": 0.5, "median": -0.5})
    # the targets a controller that learns must meet: both cases resolve (power 25), fit found both optima
    assert ("fit against the targets: regret <= 0.10 in 2 of 2 cells of power >= 3; per-start mean p* within 0.15 "
            "on 2 of 2 such cases; over all 0.000, at most half the start held (0.090): yes; below the leave-one-out "
            "constant (0.694): yes") in text
    assert "on the cases of power >= 3: a 0.000, b 0.000; above 0.10 on 0 of 2" in text
    # a controller that kept its start: the start held's regret is its own
    kept = copy.deepcopy(results)
    for r in kept:
        info = r["variants"]["fit"]["0.4"]
        info["rules"]["fit"]["regret"] = info["start_regret"]
    assert ("regret <= 0.10 in 0 of 2 cells of power >= 3; per-start mean p* within 0.15 on 2 of 2 such cases; over "
            "all 0.181, at most half the start held (0.090): no") in bc.verdict("fit", kept, 0.694)
    # the registered rule: a case counts only where the grid of one seed itself scores <= 0.10 out of sample
    assert ("of those, where one seed's grid scores <= 0.10 out of sample: regret <= 0.10 in 2 of 2 cells of such "
            "power and one-seed grid; per-start mean p* within 0.15 on 2 of 2 such cases") in text
    kept[0]["one_seed_grid"] = {**kept[0]["one_seed_grid"], "regret": 0.134}
    assert "out of sample: regret <= 0.10 in 0 of 1 cells" in bc.verdict("fit", kept, 0.694)
    kept[1]["one_seed_grid"] = None
    assert "out of sample: no case of such power and one-seed grid" in bc.verdict("fit", kept, 0.694)
    assert (tmp_path / "a" / "controller_vs_grid.png").stat().st_size > 0

    # a trace: the loss at every grid ratio each round -- the replay scores any controller on it
    trace = tmp_path / "a" / "trace/seed42"
    trace.mkdir(parents=True)
    rows = [{"step": 10 * (k + 1), "p": 0.4, "mu": 0.4, "sigma": 0.1,
             "trace": [[p, 2.0 - 0.01 * k + 3 * (p - 0.2) ** 2] for p in grid]} for k in range(6)]
    (trace / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", ["replay", "--out", str(tmp_path), "--case", "a", "--controllers", "fit",
                                      "--starts", "0.6", "--seeds", "1"])
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        replay_controller.main()
    out = buf.getvalue()
    assert "Spearman(probe loss, grid val loss): +1.00" in out
    fit_row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["fit"])
    assert float(fit_row[2]) == pytest.approx(0.2, abs=0.01) and float(fit_row[3]) < 0.01

    # a trace from the starting weights (--trace-from start): its look-ahead probes replay the `fit` controller as
    # a run with probe_from start would (no anchoring term), here with the optimum at 0.7; first 4 rounds only
    start = tmp_path / "a" / "trace-start-lookahead5/seed42"
    start.mkdir(parents=True)
    rows = [{**r, "trace_lookahead": [[p, 1.9 - 0.02 * k + 3 * (p - 0.7) ** 2] for p in grid]} for k, r in enumerate(rows)]
    (start / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", sys.argv + ["--rounds", "4"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        replay_controller.main()
    out = buf.getvalue().split("trace_lookahead of trace-start-lookahead5/seed42/history.jsonl: 4 rounds (from the "
                               "starting weights: an exact replay)")[1]
    fit_row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["fit"])
    assert float(fit_row[2]) == pytest.approx(0.7, abs=0.01)


def test_replay_periods_recovers_the_slope_of_committed_periods(tmp_path, monkeypatch, capsys):
    """--periods: base losses made of a level the seeds share (the data order), a quadratic trend and a known slope in
    the committed p; the per-run fit and the paired fit both read that slope back, beside the grid's own."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import replay_controller

    case = tmp_path / "a"
    stage_records(case, {42: {p: 1.0 + 0.1 * p for p in (0.1, 0.4, 0.8)}}, {})
    rng = np.random.default_rng(0)
    k = np.arange(12)
    shared = 2.0 - 0.04 * k + 0.002 * k ** 2 + rng.normal(0, 0.05, size=12)  # the same for every seed
    for seed in (1, 2, 3):
        p = np.clip(0.4 + rng.normal(0, 0.15, size=12), 0.1, 0.8)
        rows = [{"step": 10 * (i + 1), "p": float(p[i]), "mu": 0.4, "sigma": 0.1,
                 "base_loss": float(shared[i] - 0.3 * p[i])} for i in range(12)]
        d = case / f"search/reinforce/p0.4/seed{seed}"
        d.mkdir(parents=True)
        (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", ["replay", "--out", str(tmp_path), "--case", "a", "--controllers", "reinforce",
                                      "--periods"])
    replay_controller.main()
    out = capsys.readouterr().out
    paired = next(line for line in out.splitlines() if "paired round by round" in line)
    assert "3 seeds" in paired and "beta -0.300 ± 0.000" in paired and "the grid's slope there +0.100" in paired
    # one run alone cannot take out the level's noise (not a quadratic): its beta is -0.3 within its wider error
    per_run = [re.search(r"beta ([-+.\d]+) ± ([.\d]+)", line) for line in out.splitlines() if "detrended sd" in line]
    assert len(per_run) == 3
    for m in per_run:
        beta, se = float(m[1]), float(m[2])
        assert se > 0.01 and abs(beta + 0.3) < 3 * se


def test_bench_taylor_puts_estimates_beside_probes(tiny_model, tiny_adapters, demo_data, tmp_path):
    """bench_taylor on a case folder laid out as bench_controller's (the tiny model, the demo case's Arabic): every
    grid ratio's measured changes beside both terms of the estimate, and the two costs side by side."""
    case = tmp_path / "demo"
    for name, src in (("adapters/source", tiny_adapters["en"]), ("adapters/target", tiny_adapters["ar"]),
                      ("data/target", demo_data["ar"])):
        shutil.copytree(src, case / name)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_taylor.py"), "--case-dir", str(case), "--model",
                           str(tiny_model), "--examples", "4"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0] in
            ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8")]
    assert len(rows) == 8 and all(len(r) == 5 for r in rows)
    at_p = rows[3]  # the committed ratio itself: no change, measured or estimated
    assert [float(x) for x in at_p[1:]] == [0.0, 0.0, 0.0, 0.0]
    assert any(float(r[3]) != 0.0 for r in rows) and "costs" in lines[-1]


def test_a_stored_controller_stage_with_other_options_is_not_reused(tmp_path, monkeypatch):
    """bench_controller reuses a finished stage by its name: one that ran with other options (a default changed
    since, a variant name reused) stops the benchmark with the options that differ, instead of being reported."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_controller as bc

    stage = tmp_path / "search/reinforce/p0.4/seed42"
    stage.mkdir(parents=True)
    asked = {"controller": "reinforce", "commit_toward": "best_candidate", "probe_examples": 0, "trace_ratios": []}
    (stage / "done.json").write_text(json.dumps({"options": {**asked, "trace_ratios": [0.3]}}))
    bc.check_stored_options(stage, asked)  # the diagnostic trace ratios do not count
    bc.check_stored_options(tmp_path / "search/never-run", asked)
    with pytest.raises(SystemExit, match="commit_toward='best_candidate'; asked: commit_toward='policy_mean'"):
        bc.check_stored_options(stage, {**asked, "commit_toward": "policy_mean"})


def test_replay_fork_finds_where_changed_options_first_decide_otherwise(tmp_path, monkeypatch, capsys):
    """--fork: a recorded stage replayed with its own options is the same run (its p*); with the scatter taken at the
    centre it goes otherwise at the round a decision changes; with another gap at the first round (other probes)."""
    from dataclasses import asdict

    from grasp_lora.config import ControllerOptions
    from grasp_lora.controller import offline

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import replay_controller

    case = tmp_path / "a"
    stage_records(case, {42: {p: 1.0 + (p - 0.2) ** 2 for p in (0.1, 0.4, 0.8)}}, {})
    rng = np.random.default_rng(0)
    s = ControllerOptions(controller="pair", pair_move="sequential", sigma_init=0.1, hold_rounds=2, p_init=0.6)
    ctrl = offline(s, lambda k, p, r: 2.0 - 0.01 * k + 3.0 * (r - 0.2) ** 2 + rng.normal(0, 0.07), 20)
    d = case / "search/pair-seq/p0.6/seed42"
    d.mkdir(parents=True)
    (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ctrl.history))
    (d / "done.json").write_text(json.dumps({**ctrl.result(), "options": asdict(s)}))
    at_centre, _, _ = replay_controller.fork(ctrl.history, ControllerOptions(**{**asdict(s), "pair_scatter": "at_centre"}))
    assert at_centre is not None and at_centre > ctrl.history[0]["step"]  # a move's jump in the lead is left out

    def report(*changes: str) -> str:
        monkeypatch.setattr(sys, "argv", ["replay", "--out", str(tmp_path), "--case", "a", "--fork", "pair-seq",
                                          *(x for c in changes for x in ("--set", c))])
        replay_controller.main()
        return next(line for line in capsys.readouterr().out.splitlines() if "seed42" in line)

    assert f"the same run: p* {ctrl.result()['prune_ratio']:.3f}" in report()
    assert f"goes otherwise at step {at_centre} (mu " in report("pair_scatter=at_centre")  # a decision differs
    assert "goes otherwise at step 0: needs a run" in report("pair_gap=0.2")  # the probes differ
