"""`--executor ray`: independent trials (grid points, seeds) as Ray Tune trials, `ray_workers` at once,
one GPU each when GPUs exist. Optional: `pip install "grasp-lora[ray]"`.

Each trial runs the same stage function as the local executor and writes the same done.json, so a
Ray run and a local run leave the same experiment folder, and either can resume the other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError


def run_stages(exp, trials: list[tuple[str, Callable[[Path], dict | None], dict]]) -> list[dict]:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError('--executor ray needs Ray Tune: pip install "grasp-lora[ray]"') from None

    fns = {name: (fn, deps) for name, fn, deps in trials}
    pending = [name for name, (_, deps) in fns.items() if exp.done(name, deps) is None]
    if pending:
        gpus = torch.cuda.device_count()
        workers = max(1, exp.cfg.ray_workers)
        cpus = max(1, (os.cpu_count() or 1) // workers)
        if not ray.is_initialized():
            ray.init(num_cpus=cpus * workers, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)

        def trainable(config: dict) -> None:
            torch.set_num_threads(cpus)
            info = exp.stage(config["stage"], *fns[config["stage"]])
            tune.report({"seconds": info["seconds"]})

        resources = {"cpu": cpus, "gpu": 1 if gpus else 0}
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"stage": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers),
            run_config=tune.RunConfig(name="trials", storage_path=str(exp.path("ray").resolve()), verbose=0),
        )
        errors = [r.error for r in tuner.fit() if r.error]
        if errors:
            raise UserError(f"{len(errors)} Ray trial(s) failed; first: {str(errors[0]).splitlines()[-1]}")
    return [json.loads((exp.path(name) / "done.json").read_text(encoding="utf-8")) for name in fns]
