"""Damaged or changed run folders: every record the tool reads back, damaged every way, under every command that
reads it, gives one clear line (exit 2) or the undamaged result; never a traceback, never a silently other result."""

import json
import random
import re
import shutil
from pathlib import Path

import pytest
from conftest import cli

from grasp_lora.errors import UserError
from grasp_lora.files import read_jsonl
from grasp_lora.report import write_run_info

DAMAGES = ("truncated", "garbage_line", "wrong_type", "nan", "empty")


def damage(path: Path, kind: str, rng: random.Random) -> None:
    text = path.read_text(encoding="utf-8")
    if kind == "truncated":
        text = text[:rng.randrange(1, len(text) - 1)]
    elif kind == "empty":
        text = ""
    elif kind == "garbage_line":
        lines = text.splitlines(keepends=True)
        lines.insert(max(len(lines) // 2, 1), "{not json at all\n")
        text = "".join(lines)
    elif kind in ("wrong_type", "nan"):  # a field's number becomes a string, or NaN (the first, or a float)
        number = r"(?<=: )-?\d+\.\d+(e-?\d+)?" if kind == "nan" and re.search(r": -?\d+\.", text) else r"(?<=: )-?\d+"
        text = re.sub(number, '"x"' if kind == "wrong_type" else "NaN", text, count=1)
    assert text != path.read_text(encoding="utf-8"), (path, kind)
    path.write_text(text, encoding="utf-8")


def without_seconds(rows):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model, tiny_adapters, demo_data):
    """A finished search (history, ratio.json, logs, config.yaml, checkpoint), predictions and their metrics, a
    `run` record: each made by the real command."""
    root = tmp_path_factory.mktemp("records")
    shutil.copytree(demo_data["ar"], root / "data")
    assert cli("search", "--model", tiny_model, "--data", root / "data", "--lang", "ar", "--adapters",
               tiny_adapters["en"], tiny_adapters["ar"], "--out", root / "search", "--max-steps", 4, "--round-every", 2,
               "--grad-accum", 2, "--checkpoint-every", 1, "--epochs", 3, "--patience", 0) == 0
    assert cli(*final(root, tiny_model, tiny_adapters, 4, resume=False)) == 0
    assert cli("generate", "--model", tiny_model, "--data", root / "data", "--lang", "ar", "--out",
               root / "run" / "predictions.jsonl", "--limit", 3, "--max-new-tokens", 2) == 0
    assert cli("evaluate", "--predictions", root / "run" / "predictions.jsonl", "--lang", "ar", "--data", root / "data",
               "--out", root / "run" / "metrics.json", "--bertscore-model", "none") == 0
    write_run_info(root / "run", "zero_shot", "qa", "ar", 0.0)
    return root


def resume(root: Path, tiny_model, tiny_adapters) -> list:
    return ["search", "--model", tiny_model, "--data", root / "data", "--lang", "ar", "--adapters", tiny_adapters["en"],
            tiny_adapters["ar"], "--out", root / "search", "--max-steps", 6, "--round-every", 2, "--grad-accum", 2,
            "--checkpoint-every", 1, "--epochs", 3, "--patience", 0, "--resume"]


def final(root: Path, tiny_model, tiny_adapters, steps: int = 6, resume: bool = True) -> list:
    """finetune-merged: the finished 4-step run, and its resume with more steps."""
    return ["finetune-merged", "--model", tiny_model, "--data", root / "data", "--lang", "ar", "--adapters",
            tiny_adapters["en"], tiny_adapters["ar"], "--out", root / "final0", "--prune-ratio", 0.3,
            "--grad-accum", 2, "--checkpoint-every", 1, "--epochs", 3, "--patience", 0, "--max-steps", steps,
            *(["--resume"] if resume else [])]


# command -> (its arguments on a copy of the records, what it leaves that must equal the undamaged run's)
COMMANDS = {
    "report": (lambda r, m, a: ["report", r / "search", r / "run", "--out", r / "report"],
               lambda r: [(r / "report" / "results.md").read_text(), (r / "report" / "runtime.md").read_text()]),
    "search_resume": (resume, lambda r: [without_seconds(read_jsonl(r / "search" / "history.jsonl")),
                                         without_seconds([json.loads((r / "search" / "ratio.json").read_text())])]),
    "finetune_resume": (final, lambda r: [
        without_seconds(read_jsonl(r / "final0" / "train_log.jsonl")),
        without_seconds([json.loads((r / "final0" / "train_summary.json").read_text())])]),
    "prune_ratio_file": (lambda r, m, a: ["finetune-merged", "--model", m, "--data", r / "data", "--lang", "ar",
                                          "--adapters", a["en"], a["ar"], "--out", r / "final", "--max-steps", 1,
                                          "--prune-ratio", r / "search" / "ratio.json"],
                         lambda r: [(r / "final" / "config.yaml").read_text().split("out:")[0]]),
    "evaluate": (lambda r, m, a: ["evaluate", "--predictions", r / "run" / "predictions.jsonl", "--lang", "ar",
                                  "--data", r / "data", "--out", r / "m2.json", "--bertscore-model", "none"],
                 lambda r: [{k: v for k, v in json.loads((r / "m2.json").read_text()).items() if k != "predictions"}]),
    "generate": (lambda r, m, a: ["generate", "--model", m, "--data", r / "data", "--lang", "ar", "--out",
                                  r / "p2.jsonl", "--limit", 2, "--max-new-tokens", 2],
                 lambda r: [read_jsonl(r / "p2.jsonl")]),
}
READS = [("search/history.jsonl", "report"), ("search/ratio.json", "report"), ("search/config.yaml", "report"),
         ("run/run.json", "report"), ("run/metrics.json", "report"),
         ("search/history.jsonl", "search_resume"), ("search/train_log.jsonl", "search_resume"),
         ("search/val_log.jsonl", "search_resume"), ("search/config.yaml", "search_resume"),
         ("final0/train_log.jsonl", "finetune_resume"), ("final0/val_log.jsonl", "finetune_resume"),
         ("final0/config.yaml", "finetune_resume"), ("search/ratio.json", "prune_ratio_file"), ("run/predictions.jsonl", "evaluate"),
         ("data/splits.json", "evaluate"), ("data/splits.json", "generate")]


@pytest.fixture(scope="module")
def undamaged(finished, tmp_path_factory, tiny_model, tiny_adapters):
    """What each command leaves on an intact copy of the records."""
    out = {}
    for name, (args, result) in COMMANDS.items():
        root = tmp_path_factory.mktemp(f"intact-{name}")
        shutil.copytree(finished, root, dirs_exist_ok=True)
        assert cli(*args(root, tiny_model, tiny_adapters)) == 0, name
        out[name] = result(root)
    return out


@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("record,command", READS, ids=[f"{c}-{r.replace('/', '.')}" for r, c in READS])
def test_damaged_record(record, command, kind, finished, undamaged, tmp_path, capsys, tiny_model, tiny_adapters):
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    path = root / record
    if kind == "wrong_type" and record.endswith(".yaml"):
        path.write_text(path.read_text().replace("lr: 0.0001", "lr: fast"))
    else:
        damage(path, kind, random.Random(f"{record}{kind}"))
    capsys.readouterr()
    args, result = COMMANDS[command]
    rc = cli(*args(root, tiny_model, tiny_adapters))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if rc == 2:
        lines = [line for line in err.strip().splitlines() if line.startswith("grasp-lora: error:")]
        assert len(lines) == 1 and path.name in lines[0], err
    else:
        assert rc == 0, err
        assert result(root) == undamaged[command], f"{record} {kind}: exit 0 with another result\n{err}"


def test_torn_last_line_is_dropped_and_said(tmp_path, caplog):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(log)] == [1, 2]
    assert "cut short" in caplog.text and "train_log.jsonl" in caplog.text
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": NaN}\n')
    with pytest.raises(UserError, match="line 2.*NaN"):
        read_jsonl(log)


def test_resume_with_more_steps_continues_and_other_options_are_refused(finished, tmp_path, capsys, tiny_model,
                                                                        tiny_adapters):
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    args = resume(root, tiny_model, tiny_adapters)
    before = json.loads((root / "search" / "ratio.json").read_text())
    assert before["steps"] == 4 and before["rounds"] == 2
    assert cli(*args[:-1], "--lr", "0.5", "--resume") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "lr 0.0001 -> 0.5" in err and len(err.strip().splitlines()) == 1
    assert json.loads((root / "search" / "ratio.json").read_text()) == before  # nothing changed
    assert cli(*args) == 0  # --max-steps 6: the finished 4-step run continues
    after = json.loads((root / "search" / "ratio.json").read_text())
    assert after["steps"] == 6 and after["rounds"] == 3
    assert [r["step"] for r in read_jsonl(root / "search" / "train_log.jsonl")] == list(range(1, 7))
    assert [r["step"] for r in read_jsonl(root / "search" / "history.jsonl")] == [2, 4, 6]
    capsys.readouterr()
    assert cli(*args[:-1], "--max-steps", 3, "--resume") == 2  # the run is past step 3
    err = capsys.readouterr().err
    assert "--max-steps 3" in err and "already past it" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_done_json_stops_the_experiment(kind, tmp_path):
    """`run`'s resume reads each stage's done.json: damaged, it is named with the fix (delete it to redo the stage)."""
    from grasp_lora.config import ExperimentConfig, build
    from grasp_lora.demo import corpus_file
    from grasp_lora.pipeline import Experiment

    cfg = build(ExperimentConfig, overrides={"source_input": str(corpus_file("qa", "en")),
                                             "target_input": str(corpus_file("qa", "ar"))})
    exp = Experiment(cfg, tmp_path)
    calls = []
    stage = lambda: exp.stage("grid/p0.1/seed42", lambda d: calls.append(d) or {"val_loss": 1.25}, {"lr": 0.001})
    assert stage()["val_loss"] == 1.25 and stage()["val_loss"] == 1.25 and len(calls) == 1  # done: not redone
    damage(tmp_path / "grid/p0.1/seed42/done.json", kind, random.Random(kind))
    with pytest.raises(UserError, match="done.json.*delete it to redo the stage"):
        stage()
    assert len(calls) == 1
