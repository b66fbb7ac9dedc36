"""`grasp-lora demo`: the whole protocol, en -> ar QA, on the packaged SmolLM2 and the bundled corpus, on CPU.

Every row of the paper's table, at demo scale (said in the output): short training runs, a 4-point grid
with one seed, one final-run seed, and a shorter test split. Grid and GRASP use the same training loop,
data, hardware and stopping rules, so the runtime table compares them honestly.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .config import DemoConfig, ExperimentConfig

DEMO_SCALE = dict(
    source_sizes="96,16,0,16", target_sizes="48,16,16,32", max_steps=10, grad_accum=3, batch_size=2,
    grid=[0.2, 0.4, 0.6, 0.8], seeds=[42], lr=1e-3, lorahub_budget=20, max_new_tokens=16,
    generate_batch_size=16, eval_batch_size=16,
)


def corpus_file(task: str, lang: str) -> Path:
    return Path(str(resources.files("grasp_lora.data") / "demo" / f"{task}_{lang}.jsonl"))


def demo_experiment(cfg: DemoConfig) -> ExperimentConfig:
    return ExperimentConfig(
        model=cfg.model, device=cfg.device, dtype=cfg.dtype, out=cfg.out, seed=cfg.seed, task="qa", dataset="mlqa",
        source_lang="en", target_lang="ar", source_input=str(corpus_file("qa", "en")),
        target_input=str(corpus_file("qa", "ar")), **DEMO_SCALE)


def run_demo(cfg: DemoConfig) -> dict:
    from .pipeline import run_experiment

    exp = demo_experiment(cfg)
    print("grasp-lora demo: en -> ar extractive QA, packaged SmolLM2-135M, bundled corpus, CPU.\n"
          f"Demo scale: {exp.max_steps} optimizer steps per training run (batch {exp.batch_size} x accumulation "
          f"{exp.grad_accum}), grid {exp.grid} with seed {exp.seeds} (the paper: 0.1..0.8 x 3 seeds); the controller run "
          f"({exp.controller}) sees the same examples at batch {exp.search_batch_size} x accumulation "
          f"{exp.search_grad_accum}, a round every {exp.round_every} steps; {exp.target_sizes} target splits.\n")
    return run_experiment(exp)
