"""Numerical faults, killed writers, concurrent runs, and the bad-input suite across commands."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import grasp_lora.controller_run as controller_run
import grasp_lora.train as train
from conftest import cli, make_adapter, run_cli
from grasp_lora.errors import UserError
from grasp_lora.files import LOCK_NAME, RUN_NAME, TMP_SUFFIX, read_jsonl


def search_args(tiny_model, tiny_adapters, demo_data, out, *extra):
    return ["search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data",
            demo_data["ar"], "--lang", "ar", "--out", out, "--max-steps", 6, "--grad-accum", 2, "--round-every", 2,
            "--checkpoint-every", 1, "--controller", "sliced", *extra]


def test_nan_loss_stops_with_exit_3_and_checkpoint_intact(tmp_path, monkeypatch, capsys, tiny_model, demo_data):
    real, calls = train.example_nll, [0]

    def nan_at_fifth(model, batch):
        calls[0] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls[0] == 5 else loss

    monkeypatch.setattr(train, "example_nll", nan_at_fifth)
    out = tmp_path / "nan"
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
             "--max-steps", 6, "--grad-accum", 2, "--checkpoint-every", 1)
    err = capsys.readouterr().err
    assert rc == 3 and "loss is nan at step 3" in err and "Traceback" not in err
    run = out / RUN_NAME  # the unfinished run; OUT itself shows only finished results
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["progress"]["step"] == 2  # the last good step
    assert [r["step"] for r in read_jsonl(run / "train_log.jsonl")] == [1, 2]
    assert not (out / "train_log.jsonl").exists()
    monkeypatch.setattr(train, "example_nll", real)
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
               "--max-steps", 6, "--grad-accum", 2, "--checkpoint-every", 1, "--resume") == 0
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == list(range(1, 7))
    assert not run.exists()


def test_a_failed_rerun_keeps_the_previous_result_whole(tmp_path, monkeypatch, capsys, tiny_model, tiny_adapters,
                                                       demo_data, caplog):
    """A finished finetune-merged, then a fresh run into the same folder that stops on a NaN loss: the folder
    still holds exactly the first result (no new logs beside the old adapter). A later fresh run says that it
    discards the unfinished one, and its finished result replaces the first whole."""
    out = tmp_path / "m"
    args = ["finetune-merged", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
            "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--grad-accum", 1, "--checkpoint-every", 1,
            "--prune-ratio", 0.3]
    assert cli(*args, "--max-steps", 2) == 0
    first = snapshot(out)
    assert {"train_log.jsonl", "val_log.jsonl", "checkpoint.pt", "train_summary.json", "config.yaml",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(first)
    real, calls = train.example_nll, [0]

    def nan_at_fourth(model, batch):
        calls[0] += 1
        return real(model, batch) * (float("nan") if calls[0] == 4 else 1.0)

    monkeypatch.setattr(train, "example_nll", nan_at_fourth)
    assert cli(*args, "--max-steps", 5, "--seed", 7) == 3
    assert snapshot(out) == first and (out / RUN_NAME / "checkpoint.pt").is_file()
    monkeypatch.setattr(train, "example_nll", real)
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert cli(*args, "--max-steps", 5, "--seed", 7) == 0
    assert "unfinished earlier run is discarded" in caplog.text
    now = snapshot(out)
    assert now.keys() == first.keys() and now["adapter/adapter_model.safetensors"] != first[
        "adapter/adapter_model.safetensors"]
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == list(range(1, 6))
    assert not (out / RUN_NAME).exists() and not list(out.glob(f"*{TMP_SUFFIX}"))


def test_nan_candidate_gets_no_commit_and_is_logged(tmp_path, monkeypatch, tiny_model, tiny_adapters, demo_data):
    calls = [0]

    class NanCandidates(train.LossProbe):  # the controller's micro-dev probe only (val loss stays real)
        def __call__(self, model):
            calls[0] += 1
            loss = super().__call__(model)
            return float("nan") if calls[0] % 4 in (2, 3, 0) else loss  # every probe is NaN, the base loss is not

    monkeypatch.setattr(controller_run, "LossProbe", NanCandidates)
    out = tmp_path / "s"
    # best_trial has no finite trial to read, so ratio.json falls back to the committed ratio and says so (the
    # authors' commit rule, which measures the base loss every round)
    assert cli(*search_args(tiny_model, tiny_adapters, demo_data, out, "--controller", "reinforce",
                            "--ratio-rule", "best_trial")) == 0
    hist = read_jsonl(out / "history.jsonl")
    assert len(hist) == 3
    for rec in hist:
        assert rec["losses"] == [None, None, None] and rec["rewards"] == [None, None, None]
        assert rec["committed"] is None and rec["p_next"] == rec["p"]
    ratio = json.loads((out / "ratio.json").read_text())
    assert ratio["rule"] == "committed" and ratio["prune_ratio"] == 0.4

    # p following mu (no reference pass: every micro-dev probe is a candidate's): nothing moves mu, so p stays
    class NanProbes(train.LossProbe):
        def __call__(self, model):
            return float("nan")

    monkeypatch.setattr(controller_run, "LossProbe", NanProbes)
    out = tmp_path / "d"
    assert cli(*search_args(tiny_model, tiny_adapters, demo_data, out, "--commit-toward", "policy_mean",
                            "--probe-examples", 2)) == 0
    for rec in read_jsonl(out / "history.jsonl"):
        assert rec["losses"] == [None, None, None] and rec["base_loss"] is None
        assert rec["mu_next"] == rec["mu"] == 0.4 and rec["p_next"] == rec["p"] == 0.4
    assert json.loads((out / "ratio.json").read_text())["prune_ratio"] == 0.4


@pytest.mark.slow
def test_killed_at_random_times_leaves_only_whole_files(tmp_path, tiny_model, tiny_adapters, demo_data):
    rng = random.Random(7)
    exe = Path(sys.executable).with_name("grasp-lora")
    for i in range(4):
        out = tmp_path / f"k{i}"
        p = subprocess.Popen([str(exe), *map(str, search_args(tiny_model, tiny_adapters, demo_data, out,
                                                               "--max-steps", 40))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 6.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in out.rglob("*"):
            if f.name.endswith(TMP_SUFFIX):
                assert f.name.startswith("."), f  # a killed writer's temp file is hidden, never an output
                continue
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".jsonl":
                text = f.read_text()
                assert text == "" or text.endswith("\n")
                [json.loads(line) for line in text.splitlines()]
            elif f.suffix == ".pt":
                torch.load(f, weights_only=False)
        r = run_cli(*search_args(tiny_model, tiny_adapters, demo_data, out, "--max-steps", 40, "--resume"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert not list(out.rglob(f"*{TMP_SUFFIX}"))  # the next command clears a killed writer's temp files


@pytest.mark.slow
def test_second_writer_refused_and_stale_lock_taken_over(tmp_path, tiny_model, tiny_adapters, demo_data):
    out = tmp_path / "locked"
    exe = Path(sys.executable).with_name("grasp-lora")
    first = subprocess.Popen([str(exe), *map(str, search_args(tiny_model, tiny_adapters, demo_data, out,
                                                               "--max-steps", 200))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if (out / LOCK_NAME).is_file():
                break
            time.sleep(0.05)
        r = run_cli(*search_args(tiny_model, tiny_adapters, demo_data, out))
        assert r.returncode == 2
        assert f"pid {first.pid}" in r.stderr and "grasp-lora search" in r.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).is_file()  # the killed holder could not remove it: stale now
    assert cli(*search_args(tiny_model, tiny_adapters, demo_data, out)) == 0
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------ bad input across commands

def check_one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def bad_adapters(tmp_path, tiny_model, tiny_adapters):
    import shutil

    def copy(name):
        d = tmp_path / name
        shutil.copytree(tiny_adapters["ar"], d)
        return d

    corrupt = copy("corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    missing = copy("missing_field")
    cfg = json.loads((missing / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (missing / "adapter_config.json").write_text(json.dumps(cfg))
    no_weights = copy("no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    return {"corrupt": corrupt, "missing_field": missing, "no_weights": no_weights}


@pytest.mark.parametrize("case,needles", [
    ("corrupt", ["corrupt/adapter_model.safetensors", "cannot read it"]),
    ("missing_field", ["adapter_config.json", "missing field 'lora_alpha'"]),
    ("no_weights", ["adapter_model.safetensors is missing"]),
    ("other_base", ["different base models"]),
    ("other_rank_paper", ["equal ranks"]),
    ("other_targets", ["same modules"]),
    ("not_an_adapter", ["not a PEFT adapter folder"]),
])
def test_bad_adapters(tmp_path, capsys, case, needles, tiny_model, tiny_qwen, tiny_adapters, bad_adapters, demo_data):
    second = {"other_base": lambda: make_adapter(tiny_qwen, tmp_path / "qwen"),
              "other_rank_paper": lambda: tiny_adapters["ar_r4"], "other_targets": lambda: tiny_adapters["ar_q"],
              "not_an_adapter": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty"}.get(case, lambda: bad_adapters.get(case))()
    extra = ["--merge-form", "paper"] if case == "other_rank_paper" else []
    rc = cli("finetune-merged", "--model", tiny_model, "--adapters", tiny_adapters["en"], second, "--data",
             demo_data["ar"], "--lang", "ar", "--out", tmp_path / "out", "--prune-ratio", 0, *extra)
    check_one_line_error(capsys, rc, *needles)
    assert not (tmp_path / "out").exists()


def test_empty_micro_dev(tmp_path, capsys, tiny_model, tiny_adapters):
    from grasp_lora.demo import corpus_file

    data = tmp_path / "d"
    assert cli("data", "prepare", "--lang", "ar", "--input", corpus_file("qa", "ar"), "--out", data, "--sizes", "8,4,0,4") == 0
    capsys.readouterr()
    rc = cli("search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data", data,
             "--lang", "ar", "--out", tmp_path / "out")
    check_one_line_error(capsys, rc, "micro_dev.jsonl", "empty split")


@pytest.mark.parametrize("extra,needle", [
    (["--p-min", "0.7", "--p-max", "0.2"], "p_min <= p_init <= p_max"),
    (["--group-size", "0"], "--group-size 0"),
    (["--round-every", "0"], "--round-every 0"),
    (["--p-max", "1.5"], "p_max < 1"),
])
def test_bad_controller_options(tmp_path, capsys, extra, needle, tiny_model, tiny_adapters, demo_data):
    rc = cli(*search_args(tiny_model, tiny_adapters, demo_data, tmp_path / "out", *extra))
    check_one_line_error(capsys, rc, needle)
    assert not (tmp_path / "out").exists()


def test_bad_prune_ratio(tmp_path, capsys, tiny_model, tiny_adapters, demo_data):
    rc = cli("finetune-merged", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
             "--data", demo_data["ar"], "--lang", "ar", "--prune-ratio", "1.2", "--out", tmp_path / "out")
    check_one_line_error(capsys, rc, "--prune-ratio 1.2")


def test_predictions_that_do_not_match_the_data(tmp_path, capsys, demo_data):
    from grasp_lora.data.splits import load_split

    test = load_split(demo_data["ar"], "test", "qa")
    rows = [{"index": i, "prediction": "x", "references": r["answers"]} for i, r in enumerate(test)]
    rows[2]["references"] = ["something else"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    rc = cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--lang", "ar", "--data", demo_data["ar"],
             "--out", tmp_path / "m.json", "--bertscore-model", "none")
    check_one_line_error(capsys, rc, "p.jsonl", "line 3", "do not match")
    rows[2]["references"] = test[2]["answers"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + rows[:1]))
    rc = cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--lang", "ar", "--data", demo_data["ar"],
             "--out", tmp_path / "m.json", "--bertscore-model", "none")
    check_one_line_error(capsys, rc, f"{len(test) + 1} predictions", f"{len(test)} records")
    (tmp_path / "p.jsonl").write_text('{"prediction": 3}\n')
    rc = cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--lang", "ar", "--out", tmp_path / "m.json")
    check_one_line_error(capsys, rc, "line 1", "'prediction'")


def test_output_folder_not_writable(tmp_path, capsys, tiny_model, demo_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", blocker / "out")
    check_one_line_error(capsys, rc, "a-file/out", "cannot create it")


def test_disk_full_keeps_earlier_outputs(tmp_path, capsys, monkeypatch):
    import errno

    import grasp_lora.files as gio
    from grasp_lora.demo import corpus_file

    out = tmp_path / "d"
    assert cli("data", "prepare", "--lang", "ar", "--input", corpus_file("qa", "ar"), "--out", out) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gio.os, "fsync", full)
    rc = cli("data", "prepare", "--lang", "ar", "--input", corpus_file("qa", "ar"), "--out", out, "--seed", "1")
    check_one_line_error(capsys, rc, "No space left on device")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # untouched, no temp files left


def test_bad_input_leaves_earlier_outputs_untouched(tmp_path, capsys):
    from grasp_lora.demo import corpus_file

    out = tmp_path / "d"
    assert cli("data", "prepare", "--lang", "ar", "--input", corpus_file("qa", "ar"), "--out", out) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (tmp_path / "bad.json").write_text("{")
    check_one_line_error(capsys, cli("data", "prepare", "--lang", "ar", "--input", tmp_path / "bad.json", "--out", out))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_outputs_are_created_with_the_users_umask(tmp_path, tiny_model, demo_data):
    """Atomic writes go through mkstemp (mode 0600) and safetensors writes 0600; every output has the mode
    open() would give (PEFT: 0644)."""
    from grasp_lora.files import write_json

    out = tmp_path / "adapter"
    old = os.umask(0o022)
    try:
        assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
                   "--max-steps", 1) == 0
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir() if f.is_file()}
    assert set(modes.values()) == {0o644}, modes

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o002)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o664


def test_users_temp_files_survive_and_stale_ones_of_ours_go(tmp_path, capsys, tiny_model, demo_data):
    from grasp_lora.files import TMP_SUFFIX

    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / ".draft.tmp").write_text("mine")
    (out / ".cache.tmp").mkdir()
    (out / f".checkpoint.pt.x1{TMP_SUFFIX}").write_text("a killed writer's")
    # a failing command and a succeeding one: the user's files stay, only our own stale temp file goes
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "klingon", "--out", out) == 2
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
               "--max-steps", 1) == 0
    assert (out / "sub" / ".draft.tmp").read_text() == "mine" and (out / ".cache.tmp").is_dir()
    assert not list(out.glob(f"*{TMP_SUFFIX}"))


OVERLAPS = {
    "prepare_into_its_input_folder": lambda d, m, a: ["data", "prepare", "--lang", "ar", "--input",
                                                      d / "train.jsonl", "--out", d],
    "evaluate_over_predictions": lambda d, m, a: ["evaluate", "--predictions", d / "train.jsonl", "--lang", "ar",
                                                  "--out", d / "train.jsonl"],
    "ties_over_an_adapter": lambda d, m, a: ["ties", "--model", m, "--adapters", a[0], a[1], "--out", a[1]],
    "finetune_inside_an_adapter": lambda d, m, a: ["finetune-merged", "--model", m, "--data", d, "--lang", "ar",
                                                   "--adapters", a[0], a[1], "--out", a[0] / "run", "--prune-ratio", 0],
    "search_containing_the_data": lambda d, m, a: ["search", "--model", m, "--data", d, "--lang", "ar",
                                                   "--adapters", a[0], a[1], "--out", d.parent],
    "report_over_the_experiment": lambda d, m, a: ["report", d, "--out", d],
}


@pytest.mark.parametrize("case", sorted(OVERLAPS))
def test_out_apart_from_every_input(tmp_path, capsys, tiny_model, tiny_adapters, demo_data, case):
    import shutil

    data = tmp_path / "inputs" / "data"
    shutil.copytree(demo_data["ar"], data)
    ads = [shutil.copytree(tiny_adapters[n], tmp_path / "inputs" / n) for n in ("en", "ar")]
    before = {p: p.read_bytes() for p in (tmp_path / "inputs").rglob("*") if p.is_file()}
    assert cli(*OVERLAPS[case](data, tiny_model, ads)) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "the input" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "inputs").rglob("*") if p.is_file()} == before


def _hold_lock(folder: str, log: str, barrier) -> None:
    """One contender: wait for all, try the lock; while held, no other holder may exist (O_EXCL sentinel)."""
    from grasp_lora.errors import UserError
    from grasp_lora.files import output_lock

    barrier.wait()
    try:
        with output_lock(folder, "race"):
            fd = os.open(os.path.join(folder, "holder"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if two hold
            time.sleep(0.05)
            os.close(fd)
            os.unlink(os.path.join(folder, "holder"))
            outcome = "held"
    except UserError:
        outcome = "refused"
    except FileExistsError:
        outcome = "TWO HOLDERS"
    with open(log, "a") as f:
        f.write(outcome + "\n")


@pytest.mark.parametrize("stale", ["garbled", "empty", "dead_pid"])
def test_lock_race_one_holder_at_a_time(tmp_path, stale):
    """24 processes start at once on a folder whose lock file was left behind (garbled, empty, or naming a dead
    process): at every moment at most one holds it, and every one either holds it or is refused in one line."""
    import multiprocessing

    from grasp_lora.files import LOCK_NAME

    folder, log = tmp_path / "o", tmp_path / "log"
    folder.mkdir()
    (folder / LOCK_NAME).write_text({"garbled": "{not json", "empty": "",
                                     "dead_pid": '{"pid": 999999, "host": "x", "command": "c"}'}[stale])
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(24)
    procs = [ctx.Process(target=_hold_lock, args=(str(folder), str(log), barrier)) for _ in range(24)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = log.read_text().split()
    assert len(outcomes) == 24 and "TWO HOLDERS" not in outcomes and "held" in outcomes


def test_lock_covers_folders_inside_and_around(tmp_path, capsys, tiny_model, demo_data):
    """While a command holds RUN, another may not write RUN/adapters/source (a running experiment's stage), and
    while one holds RUN/x, none may take RUN."""
    from grasp_lora.files import output_lock

    run = tmp_path / "run"
    with output_lock(run, "grasp-lora run"):
        rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar",
                 "--out", run / "adapters" / "source", "--max-steps", 1)
        assert rc == 2 and "is being written by pid" in capsys.readouterr().err
    with output_lock(run / "x", "grasp-lora train-adapter"):
        with pytest.raises(UserError, match="is being written by pid"):
            with output_lock(run, "grasp-lora run"):
                pass
    with output_lock(run, "grasp-lora run"):  # both released: free again
        pass


def test_no_write_follows_a_symlink_out_of_out(tmp_path, capsys, tiny_model, demo_data):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "o"
    out.mkdir()
    for name in ("train_log.jsonl", "val_log.jsonl", "config.yaml", "train_summary.json"):
        (out / name).symlink_to(outside / name)  # dangling links planted in --out
    cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
        "--max-steps", 2, "--grad-accum", 1)
    assert not any(outside.iterdir())  # nothing was written through a link
    (out / "adapter").symlink_to(outside, target_is_directory=True)  # a linked folder: refused up front
    capsys.readouterr()
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
               "--max-steps", 1) == 2
    assert "symbolic link to a folder" in capsys.readouterr().err and not any(outside.iterdir())


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a finished result in OUT (not the unfinished run's folder), by relative path."""
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*"))
            if f.is_file() and RUN_NAME not in f.parts and f.name != LOCK_NAME}


@pytest.mark.parametrize("what", ["checkpoint", "adapter"])
def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_good_file(tmp_path, capsys, monkeypatch, what,
                                                                           tiny_model, tiny_adapters, demo_data):
    """ENOSPC inside torch.save (checkpoint) or the safetensors write (adapter): exit 2, one line, and the file
    from the earlier save is still there, whole."""
    import safetensors.torch

    out = tmp_path / "a"
    args = ["finetune-merged", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
            "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--grad-accum", 1, "--checkpoint-every", 1,
            "--prune-ratio", 0]
    assert cli(*args, "--max-steps", 2) == 0
    name = "checkpoint.pt" if what == "checkpoint" else "adapter/adapter_model.safetensors"
    before = snapshot(out)
    if what == "checkpoint":
        def full(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")
        monkeypatch.setattr(torch, "save", full)
    else:
        def full(*a, **k):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(safetensors.torch, "save_file", full)
    capsys.readouterr()
    assert cli(*args, "--max-steps", 4, "--seed", 7) == 2  # another run into the same folder
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("grasp-lora: error:")]
    assert len(errors) == 1 and f"{name}: cannot write it" in errors[0] and "Traceback" not in err, err
    assert snapshot(out) == before  # the whole previous result, not a mix of old files and new logs
