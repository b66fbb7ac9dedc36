"""`grasp-lora run EXPERIMENT.yaml`: the whole protocol for one task, source -> target (SPEC §1.10, §1.11).

data -> adapters -> baselines -> grid -> GRASP -> generate -> evaluate -> report. Each stage has its own
folder and writes `done.json` (with its wall time) when complete; a re-run skips complete stages, so an
interrupted experiment continues where it stopped. Every trained or evaluated run also gets `run.json`
(method, seed, prune ratio, training seconds, val loss), which `report` reads. Runtime is honest: grid and
GRASP runs use the same training loop, data, hardware and stopping rules, and count every run they need.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import (DataPrepareConfig, EvaluateConfig, ExperimentConfig, FinetuneMergedConfig, GenerateConfig,
                     LoraHubConfig, ReportConfig, SearchConfig, TiesConfig, TrainAdapterConfig, save_config)
from .errors import NumericalError
from .files import write_json
from .report import grid_winner, write_run_info


def shared_fields(src, cls) -> dict:
    """The fields of `cls` that the experiment config also has (model, training and controller options)."""
    names = set(cls.__dataclass_fields__) & set(type(src).__dataclass_fields__)
    return {n: getattr(src, n) for n in names}


@dataclass
class Experiment:
    cfg: ExperimentConfig
    out: Path

    def path(self, *parts) -> Path:
        return self.out.joinpath(*map(str, parts))

    @property
    def data(self) -> dict[str, Path]:
        return {"source": self.path("data", "source"), "target": self.path("data", "target")}

    @property
    def adapters(self) -> list[str]:
        return [str(self.path("adapters", "source")), str(self.path("adapters", "target"))]

    def stage(self, name: str, fn: Callable[[Path], dict | None]) -> dict:
        """Run `fn(folder)` unless its done.json says it is complete; returns what done.json holds."""
        folder = self.path(name)
        done = folder / "done.json"
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        start = time.time()
        info = fn(folder) or {}
        info["seconds"] = time.time() - start
        write_json(done, info)
        print(f"  stage {name}: {info['seconds'] / 60:.2f} min")
        return info

    # -------------------------------------------------------------- building blocks

    def train_cfg(self, cls, **kw):
        base = shared_fields(self.cfg, cls)
        base.update(task=self.cfg.task, lang=self.cfg.target_lang, data=str(self.data["target"]), prompts=self.cfg.prompts)
        base.update(kw)
        return cls(**base)

    def evaluate_into(self, folder: Path, adapter: str | None) -> None:
        """Generate on the target test split and score it into folder/{predictions.jsonl, metrics.json}."""
        from .evaluate import evaluate
        from .generate import generate

        c = self.cfg
        generate(GenerateConfig(model=c.model, device=c.device, dtype=c.dtype, data=str(self.data["target"]),
                                task=c.task, lang=c.target_lang, prompts=c.prompts, adapter=adapter,
                                out=str(folder / "predictions.jsonl"), batch_size=c.generate_batch_size,
                                max_new_tokens=c.max_new_tokens, limit=c.generate_limit))
        evaluate(EvaluateConfig(predictions=str(folder / "predictions.jsonl"), task=c.task, lang=c.target_lang,
                                out=str(folder / "metrics.json"), bertscore_model=c.bertscore_model, device=c.device))

    def finetune(self, folder: Path, ratio: float, seed: int) -> dict:
        from .final_run import finetune_merged

        start = time.time()
        summary, _ = finetune_merged(self.train_cfg(
            FinetuneMergedConfig, adapters=self.adapters, prune_ratio=ratio, seed=seed, out=str(folder),
            merge_form=self.cfg.merge_form, criterion=self.cfg.final_criterion, reprune=self.cfg.reprune))
        return {"train_seconds": time.time() - start, "val_loss": summary["best_val_loss"]}


def search_batching(c: ExperimentConfig) -> dict:
    """The controller run's own micro-batching; by default its step cap sees as many examples as a final run's."""
    max_steps = c.search_max_steps
    if max_steps is None:
        per_step = c.search_batch_size * c.search_grad_accum
        max_steps = -(-c.max_steps * c.batch_size * c.grad_accum // per_step)
    return {"batch_size": c.search_batch_size, "grad_accum": c.search_grad_accum, "max_steps": max_steps}


def run_trials(exp: Experiment, trials: list[tuple[str, Callable[[Path], dict | None]]]) -> list[dict]:
    """Independent stages: one after another, or as Ray Tune trials."""
    if exp.cfg.executor == "ray":
        from .ray_executor import run_stages

        return run_stages(exp, trials)
    return [exp.stage(name, fn) for name, fn in trials]


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Every stage of the protocol; returns the report's tables."""
    from .adapter_training import train_adapter
    from .baselines import lorahub, ties_merge
    from .controller_run import search
    from .data.prepare import prepare_data
    from .report import report

    exp = Experiment(cfg, Path(cfg.out))
    exp.out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp.out)
    c, task, tgt = cfg, cfg.task, cfg.target_lang
    seeds, grid_seeds = cfg.seeds, cfg.grid_seeds or cfg.seeds

    for side, lang in (("source", c.source_lang), ("target", c.target_lang)):
        exp.stage(f"data/{side}", lambda d, side=side, lang=lang: prepare_data(DataPrepareConfig(
            dataset=c.dataset, lang=lang, input=getattr(c, f"{side}_input"), out=str(d), seed=c.seed,
            sizes=getattr(c, f"{side}_sizes"), scale_down=c.scale_down)))
    adapter_info = {}
    for side, lang in (("source", c.source_lang), ("target", c.target_lang)):
        adapter_info[side] = exp.stage(f"adapters/{side}", lambda d, side=side, lang=lang: train_adapter(exp.train_cfg(
            TrainAdapterConfig, lang=lang, data=str(exp.data[side]), out=str(d))))

    def evaluated(method: str, adapter_fn: Callable[[Path], str | None], seconds_fn=None, **info):
        def fn(d: Path):
            start = time.time()
            adapter = adapter_fn(d)
            seconds = seconds_fn() if seconds_fn else time.time() - start
            exp.evaluate_into(d, adapter)
            write_run_info(d, method, task, tgt, seconds, **info)
        return fn

    if "zero_shot" in c.methods:
        exp.stage("zero_shot", evaluated("zero_shot", lambda d: None, lambda: 0.0))
    if "target_lora" in c.methods:
        exp.stage("target_lora", evaluated("target_lora", lambda d: exp.adapters[1],
                                           lambda: adapter_info["target"]["seconds"], seed=c.seed))
    def ties_adapter(d: Path) -> str:
        ties_merge(TiesConfig(model=c.model, device=c.device, dtype=c.dtype, adapters=exp.adapters,
                              density=c.ties_density, out=str(d / "adapter")))
        return str(d / "adapter")

    def lorahub_adapter(d: Path) -> str:
        lorahub(LoraHubConfig(model=c.model, device=c.device, dtype=c.dtype, adapters=exp.adapters,
                              data=str(exp.data["target"]), task=task, lang=tgt, prompts=c.prompts,
                              n_examples=c.lorahub_examples, budget=c.lorahub_budget, seed=c.seed,
                              max_length=c.max_length, out=str(d / "adapter")))
        return str(d / "adapter")

    if "ties" in c.methods:
        exp.stage("ties", evaluated("ties", ties_adapter))
    if "lorahub" in c.methods:
        exp.stage("lorahub", evaluated("lorahub", lorahub_adapter))

    def final_run(method: str, ratio_fn: Callable[[], float], seed: int):
        def fn(d: Path):
            ratio = ratio_fn()
            info = exp.finetune(d, ratio, seed)
            exp.evaluate_into(d, str(d / "adapter"))
            write_run_info(d, method, task, tgt, info["train_seconds"], seed, ratio, info["val_loss"])
        return fn

    if "alm" in c.methods:
        run_trials(exp, [(f"alm/seed{s}", final_run("alm", lambda: 0.0, s)) for s in seeds])

    if "alm_grid" in c.methods:
        def grid_run(ratio: float, seed: int):
            def fn(d: Path):
                info = exp.finetune(d, ratio, seed)
                write_run_info(d, "alm_grid", task, tgt, info["train_seconds"], seed, ratio, info["val_loss"])
                return info
            return fn

        points = run_trials(exp, [(f"grid/p{p}/seed{s}", grid_run(p, s)) for p in c.grid for s in grid_seeds])
        val = {p: [points[i * len(grid_seeds) + j]["val_loss"] for j in range(len(grid_seeds))]
               for i, p in enumerate(c.grid)}
        best = grid_winner(val)
        if best is None:
            raise NumericalError("grid: no prune ratio has a finite val loss in every seed; see grid/*/val_log.jsonl")
        mean_val = {p: sum(v) / len(v) for p, v in val.items()}

        def evaluate_winner(d: Path) -> dict:  # only the winner is generated and scored, as in the paper
            for s in grid_seeds:
                run = exp.path(f"grid/p{best}/seed{s}")
                exp.evaluate_into(run, str(run / "adapter"))
            return {"prune_ratio": best, "mean_val_loss": mean_val}

        exp.stage("grid/winner", evaluate_winner)

    if "grasp" in c.methods:
        def controller_run(d: Path):
            start = time.time()
            result, _ = search(exp.train_cfg(SearchConfig, adapters=exp.adapters, out=str(d),
                                             merge_form=c.merge_form, criterion=c.search_criterion,
                                             **search_batching(c)))
            write_run_info(d, "grasp_search", task, tgt, time.time() - start, c.seed, result["prune_ratio"])
            return result

        p_star = exp.stage("grasp/search", controller_run)["prune_ratio"]
        run_trials(exp, [(f"grasp/seed{s}", final_run("grasp", lambda: p_star, s)) for s in seeds])

    return report(ReportConfig(runs=[str(exp.out)], out=str(exp.path("report"))))
