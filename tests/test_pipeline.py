"""The experiment runner end to end on the tiny model, resume by stage, and the demo (cut down to the tiny model)."""

import csv
import importlib.util
import json
import os

import pytest
import yaml

from conftest import cli, run_cli
from grasp_lora.demo import corpus_file

STAGES = ["data/source", "data/target", "adapters/source", "adapters/target", "zero_shot", "target_lora", "ties",
          "lorahub", "alm/seed42", "grid/p0.3/seed42", "grid/p0.6/seed42", "grid/winner", "grasp/search", "grasp/seed42",
          "grasp/seed7", "grasp/one_run"]


def experiment_yaml(tmp_path, tiny_model):
    cfg = {
        "model": str(tiny_model), "task": "qa", "dataset": "mlqa", "source_lang": "en", "target_lang": "ar",
        "source_input": str(corpus_file("qa", "en")), "target_input": str(corpus_file("qa", "ar")),
        "source_sizes": "16,8,0,8", "target_sizes": "12,8,6,8", "max_steps": 2, "grad_accum": 2, "round_every": 1,
        "seeds": [42, 7], "grid": [0.3, 0.6], "grid_seeds": [42], "lorahub_budget": 4, "max_new_tokens": 4,
        "bertscore_model": "none", "device": "cpu",
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_run_all_stages_then_resume(tmp_path, tiny_model):
    exp, out = experiment_yaml(tmp_path, tiny_model), tmp_path / "out"
    r = run_cli("run", exp, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in STAGES:
        assert (out / stage / "done.json").is_file(), stage
    for label in ("Zero shot", "LoRA (target)", "TIES merge", "LoRAHub", "Adaptive LoRA Merge",
                  "Adaptive LoRA Merge + pruning (grid)", "GRASP LoRA Merge + pruning", "GRASP LoRA (one run)"):
        assert f"| {label} |" in r.stdout, label
    assert "Speed-up" in r.stdout and (out / "report" / "controller.png").is_file()
    winner = json.loads((out / "grid/winner/done.json").read_text())["prune_ratio"]
    assert (out / f"grid/p{winner}/seed42/metrics.json").is_file()
    assert not (out / f"grid/p{0.3 if winner == 0.6 else 0.6}/seed42/metrics.json").exists()  # only the winner is scored
    p_star = json.loads((out / "grasp/search/ratio.json").read_text())["prune_ratio"]
    assert json.loads((out / "grasp/seed7/run.json").read_text())["prune_ratio"] == p_star
    card = (out / "grasp/seed7/adapter/README.md").read_text()  # the scores go into the adapter's model card
    em = json.loads((out / "grasp/seed7/metrics.json").read_text())["exact_match"]
    assert f"**Prune ratio**: {p_star:.4f}" in card and f"| EM | {em:.2f} |" in card

    before = {s: (out / s / "done.json").read_text() for s in STAGES}
    (out / "ties" / "done.json").unlink()  # as if the run had been killed inside this stage
    r = run_cli("run", exp, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage ties:" in r.stdout
    assert [line for line in r.stdout.splitlines() if line.strip().startswith("stage ")] == [
        next(l for l in r.stdout.splitlines() if "stage ties:" in l)]
    for s in STAGES:
        if s != "ties":
            assert (out / s / "done.json").read_text() == before[s], s  # finished stages were not redone


def test_unknown_method_and_missing_input(tmp_path, tiny_model, capsys):
    exp = experiment_yaml(tmp_path, tiny_model)
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        cli("run", exp, "--out", tmp_path / "o", "--methods", "grasp", "magic")
    assert e.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err
    exp.write_text(exp.read_text() + "methods: [grasp, magic]\n")  # from YAML: the same check, by the config
    assert cli("run", exp, "--out", tmp_path / "o") == 2
    assert "--methods magic: choose one of zero_shot" in capsys.readouterr().err
    assert cli("run", exp, "--out", tmp_path / "o", "--target-input", "") == 2
    assert "--target-input is required" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_cut_down_to_the_tiny_model(tmp_path, tiny_model):
    r = run_cli("demo", "--model", tiny_model, "--out", tmp_path / "demo", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Demo scale:" in r.stdout
    for label in ("Zero shot", "LoRA (target)", "TIES merge", "LoRAHub", "Adaptive LoRA Merge |",
                  "Adaptive LoRA Merge + pruning (grid)", "GRASP LoRA Merge + pruning", "GRASP LoRA (one run)"):
        assert label in r.stdout, label
    assert "GRASP LoRA (controller + final runs)" in r.stdout and "controller.png" in r.stdout
    m = json.loads((tmp_path / "demo/grasp/seed42/metrics.json").read_text())
    assert m["bertscore_f1"] is not None and m["bertscore_layer"] == 9


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed (pip install "grasp-lora[ray]")')
def test_ray_executor_two_workers(tmp_path, tiny_model):
    exp, out = experiment_yaml(tmp_path, tiny_model), tmp_path / "ray"
    r = run_cli("run", exp, "--out", out, "--executor", "ray", "--ray-workers", 2, "--methods", "alm_grid", "grasp",
                "--seeds", 42)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("grid/p0.3/seed42", "grid/p0.6/seed42", "grid/winner", "grasp/search", "grasp/seed42"):
        assert (out / stage / "done.json").is_file(), stage
    assert (out / "ray").is_dir()  # the trials ran under Ray Tune
    assert "GRASP LoRA (controller + final runs)" in r.stdout


def test_changed_configuration_redoes_exactly_the_stages_it_touches(tmp_path, tiny_model, capsys):
    """A finished experiment run again with another training option, seed list, grid, data input or methods:
    only the stages that depend on the change are redone (and say which keys changed); the report holds only
    this configuration's runs."""
    import shutil

    target = tmp_path / "ar.jsonl"
    shutil.copy(corpus_file("qa", "ar"), target)
    exp = experiment_yaml(tmp_path, tiny_model)
    cfg = yaml.safe_load(exp.read_text())
    cfg.update(target_input=str(target), methods=["alm", "alm_grid"], seeds=[42], max_steps=1)
    out = tmp_path / "out"

    def run(**change) -> tuple[set[str], list[dict], str]:
        exp.write_text(yaml.safe_dump({**cfg, **change}))
        capsys.readouterr()
        assert cli("run", exp, "--out", out) == 0
        text = capsys.readouterr().out
        redone = {line.split()[1].rstrip(":") for line in text.splitlines() if line.strip().startswith("stage ")}
        rows = list(csv.DictReader((out / "report" / "results.csv").open()))
        return redone, rows, text

    redone, rows, _ = run()
    assert redone == {"data/source", "data/target", "adapters/source", "adapters/target", "alm/seed42",
                      "grid/p0.3/seed42", "grid/p0.6/seed42", "grid/winner"}
    assert run()[0] == set()  # nothing changed: nothing redone

    redone, _, text = run(lr=3e-4)  # a training option: the adapters and everything after them
    assert redone == {"adapters/source", "adapters/target", "alm/seed42", "grid/p0.3/seed42", "grid/p0.6/seed42",
                      "grid/winner"}
    assert "stage adapters/source: redoing it, its configuration changed (lr)" in text
    cfg["lr"] = 3e-4

    redone, rows, _ = run(seeds=[42, 7])  # a seed more: only its runs
    assert redone == {"alm/seed7"} and {r["method"]: r["seeds"] for r in rows}["alm"] == "2"
    redone, rows, _ = run()  # back to one seed: the seed-7 folder stays, but is not in the report
    assert redone == set() and {r["method"]: r["seeds"] for r in rows}["alm"] == "1"

    redone, _, _ = run(grid=[0.3])  # a smaller grid: the winner is chosen again among the points asked for
    assert redone == {"grid/winner"}
    assert "| 1 |" in (out / "report" / "runtime.md").read_text()  # the grid counts 1 run, not 2

    redone, rows, _ = run(methods=["alm"])  # fewer methods: the report lists only those
    assert redone == set() and [r["method"] for r in rows] == ["alm"]

    with target.open("a") as f:  # the target data changed: its split and everything after it
        f.write(target.read_text().splitlines()[0].replace('"id": "', '"id": "new-') + "\n")
    redone, _, text = run()
    assert redone == {"data/target", "adapters/target", "alm/seed42", "grid/p0.3/seed42", "grid/p0.6/seed42",
                      "grid/winner"}
    assert "stage data/target: redoing it, its configuration changed (input)" in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray not installed (pip install "grasp-lora[ray]")')
def test_ray_on_a_running_cluster(tmp_path, tiny_model, monkeypatch):
    """--ray-address joins a cluster started with `ray start --head` on a loopback port; the grid runs through it
    with the per-trial resources asked for, and the cluster is stopped after."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a loopback-only test cluster: no token authentication (a real cluster's RAY_AUTH_MODE/token reach Ray as set)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                            "--temp-dir", str(ray_tmp)], capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        exp, out = experiment_yaml(tmp_path, tiny_model), tmp_path / "ray"
        r = run_cli("run", exp, "--out", out, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                    "--ray-workers", 2, "--ray-cpus-per-trial", 1, "--ray-gpus-per-trial", 0, "--methods", "alm_grid",
                    "--generate-limit", 2)
        assert r.returncode == 0, r.stderr[-3000:]
        for p in (0.3, 0.6):
            assert (out / f"grid/p{p}/seed42/done.json").is_file()
        assert (out / "ray").is_dir()
        # the trials ran on that cluster's workers (a Ray started by the run itself would log under /tmp/ray)
        assert list(ray_tmp.glob("session_*/logs/worker-*")), sorted(p.name for p in ray_tmp.glob("session_*/logs/*"))
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_changed_controller_option_redoes_the_search(tmp_path):
    """The search stage depends on every controller option: a pair option changed (they were once left out of its
    dependencies) gives it another fingerprint, so `run` redoes it instead of reusing the old ratio."""
    from grasp_lora.config import ExperimentConfig, build
    from grasp_lora.pipeline import CONTROLLER_KEYS, Experiment

    def deps(**options) -> dict:
        cfg = build(ExperimentConfig, overrides=dict(out=str(tmp_path), source_input="en.jsonl",
                                                     target_input="ar.jsonl", controller="pair", **options))
        return Experiment(cfg, tmp_path).depends("grasp/search", CONTROLLER_KEYS)

    base = deps()
    for change in (dict(pair_gap=0.2), dict(pair_move="sequential"), dict(hold_rounds=6), dict(pair_z=1.0),
                   dict(pair_scatter="at_centre"), dict(trace_ratios=[0.3])):
        assert deps(**change) != base, change
    assert deps() == base
