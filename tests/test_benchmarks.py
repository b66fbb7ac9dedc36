"""The benchmarks are code too: bench_speedup end to end on the tiny model, and its kept state continues it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def bench_speedup(*args) -> str:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_speedup.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_bench_speedup_runs_and_its_kept_state_continues_it(tiny_model, tmp_path):
    out, keep = tmp_path / "bench", tmp_path / "kept"
    args = ["--model", tiny_model, "--out", out, "--no-asha", "--rounds", 2, "--set", "epochs=1",
            "--set", "target_sizes=8,4,4,4", "--set", "source_sizes=8,4,0,4"]
    first = bench_speedup(*args)
    report = first[first.index("grid val loss"):]
    rows = {line.split()[0]: line.split() for line in report.splitlines()
            if line.split() and line.split()[0] in ("grid", "grasp", "one_run")}
    assert set(rows) == {"grid", "grasp", "one_run"}
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


def stages_run(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.strip().startswith("stage ")]
