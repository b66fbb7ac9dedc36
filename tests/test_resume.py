"""Killed with SIGKILL at random micro-batches and resumed: the same logs, history, ratio and weights as an
uninterrupted run with the same seed."""

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli
from grasp_lora.files import RUN_NAME, read_jsonl

WORKER = Path(__file__).with_name("kill_worker.py")
KILL_POINTS = random.Random(2026).sample(range(3, 22), 3)  # micro-batch calls; 2 per step below


def killed(kill_at: int, *args) -> None:
    r = subprocess.run([sys.executable, str(WORKER), str(kill_at), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


def without_time(rows):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def command(kind, tiny_model, tiny_adapters, demo_data, out):
    common = ["--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out, "--max-steps", 10,
              "--grad-accum", 2, "--checkpoint-every", 1, "--lr", "1e-3", "--epochs", 3, "--patience", 0]
    ads = ["--adapters", tiny_adapters["en"], tiny_adapters["ar"]]
    probing = [*ads, "--round-every", 2, "--controller", "sliced"]
    return {"search": ["search", *common, *probing],
            "search-reset-train": ["search", *common, *probing, "--reset", "train"],
            "search-fit-lookahead": ["search", *common, *ads, "--round-every", 2, "--controller", "fit",
                                     "--lookahead-steps", 2, "--trace-ratios", 0.3],
            "search-taylor": ["search", *common, *probing, "--probe", "taylor"],
            "search-pair": ["search", *common, *ads, "--round-every", 2, "--controller", "pair", "--hold-rounds", 1],
            "search-pair-online": ["search", *common, *ads, "--round-every", 3, "--controller", "pair",
                                   "--hold-rounds", 1, "--probe-loss", "online"],
            "finetune-merged": ["finetune-merged", *common, *ads, "--prune-ratio", 0.5, "--criterion", "sensitivity"],
            "train-adapter": ["train-adapter", *common]}[kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["search", "search-reset-train", "search-fit-lookahead", "search-taylor",
                                  "search-pair", "search-pair-online", "finetune-merged", "train-adapter"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model, tiny_adapters, demo_data, kind):
    ref = tmp_path / "ref"
    assert cli(*command(kind, tiny_model, tiny_adapters, demo_data, ref)) == 0
    points = KILL_POINTS if kind == "search" else KILL_POINTS[:1]
    for kill_at in points:
        out = tmp_path / f"killed{kill_at}"
        killed(kill_at, *command(kind, tiny_model, tiny_adapters, demo_data, out))
        assert (out / RUN_NAME / "checkpoint.pt").is_file() and not (out / "checkpoint.pt").exists()
        assert cli(*command(kind, tiny_model, tiny_adapters, demo_data, out), "--resume") == 0
        searching = kind.startswith("search")
        for log in ("train_log.jsonl", "val_log.jsonl") + (("history.jsonl",) if searching else ()):
            assert without_time(read_jsonl(out / log)) == without_time(read_jsonl(ref / log)), (kill_at, log)
        if searching:
            a, b = (json.loads((d / "ratio.json").read_text()) for d in (out, ref))
            assert without_time([a]) == without_time([b])
        else:
            sub = "adapter" if kind == "finetune-merged" else "."
            a, b = (load_file(d / sub / "adapter_model.safetensors") for d in (out, ref))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kill_at


def test_resume_without_checkpoint_starts_fresh(tmp_path, tiny_model, tiny_adapters, demo_data):
    out = tmp_path / "fresh"
    assert cli(*command("train-adapter", tiny_model, tiny_adapters, demo_data, out), "--resume") == 0
    assert len(read_jsonl(out / "train_log.jsonl")) == 10
