"""`grasp-lora run EXPERIMENT.yaml`: the whole protocol for one task, source -> target (SPEC §1.10, §1.11).

data -> adapters -> baselines -> grid -> GRASP -> generate -> evaluate -> report. Each stage has its own
folder and writes `done.json` (with its wall time) when complete; a re-run skips complete stages, so an
interrupted experiment continues where it stopped. `done.json` records what the stage depends on (the options
it reads, its inputs' identity, the fingerprints of the stages it reads): a re-run with another configuration
redoes exactly the stages whose dependencies changed, and says which keys changed. Every trained or evaluated run also gets `run.json`
(method, seed, prune ratio, training seconds, val loss), which `report` reads. Runtime is honest: grid and
GRASP runs use the same training loop, data, hardware and stopping rules, and count every run they need.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from .config import (ControllerOptions, DataPrepareConfig, EvaluateConfig, ExperimentConfig, FinetuneMergedConfig,
                     GenerateConfig, LoraHubConfig, ReportConfig, SearchConfig, TiesConfig, TrainAdapterConfig,
                     save_config)
from .errors import NumericalError
from .files import identity, read_json, write_json
from .model_card import add_metrics
from .report import grid_winner, write_run_info


def shared_fields(src, cls) -> dict:
    """The fields of `cls` that the experiment config also has (model, training and controller options)."""
    names = set(cls.__dataclass_fields__) & set(type(src).__dataclass_fields__)
    return {n: getattr(src, n) for n in names}


def fingerprint(deps: dict) -> str:
    return hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The experiment options each kind of stage reads (besides the stages it reads, which enter by fingerprint).
TRAIN_KEYS = ("model", "dtype", "task", "lr", "weight_decay", "gamma", "epochs", "batch_size", "grad_accum", "patience",
              "max_steps", "eval_batch_size", "max_length")
EVAL_KEYS = ("model", "dtype", "task", "generate_limit", "generate_batch_size", "max_new_tokens", "bertscore_model")
MERGED_KEYS = TRAIN_KEYS + ("merge_form",)
FINAL_KEYS = MERGED_KEYS + ("final_criterion", "reprune")
# every controller option, read off the dataclass: a hand-kept list had left the pair options out, so a changed
# --pair-gap reused the old search
CONTROLLER_KEYS = MERGED_KEYS + ("search_criterion", "search_batch_size", "search_grad_accum", "search_max_steps",
                                 "seed") + tuple(f.name for f in fields(ControllerOptions))


@dataclass
class Experiment:
    cfg: ExperimentConfig
    out: Path
    fingerprints: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint of what it depends on
    stages: list[str] = field(default_factory=list)  # this configuration's stages, in order

    def path(self, *parts) -> Path:
        return self.out.joinpath(*map(str, parts))

    @property
    def data(self) -> dict[str, Path]:
        return {"source": self.path("data", "source"), "target": self.path("data", "target")}

    @property
    def adapters(self) -> list[str]:
        return [str(self.path("adapters", "source")), str(self.path("adapters", "target"))]

    def depends(self, name: str, keys: tuple[str, ...] = (), stages: tuple[str, ...] = (), **values) -> dict:
        """Declare what stage `name` depends on: experiment options `keys`, earlier `stages` (by fingerprint),
        and other `values`; returns the dependencies (recorded in done.json)."""
        deps = {k: getattr(self.cfg, k) for k in keys}
        deps.update({f"stage {s}": self.fingerprints[s] for s in stages}, **values)
        if "prompts" not in deps and "task" in keys:
            deps["prompts"] = identity(self.cfg.prompts)
        deps = json.loads(json.dumps(deps, default=str))  # as done.json will hold them
        self.fingerprints[name] = fingerprint(deps)
        self.stages.append(name)
        return deps

    def done(self, name: str, deps: dict | None) -> dict | None:
        """done.json of a finished stage made from the same dependencies (None: any), else None."""
        path = self.path(name, "done.json")
        if not path.is_file():
            return None
        info = read_json(path, "delete it to redo the stage")
        old = info.get("depends_on")
        if deps is not None and old != deps:
            changed = sorted(k for k in set(old or {}) | set(deps) if (old or {}).get(k) != deps.get(k))
            print(f"  stage {name}: redoing it, its configuration changed ({', '.join(changed) or 'not recorded'})")
            return None
        return info

    def stage(self, name: str, fn: Callable[[Path], dict | None], deps: dict | None = None) -> dict:
        """Run `fn(folder)` unless done.json says it is complete with the same dependencies `deps` (from
        `depends`; None: complete is enough); returns what done.json holds. A stage redone starts from an
        empty folder."""
        info = self.done(name, deps)
        if info is not None:
            return info
        folder = self.path(name)
        if folder.exists():
            shutil.rmtree(folder)  # the stage's own folder: outputs of another configuration
        start = time.time()
        info = fn(folder) or {}
        info["seconds"] = time.time() - start
        info["depends_on"] = deps
        write_json(folder / "done.json", info)
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
        metrics = evaluate(EvaluateConfig(predictions=str(folder / "predictions.jsonl"), task=c.task,
                                          lang=c.target_lang, prompts=c.prompts, out=str(folder / "metrics.json"),
                                          bertscore_model=c.bertscore_model, device=c.device))
        if adapter and Path(adapter).is_relative_to(folder):  # this stage's own adapter: its card gets the scores
            add_metrics(adapter, metrics)

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


def run_trials(exp: Experiment, trials: list[tuple[str, Callable[[Path], dict | None], dict]]) -> list[dict]:
    """Independent stages (name, fn, dependencies): one after another, or as Ray Tune trials."""
    if exp.cfg.executor == "ray":
        from .ray_executor import run_stages

        return run_stages(exp, trials)
    return [exp.stage(name, fn, deps) for name, fn, deps in trials]


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
        deps = exp.depends(f"data/{side}", ("dataset", "seed", "scale_down", f"{side}_sizes"), lang=lang,
                           input=identity(getattr(c, f"{side}_input")))
        exp.stage(f"data/{side}", lambda d, side=side, lang=lang: prepare_data(DataPrepareConfig(
            dataset=c.dataset, lang=lang, prompts=c.prompts, input=getattr(c, f"{side}_input"), out=str(d),
            seed=c.seed, sizes=getattr(c, f"{side}_sizes"), scale_down=c.scale_down)), deps)
    adapter_info = {}
    for side, lang in (("source", c.source_lang), ("target", c.target_lang)):
        deps = exp.depends(f"adapters/{side}", TRAIN_KEYS + ("seed",), (f"data/{side}",), lang=lang,
                           model_files=identity(c.model))
        adapter_info[side] = exp.stage(f"adapters/{side}", lambda d, side=side, lang=lang: train_adapter(exp.train_cfg(
            TrainAdapterConfig, lang=lang, data=str(exp.data[side]), out=str(d))), deps)
    adapters = ("adapters/source", "adapters/target")

    def evaluated(method: str, adapter_fn: Callable[[Path], str | None], seconds_fn=None, **info):
        def fn(d: Path):
            start = time.time()
            adapter = adapter_fn(d)
            seconds = seconds_fn() if seconds_fn else time.time() - start
            exp.evaluate_into(d, adapter)
            write_run_info(d, method, task, tgt, seconds, **info)
        return fn

    if "zero_shot" in c.methods:
        exp.stage("zero_shot", evaluated("zero_shot", lambda d: None, lambda: 0.0),
                  exp.depends("zero_shot", EVAL_KEYS, ("data/target",), model_files=identity(c.model)))
    if "target_lora" in c.methods:
        exp.stage("target_lora", evaluated("target_lora", lambda d: exp.adapters[1],
                                           lambda: adapter_info["target"]["seconds"], seed=c.seed),
                  exp.depends("target_lora", EVAL_KEYS, ("data/target", "adapters/target")))
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
        exp.stage("ties", evaluated("ties", ties_adapter),
                  exp.depends("ties", EVAL_KEYS + ("ties_density",), ("data/target",) + adapters))
    if "lorahub" in c.methods:
        exp.stage("lorahub", evaluated("lorahub", lorahub_adapter),
                  exp.depends("lorahub", EVAL_KEYS + ("lorahub_examples", "lorahub_budget", "seed", "max_length"),
                              ("data/target",) + adapters))

    def final_run(method: str, ratio_fn: Callable[[], float], seed: int):
        def fn(d: Path):
            ratio = ratio_fn()
            info = exp.finetune(d, ratio, seed)
            exp.evaluate_into(d, str(d / "adapter"))
            write_run_info(d, method, task, tgt, info["train_seconds"], seed, ratio, info["val_loss"])
        return fn

    def final_deps(name: str, seed: int, stages: tuple[str, ...] = (), **values) -> dict:
        return exp.depends(name, FINAL_KEYS + EVAL_KEYS, ("data/target",) + adapters + stages, seed=seed, **values)

    if "alm" in c.methods:
        run_trials(exp, [(f"alm/seed{s}", final_run("alm", lambda: 0.0, s), final_deps(f"alm/seed{s}", s))
                         for s in seeds])

    if "alm_grid" in c.methods:
        def grid_run(ratio: float, seed: int):
            def fn(d: Path):
                info = exp.finetune(d, ratio, seed)
                write_run_info(d, "alm_grid", task, tgt, info["train_seconds"], seed, ratio, info["val_loss"])
                return info
            return fn

        points = run_trials(exp, [(f"grid/p{p}/seed{s}", grid_run(p, s),
                                   exp.depends(f"grid/p{p}/seed{s}", FINAL_KEYS, ("data/target",) + adapters,
                                               seed=s, prune_ratio=p))
                                  for p in c.grid for s in grid_seeds])
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

        exp.stage("grid/winner", evaluate_winner,
                  exp.depends("grid/winner", EVAL_KEYS, tuple(f"grid/p{p}/seed{s}" for p in c.grid for s in grid_seeds)))

    one_run = "grasp_one_run" in c.methods
    if "grasp" in c.methods or one_run:
        def controller_run(d: Path):
            start = time.time()
            result, _ = search(exp.train_cfg(SearchConfig, adapters=exp.adapters, out=str(d),
                                             merge_form=c.merge_form, criterion=c.search_criterion,
                                             export_adapter=one_run, **search_batching(c)))
            write_run_info(d, "grasp_search", task, tgt, time.time() - start, c.seed, result["prune_ratio"])
            return {**result, "wall_seconds": time.time() - start}

        controller = exp.stage("grasp/search", controller_run, exp.depends(
            "grasp/search", CONTROLLER_KEYS, ("data/target",) + adapters, export_adapter=one_run))
        p_star = controller["prune_ratio"]
        if "grasp" in c.methods:
            run_trials(exp, [(f"grasp/seed{s}", final_run("grasp", lambda: p_star, s),
                              final_deps(f"grasp/seed{s}", s, ("grasp/search",))) for s in seeds])
        if one_run:  # the controller run's own export: evaluated as its own row, timed as one run
            exp.stage("grasp/one_run", evaluated("grasp_one_run", lambda d: str(exp.path("grasp/search/adapter")),
                                                 lambda: controller["wall_seconds"], seed=c.seed, prune_ratio=p_star),
                      exp.depends("grasp/one_run", EVAL_KEYS, ("data/target", "grasp/search")))

    # only this configuration's runs: a folder left by another configuration (a seed or grid point no longer
    # asked for) is not in the tables
    runs = [str(exp.path(s)) for s in exp.stages if not s.startswith(("data/", "adapters/"))]
    return report(ReportConfig(runs=runs, out=str(exp.path("report"))))
