"""A report rendered from real runs of the tiny model: generate, evaluate, search, final runs."""

import json
import time

import pytest

from conftest import cli
from grasp_lora.report import write_run_info


def timed(fn):
    start = time.time()
    assert fn() == 0
    return time.time() - start


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_model, tiny_adapters, demo_data):
    root = tmp_path_factory.mktemp("experiment")
    common = ["--model", tiny_model, "--data", demo_data["ar"], "--task", "qa", "--lang", "ar"]
    train = ["--max-steps", 2, "--grad-accum", 2]
    ads = ["--adapters", tiny_adapters["en"], tiny_adapters["ar"]]

    def evaluated(folder, method, seconds, adapter=None, seed=None, ratio=None, val_loss=None):
        extra = ["--adapter", adapter] if adapter else []
        assert cli("generate", *common, "--out", folder / "predictions.jsonl", "--max-new-tokens", 6, *extra) == 0
        assert cli("evaluate", "--predictions", folder / "predictions.jsonl", "--task", "qa", "--lang", "ar",
                   "--out", folder / "metrics.json", "--bertscore-model", "none") == 0
        write_run_info(folder, method, "qa", "ar", seconds, seed, ratio, val_loss)

    evaluated(root / "zero_shot", "zero_shot", 0.0)
    evaluated(root / "target_lora", "target_lora", 1.0, adapter=tiny_adapters["ar"])
    s = timed(lambda: cli("search", *common, *ads, "--out", root / "grasp_search", *train, "--round-every", 1))
    write_run_info(root / "grasp_search", "grasp_search", "qa", "ar", s)
    p_star = json.loads((root / "grasp_search" / "ratio.json").read_text())["prune_ratio"]
    for seed in (42, 1337):
        d = root / f"grasp/seed{seed}"
        s = timed(lambda: cli("finetune-merged", *common, *ads, "--prune-ratio", p_star, "--seed", seed, "--out", d, *train))
        evaluated(d, "grasp", s, adapter=d / "adapter", seed=seed, ratio=p_star)
    for ratio in (0.2, 0.6):
        d = root / f"grid/p{ratio}"
        s = timed(lambda: cli("finetune-merged", *common, *ads, "--prune-ratio", ratio, "--out", d, *train))
        val = json.loads((d / "train_summary.json").read_text())["best_val_loss"]
        evaluated(d, "alm_grid", s, adapter=d / "adapter", seed=42, ratio=ratio, val_loss=val)
    return root


def test_report_renders(tmp_path, experiment):
    out = tmp_path / "report"
    assert cli("report", experiment, "--out", out) == 0
    md = (out / "results.md").read_text()
    for label in ("Zero shot", "LoRA (target)", "Adaptive LoRA Merge + pruning (grid)", "GRASP LoRA Merge + pruning"):
        assert label in md
    assert "86.18" in md and "41.00" in md  # the paper's GRASP MLQA-ar row beside ours
    grid_line = next(l for l in md.splitlines() if l.startswith("| Adaptive LoRA Merge + pruning"))
    vals = {p: json.loads((experiment / f"grid/p{p}/run.json").read_text())["val_loss"] for p in (0.2, 0.6)}
    best = min(vals, key=vals.get)
    assert f"| 1 | {100 * best:.2f} |" in grid_line  # the grid's row is its best-val ratio
    grasp_line = next(l for l in md.splitlines() if l.startswith("| GRASP"))
    assert "±" in grasp_line and "| 2 |" in grasp_line  # mean ± std over two seeds
    assert "n/a*" in md and "BERTScore unavailable" in md
    ratio = json.loads((experiment / "grasp_search" / "ratio.json").read_text())
    chosen = md.split("## How p* was chosen")[1]
    assert f"| {ratio['prune_ratio']:.3f} | {ratio['rule']} | {ratio['rounds']} |" in chosen
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("task,lang,method") and len(csv_text.splitlines()) == 5
    runtime = (out / "runtime.md").read_text()
    assert "Adaptive LoRA (grid search)" in runtime and "GRASP LoRA" in runtime and "×" in runtime
    assert "| 3 |" in runtime  # GRASP: the controller run + two final runs
    share = ratio["probe_seconds"] / (ratio["seconds"] - ratio["probe_seconds"])  # the method's own cost, printed
    assert (f"{ratio['probe_seconds']:.1f} s of probes in {ratio['seconds']:.1f} s (probe s / training s "
            f"{share:.2f})") in runtime
    from matplotlib.image import imread

    for png in ("controller.png", "metrics.png"):
        img = imread(out / png)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0


def test_report_without_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli("report", tmp_path / "empty", "--out", tmp_path / "r") == 2
    assert "no run found" in capsys.readouterr().err


def test_report_on_the_standalone_commands_folders(tmp_path, monkeypatch, tiny_model, demo_data):
    """The README's one-screen workflow (train-adapter x2, search, finetune-merged at the learned ratio and at a
    fixed one, generate, evaluate), with relative paths and no --model after the adapters: `report` on the
    folders puts each evaluated run on its row and times GRASP as its two runs."""
    monkeypatch.chdir(tmp_path)
    ar, small = demo_data["ar"], ["--max-steps", 2, "--grad-accum", 1]
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["en"], "--lang", "en", "--out",
               "adapters/en", *small) == 0
    assert cli("train-adapter", "--model", tiny_model, "--data", ar, "--lang", "ar", "--out", "adapters/ar", *small) == 0
    merged = ["--adapters", "adapters/en", "adapters/ar", "--data", ar, "--lang", "ar", *small]
    assert cli("search", *merged, "--round-every", 1, "--out", "search") == 0
    assert cli("finetune-merged", *merged, "--prune-ratio", "search/ratio.json", "--out", "final") == 0
    assert cli("finetune-merged", *merged, "--prune-ratio", 0.5, "--out", "fixed") == 0
    scores = {}
    for name, adapter in (("zero", None), ("target", "adapters/ar"), ("final", "final/adapter"),
                          ("fixed", "fixed/adapter")):
        with_adapter = ["--adapter", adapter] if adapter else ["--model", tiny_model]
        assert cli("generate", *with_adapter, "--data", ar, "--lang", "ar", "--max-new-tokens", 4, "--out",
                   f"eval/{name}/predictions.jsonl") == 0
        assert cli("evaluate", "--predictions", f"eval/{name}/predictions.jsonl", "--lang", "ar", "--out",
                   f"eval/{name}/metrics.json", "--bertscore-model", "none") == 0
        scores[name] = json.loads((tmp_path / f"eval/{name}/metrics.json").read_text())["f1"]
    assert cli("report", ".", "--out", "report") == 0
    md = (tmp_path / "report" / "results.md").read_text()
    p_star = json.loads((tmp_path / "search" / "ratio.json").read_text())["prune_ratio"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    expected = {"Zero shot": ("zero", "—"), "LoRA (target)": ("target", "—"),
                "Adaptive LoRA Merge + pruning (grid)": ("fixed", "50.00"),
                "GRASP LoRA Merge + pruning": ("final", f"{100 * p_star:.2f}")}
    for label, (name, pct) in expected.items():
        cells = rows[label].split(" | ")
        assert cells[1:3] == ["1", pct] and cells[5] == f"{scores[name]:.2f}", rows[label]
    runtime = (tmp_path / "report" / "runtime.md").read_text()
    grasp = next(line for line in runtime.splitlines() if line.startswith("| GRASP"))
    assert grasp.split(" | ")[3] == "2"  # the controller run and the final run
    ratio = json.loads((tmp_path / "search" / "ratio.json").read_text())
    chosen = next(line for line in md.splitlines() if line.startswith("| search |"))
    cost = ratio["probe_seconds"] / (ratio["seconds"] - ratio["probe_seconds"])
    assert chosen.split(" | ")[5] == f"{cost:.2f}"  # probe seconds / training seconds of the controller run


def test_metrics_plot_shows_an_unavailable_metric_as_missing(tmp_path, monkeypatch):
    """metrics.png: a metric that could not be computed (BERTScore without its encoder) has no bar, not a bar at
    0, and is labelled n/a; the others are drawn at their values."""
    from grasp_lora import report

    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: figures.append(fig))
    row = lambda method, em, bs: {"task": "qa", "lang": "ar", "method": method, "label": method, "bertscore_f1": bs,
                                  "bertscore_f1_std": None, "exact_match": em, "exact_match_std": 1.5, "f1": em + 5,
                                  "f1_std": None}
    report.plot_metrics([row("alm", 40.0, None), row("grasp", 45.0, 80.0)], tmp_path / "metrics.png")
    (ax,) = figures[0].axes
    heights = [[b.get_height() for b in c] for c in ax.containers if hasattr(c, "patches")]
    assert heights[0][1:] == [40.0, 45.0] and heights[0][0] != heights[0][0]  # NaN: no bar drawn
    assert heights[1] == [80.0, 45.0, 50.0]
    labels = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(labels) == 1 and labels[0].get_position()[0] == pytest.approx(0.0)
