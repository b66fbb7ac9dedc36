"""Two CPU processes under torchrun (gloo): rank 0 decides, both end with identical masks and weights,
and the result equals a single-process run of the same steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli
from grasp_lora.files import read_jsonl


@pytest.mark.slow
def test_two_processes_agree_and_match_single_process(tmp_path, tiny_model, tiny_adapters, demo_data):
    out = tmp_path / "dist"
    worker = Path(__file__).with_name("dist_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                        str(worker), str(tiny_model), str(tiny_adapters["en"]), str(tiny_adapters["ar"]),
                        str(demo_data["ar"]), str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert a.keys() == b.keys() and len(a) == 32
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not a[k].all() for k in a if k.startswith("mask:"))  # pruning happened
    history = read_jsonl(out / "history.jsonl")
    assert len(history) == 2  # only rank 0 wrote it

    single = tmp_path / "single"
    assert cli("search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
               "--data", demo_data["ar"], "--lang", "ar", "--out", single, "--max-steps", 4, "--grad-accum", 4,
               "--round-every", 2, "--lr", "1e-3", "--device", "cpu", "--controller", "sliced") == 0
    single_hist = read_jsonl(single / "history.jsonl")
    assert len(history) == len(single_hist)
    for h, s in zip(history, single_hist):  # equal up to the order of the gradient sum (p follows mu by default)
        assert (h["committed"] is None) == (s["committed"] is None)
        assert h["committed"] is None or abs(h["committed"] - s["committed"]) < 1e-6
        assert abs(h["mu_next"] - s["mu_next"]) < 1e-6
        assert all(abs(x - y) < 1e-6 for x, y in zip(h["candidates"], s["candidates"]))
    assert json.loads((out / "ratio.json").read_text())["rounds"] == 2
