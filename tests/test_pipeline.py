"""The experiment runner end to end on the tiny model, resume by stage, and the demo (cut down to the tiny model)."""

import importlib.util
import json

import pytest
import yaml

from conftest import cli, run_cli
from grasp_lora.demo import corpus_file

STAGES = ["data/source", "data/target", "adapters/source", "adapters/target", "zero_shot", "target_lora", "ties",
          "lorahub", "alm/seed42", "grid/p0.3/seed42", "grid/p0.6/seed42", "grid/winner", "grasp/search", "grasp/seed42",
          "grasp/seed7"]


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
                  "Adaptive LoRA Merge + pruning (grid)", "GRASP LoRA Merge + pruning"):
        assert f"| {label} |" in r.stdout, label
    assert "Speed-up" in r.stdout and (out / "report" / "controller.png").is_file()
    winner = json.loads((out / "grid/winner/done.json").read_text())["prune_ratio"]
    assert (out / f"grid/p{winner}/seed42/metrics.json").is_file()
    assert not (out / f"grid/p{0.3 if winner == 0.6 else 0.6}/seed42/metrics.json").exists()  # only the winner is scored
    p_star = json.loads((out / "grasp/search/ratio.json").read_text())["prune_ratio"]
    assert json.loads((out / "grasp/seed7/run.json").read_text())["prune_ratio"] == p_star

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
                  "Adaptive LoRA Merge + pruning (grid)", "GRASP LoRA Merge + pruning"):
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
