"""Tables and plots (SPEC §1.11): the paper's layout with our numbers beside the paper's.

Input contract: every evaluated or timed run folder of `run` holds `run.json` ({method, task, lang, seed,
prune_ratio, seconds}) and, when evaluated, `metrics.json` from `grasp-lora evaluate`; the standalone commands'
folders are traced to their rows by standalone.py. Controller runs hold `history.jsonl`. `report` finds them
anywhere under the folders it is given.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .config import ReportConfig, save_config
from .errors import UserError
from .files import atomic_path, read_json, read_jsonl, write_json, write_text
from .methods import METHODS
from .metrics import METRIC_LABELS
from .standalone import learned_ratios, standalone_runs

# Row order and labels of the paper's tables.
# What each runtime row counts: the grid's runs, and GRASP's controller run plus its final runs.
RUNTIME_METHODS = {"alm_grid": ("alm_grid",), "grasp": ("grasp_search", "grasp"), "grasp_one_run": ("grasp_one_run",)}
RUNTIME_LABELS = {"alm_grid": "Adaptive LoRA (grid search)", "grasp": "GRASP LoRA (controller + final runs)",
                  "grasp_one_run": "GRASP LoRA (one run: the controller run's export)"}
METRIC_COLUMNS = {"summarization": ("bertscore_f1", "bleu", "rouge_l"), "qa": ("bertscore_f1", "exact_match", "f1")}

# Hassan & Chen 2026, Llama-3-8B-Instruct: (task, lang, method) -> (prune %, BERTScore-F1, BLEU-4 | EM, ROUGE-L | F1)
PAPER = {
    ("summarization", "ar", "zero_shot"): (None, 69.08, 2.05, 10.60),
    ("summarization", "ar", "target_lora"): (None, 74.33, 4.46, 18.17),
    ("summarization", "ar", "ties"): (None, 69.59, 2.19, 11.99),
    ("summarization", "ar", "lorahub"): (None, 73.76, 5.10, 16.85),
    ("summarization", "ar", "alm"): (None, 74.32, 4.46, 18.15),
    ("summarization", "ar", "alm_grid"): (70, 74.96, 6.18, 20.19),
    ("summarization", "ar", "grasp"): (67.49, 75.84, 7.93, 22.32),
    ("qa", "ar", "zero_shot"): (None, 65.71, 0.00, 11.00),
    ("qa", "ar", "target_lora"): (None, 84.07, 29.00, 43.84),
    ("qa", "ar", "ties"): (None, 67.19, 2.00, 13.28),
    ("qa", "ar", "lorahub"): (None, 83.46, 29.00, 42.79),
    ("qa", "ar", "alm"): (None, 84.80, 36.00, 47.77),
    ("qa", "ar", "alm_grid"): (40, 85.62, 38.33, 50.29),
    ("qa", "ar", "grasp"): (48.97, 86.18, 41.00, 52.51),
    ("summarization", "zh", "zero_shot"): (None, 26.48, 9.39, 20.87),
    ("summarization", "zh", "target_lora"): (None, 31.09, 13.73, 28.15),
    ("summarization", "zh", "ties"): (None, 26.23, 9.37, 21.30),
    ("summarization", "zh", "lorahub"): (None, 26.42, 10.35, 24.16),
    ("summarization", "zh", "alm"): (None, 32.01, 14.33, 29.14),
    ("summarization", "zh", "alm_grid"): (50, 32.00, 14.81, 29.50),
    ("summarization", "zh", "grasp"): (56.94, 33.62, 16.54, 30.95),
    ("qa", "zh", "zero_shot"): (None, 7.12, 0.00, 6.95),
    ("qa", "zh", "target_lora"): (None, 64.15, 42.00, 47.17),
    ("qa", "zh", "ties"): (None, 11.28, 0.00, 13.51),
    ("qa", "zh", "lorahub"): (None, 65.11, 44.00, 48.10),
    ("qa", "zh", "alm"): (None, 67.45, 46.00, 49.63),
    ("qa", "zh", "alm_grid"): (10, 69.30, 46.50, 50.93),
    ("qa", "zh", "grasp"): (23.73, 71.28, 48.00, 51.60),
}
# (task, lang) -> ((grid runs, grid minutes), (GRASP runs, GRASP minutes))
PAPER_RUNTIME = {
    ("summarization", "ar"): ((8, 242), (2, 62)), ("qa", "ar"): ((8, 160), (2, 25)),
    ("summarization", "zh"): ((8, 272), (2, 48)), ("qa", "zh"): ((8, 164), (2, 22)),
}


def write_run_info(folder: str | Path, method: str, task: str, lang: str, seconds: float,
                   seed: int | None = None, prune_ratio: float | None = None, val_loss: float | None = None) -> None:
    """The record `report` reads for one run (written by the runner beside each run's outputs)."""
    write_json(Path(folder) / "run.json", {"method": method, "task": task, "lang": lang, "seed": seed,
                                           "prune_ratio": prune_ratio, "seconds": seconds, "val_loss": val_loss})


def grid_winner(val_losses: dict[float, list[float | None]]) -> float | None:
    """The grid's best ratio: the lowest mean val loss over seeds (SPEC §1.10). A ratio with a run without a
    finite val loss is out; None when no ratio is left."""
    scored = {p: float(np.mean(v)) for p, v in val_losses.items()
              if v and all(x is not None and math.isfinite(x) for x in v)}
    return min(scored, key=scored.get) if scored else None


def grid_row(runs: list[dict]) -> list[dict]:
    """The grid's row in the table: the runs of its winning ratio (all runs when none can be chosen)."""
    by_ratio: dict[float, list[dict]] = defaultdict(list)
    for r in runs:
        by_ratio[r["prune_ratio"]].append(r)
    best = grid_winner({p: [r.get("val_loss") for r in rs] for p, rs in by_ratio.items()})
    return runs if best is None else by_ratio[best]


Histories = list[tuple[Path, list[dict], dict | None]]  # history.jsonl, its records, the ratio.json beside it


REPORT_FIX = "repair it, rerun what wrote it, or leave its folder out of the report"


def controller_history(path: Path) -> tuple[Path, list[dict], dict | None]:
    """A controller run's history.jsonl and the ratio.json beside it, which must agree on the rounds run (a log
    cut at a line boundary reads as a shorter valid one)."""
    hist = read_jsonl(path, REPORT_FIX)
    ratio_file = path.with_name("ratio.json")
    ratio = read_json(ratio_file, REPORT_FIX) if ratio_file.is_file() else None
    if ratio is not None and ratio.get("rounds", len(hist)) != len(hist):
        raise UserError(f"{path}: {len(hist)} rounds recorded, but {ratio_file.name} says {ratio['rounds']}; the log "
                        f"is incomplete: {REPORT_FIX}")
    return path, hist, ratio


def collect(folders: list[str]) -> tuple[list[dict], Histories]:
    """The runs under `folders`: `run`'s (run.json) and the standalone commands' (standalone.py), and every
    controller history."""
    runs, histories = [], []
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: no such folder")
    learned = learned_ratios([Path(f) for f in folders])
    for folder in folders:
        root = Path(folder)
        runs += standalone_runs(root, learned)
        for info in sorted(root.rglob("run.json")):
            run = read_json(info, REPORT_FIX)
            metrics = info.with_name("metrics.json")
            run["metrics"] = read_json(metrics, REPORT_FIX) if metrics.is_file() else None
            run["folder"] = str(info.parent)
            ratio = info.with_name("ratio.json")
            if run.get("method") == "grasp_search" and ratio.is_file():  # what the runtime table says of its probes
                r = read_json(ratio, REPORT_FIX)
                if r.get("probe_seconds") is not None and r.get("seconds"):
                    run["probes"] = (r["probe_seconds"], r["seconds"])
            runs.append(run)
        for h in sorted(root.rglob("history.jsonl")):
            histories.append(controller_history(h))
    if not runs:
        raise UserError(f"{', '.join(folders)}: no run found (run.json, metrics.json or a command's config.yaml); "
                        "point report at the folders of `run` or of the standalone commands")
    return runs, histories


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def result_rows(runs: list[dict]) -> list[dict]:
    """One row per (task, lang, method) of evaluated runs, with mean ± std over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if r["metrics"] is not None:
            groups[(r["task"], r["lang"], r["method"])].append(r)
    order = list(METHODS)
    rows = []
    for (task, lang, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                          order.index(kv[0][2]) if kv[0][2] in order else 99)):
        if method == "alm_grid":
            rs = grid_row(rs)
        row = {"task": task, "lang": lang, "method": method, "label": METHODS.get(method, method), "seeds": len(rs)}
        ratios = [r["prune_ratio"] for r in rs if r.get("prune_ratio") is not None]
        row["prune_pct"] = 100 * float(np.mean(ratios)) if ratios and method not in ("alm",) else None
        for m in METRIC_COLUMNS[task]:
            row[m], row[f"{m}_std"] = _mean_std([r["metrics"].get(m) for r in rs])
        unavailable = {r["metrics"].get("bertscore_unavailable") for r in rs} - {None}
        row["bertscore_unavailable"] = "; ".join(sorted(unavailable)) or None
        row["paper"] = PAPER.get((task, lang, method))
        rows.append(row)
    return rows


def results_markdown(rows: list[dict]) -> str:
    out = io.StringIO()
    for (task, lang) in dict.fromkeys((r["task"], r["lang"]) for r in rows):
        cols = METRIC_COLUMNS[task]
        out.write(f"\n### {'XL-Sum' if task == 'summarization' else 'MLQA'}-style {task}, {lang}\n\n")
        head = ["Method", "seeds", "Pruning %"] + [METRIC_LABELS[c] for c in cols]
        head += ["paper: Pruning %"] + [f"paper: {METRIC_LABELS[c]}" for c in cols]
        out.write("| " + " | ".join(head) + " |\n|" + "---|" * 2 + "---:|" * (len(head) - 2) + "\n")
        notes = set()
        for r in (r for r in rows if (r["task"], r["lang"]) == (task, lang)):
            cells = [r["label"], str(r["seeds"]), _fmt(r["prune_pct"])]
            for c in cols:
                if c == "bertscore_f1" and r["bertscore_unavailable"]:
                    cells.append("n/a*")
                    notes.add(r["bertscore_unavailable"])
                else:
                    cells.append(_fmt(r[c], r[f"{c}_std"]))
            paper = r["paper"] or (None,) * 4
            cells += [_fmt(v) for v in paper]
            out.write("| " + " | ".join(cells) + " |\n")
        for n in sorted(notes):
            out.write(f"\n\\* BERTScore unavailable: {n}\n")
    out.write("\nPaper: Hassan & Chen 2026, Llama-3-8B-Instruct, 3 seeds (its own splits and hardware); "
              "ours: the model, data and seeds of these runs.\n")
    return out.getvalue()


def runtime_rows(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    probes: dict[tuple, list] = defaultdict(list)  # the controller runs' (probe seconds, seconds)
    for r in runs:
        groups[(r["task"], r["lang"])][r["method"]].append(r["seconds"])
        if "probes" in r:
            probes[(r["task"], r["lang"])].append(r["probes"])
    rows = []
    for (task, lang), by_method in groups.items():
        block = {}
        for name, members in RUNTIME_METHODS.items():
            secs = [s for m in members for s in by_method.get(m, [])]
            if secs:
                block[name] = {"runs": len(secs), "minutes": sum(secs) / 60}
        if "alm_grid" in block:
            for name in ("grasp", "grasp_one_run"):
                if name in block:
                    block[name]["speedup"] = block["alm_grid"]["minutes"] / block[name]["minutes"]
                    block["alm_grid"]["speedup"] = 1.0
        for name, v in block.items():
            if name == "grasp" and probes[(task, lang)]:
                v["probe_seconds"], v["controller_seconds"] = map(sum, zip(*probes[(task, lang)]))
            rows.append({"task": task, "lang": lang, "method": name, **v, "paper": PAPER_RUNTIME.get((task, lang))})
    return rows


def probe_share(probe_seconds: float | None, seconds: float | None) -> float | None:
    """A controller run's probe seconds per second of the rest of it (its training)."""
    if probe_seconds is None or not seconds or seconds <= probe_seconds:
        return None
    return probe_seconds / (seconds - probe_seconds)


def runtime_markdown(rows: list[dict]) -> str:
    out = io.StringIO()
    out.write("| Method | Task | Lang | # runs | Wall (min) | Speed-up | paper: # runs | paper: min | paper: speed-up |\n")
    out.write("|---|---|---|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        label = RUNTIME_LABELS[r["method"]]
        paper = r["paper"] if r["method"] != "grasp_one_run" else None  # the paper has no one-run mode
        if paper:
            (gr, gm), (cr, cm) = paper
            p = (gr, gm, 1.0) if r["method"] == "alm_grid" else (cr, cm, gm / cm)
            pcells = [str(p[0]), str(p[1]), f"{p[2]:.2f}×"]
        else:
            pcells = ["—"] * 3
        speed = f"{r['speedup']:.2f}×" if "speedup" in r else "—"
        out.write(f"| {label} | {r['task']} | {r['lang']} | {r['runs']} | {r['minutes']:.2f} | {speed} | "
                  + " | ".join(pcells) + " |\n")
    out.write("\nAll use the same training loop, data, hardware and stopping rules; GRASP counts its controller run "
              "and every final run, one-run GRASP its controller run alone, the grid every (ratio, seed) run.\n")
    for r in rows:  # the probes are the method's own cost: what its speed-up rests on
        share = probe_share(r.get("probe_seconds"), r.get("controller_seconds"))
        if share is not None:
            out.write(f"The controller run ({r['task']}, {r['lang']}): {r['probe_seconds']:.1f} s of probes in "
                      f"{r['controller_seconds']:.1f} s (probe s / training s {share:.2f}).\n")
    return out.getvalue()


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def how_chosen(histories: Histories) -> str:
    """Markdown: for each controller run, the learned ratio, the rule that read it, and what it rests on."""
    lines = ["| controller run | p* | rule | rounds | probes | probe s / training s | best single reward (its ratio) | "
             "other rules |", "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |"]
    for src, _, ratio in histories:
        if ratio is None:
            continue
        best = (f"{ratio['best_reward']:.4f} ({ratio['best_candidate']:.3f})"
                if ratio.get("best_reward") is not None and ratio.get("best_candidate") is not None else "—")
        asked = ratio["rule"] + ("" if ratio.get("asked_rule", ratio["rule"]) == ratio["rule"]
                                 else f" (asked {ratio['asked_rule']}: it could not tell)")
        others = ", ".join(f"{k} {v:.3f}" for k, v in ratio.get("by_rule", {}).items()
                           if v is not None and k != ratio["rule"])
        share = probe_share(ratio.get("probe_seconds"), ratio.get("seconds"))
        cost = "—" if share is None else f"{share:.2f}"
        lines.append(f"| {src.parent.name} | {ratio['prune_ratio']:.3f} | {asked} | {ratio['rounds']} | "
                     f"{ratio.get('trials', '—')} | {cost} | {best} | {others or '—'} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def plot_controller(histories: Histories, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(histories), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.2 * n), squeeze=False)
    for ax, (src, hist, ratio) in zip(axes[:, 0], histories):
        steps = np.array([h["step"] for h in hist])
        mu, sigma = np.array([h["mu"] for h in hist]), np.array([h["sigma"] for h in hist])
        ax.fill_between(steps, mu - sigma, mu + sigma, color="tab:blue", alpha=0.15, label="μ ± σ")
        ax.plot(steps, mu, color="tab:blue", lw=1, label="μ (policy mean)")
        ax.step(np.r_[0, steps], [hist[0]["p"]] + [h["p_next"] for h in hist], where="post", color="black", lw=2,
                label="p (committed)")
        xs = [s for h in hist for s in [h["step"]] * len(h["candidates"])]
        ys = [c for h in hist for c in h["candidates"]]
        cs = [r if r is not None and math.isfinite(r) else np.nan for h in hist for r in h["rewards"]]
        sc = ax.scatter(xs, ys, c=cs, cmap="RdYlGn", s=28, edgecolors="grey", linewidths=0.5, zorder=3)
        fig.colorbar(sc, ax=ax, label="reward (L_base − L_g)")
        if ratio is not None:
            ax.axhline(ratio["prune_ratio"], color="tab:red", ls="--", lw=1.5,
                       label=f"p* = {ratio['prune_ratio']:.3f} ({ratio['rule']}, {ratio['rounds']} rounds)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("prune ratio")
        ax.set_title(f"controller trajectory — {src.parent.name}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    if not histories:
        axes[0, 0].text(0.5, 0.5, "no controller history found", ha="center", va="center")
    _save_figure(fig, path)


def plot_metrics(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(dict.fromkeys((r["task"], r["lang"]) for r in rows))
    fig, axes = plt.subplots(len(blocks), 1, figsize=(10, 3.6 * len(blocks)), squeeze=False)
    for ax, (task, lang) in zip(axes[:, 0], blocks):
        block = [r for r in rows if (r["task"], r["lang"]) == (task, lang)]
        cols = METRIC_COLUMNS[task]
        width = 0.8 / len(block)
        for i, r in enumerate(block):
            xs = np.arange(len(cols)) + i * width
            vals = [r[c] if r[c] is not None else np.nan for c in cols]  # unavailable: no bar, not a 0
            errs = [r[f"{c}_std"] or 0.0 for c in cols]
            ax.bar(xs, vals, width, yerr=errs, label=r["label"], capsize=2)
            for x, v in zip(xs, vals):
                if np.isnan(v):
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="0.4")
        ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, [METRIC_LABELS[c] for c in cols])
        ax.set_ylabel("score (0–100)")
        ax.set_title(f"{task}, {lang}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    _save_figure(fig, path)


def report(cfg: ReportConfig) -> dict:
    runs, histories = collect(cfg.runs)
    out = Path(cfg.out)
    save_config(cfg, out)
    rows = result_rows(runs)
    rt = runtime_rows(runs)
    chosen = how_chosen(histories)
    write_text(out / "results.md", "# Results\n" + results_markdown(rows)
               + (f"\n## How p* was chosen\n\n{chosen}" if chosen else ""))
    buf = io.StringIO()
    fields = ["task", "lang", "method", "label", "seeds", "prune_pct"]
    fields += [f"{m}{s}" for m in ("bertscore_f1", "bleu", "rouge_l", "exact_match", "f1") for s in ("", "_std")]
    fields += ["paper_prune_pct", "paper_bertscore_f1", "paper_bleu_or_em", "paper_rouge_l_or_f1"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        paper = r["paper"] or (None,) * 4
        writer.writerow({**r, **dict(zip(fields[-4:], paper))})
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "runtime.md", "# Runtime\n\n" + runtime_markdown(rt))
    plot_controller(histories, out / "controller.png")
    if rows:
        plot_metrics(rows, out / "metrics.png")
    return {"results": rows, "runtime": rt, "out": str(out)}
