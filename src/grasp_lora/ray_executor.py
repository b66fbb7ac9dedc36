"""`--executor ray`: independent trials (grid points, seeds) as Ray Tune trials, `ray_workers` at once, on a local
Ray started here or on a running cluster (`ray_address` or RAY_ADDRESS), with per-trial CPUs and GPUs as options.
Optional: `pip install "grasp-lora[ray]"`. On a cluster the experiment folder must be on storage every node sees.

Each trial runs the same stage function as the local executor and writes the same done.json, so a
Ray run and a local run leave the same experiment folder, and either can resume the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .files import read_json


def connect(cfg) -> dict[str, float]:
    """Start Ray here, or join the cluster at `ray_address` / RAY_ADDRESS; returns one trial's resources."""
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray Tune: pip install "grasp-lora[ray]"') from None
    workers = max(1, cfg.ray_workers)
    cpus = cfg.ray_cpus_per_trial or max(1, (os.cpu_count() or 1) // workers)
    gpus = cfg.ray_gpus_per_trial if cfg.ray_gpus_per_trial is not None else (1 if torch.cuda.device_count() else 0)
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        try:
            if address:  # a running cluster: its nodes bring their own CPUs and GPUs
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=cpus * workers, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise UserError(f"--ray-address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]}); "
                            "start it with `ray start --head` or leave the address out") from None
    return {"cpu": cpus, "gpu": gpus}


def run_stages(exp, trials: list[tuple[str, Callable[[Path], dict | None], dict]]) -> list[dict]:
    fns = {name: (fn, deps) for name, fn, deps in trials}
    pending = [name for name, (_, deps) in fns.items() if exp.done(name, deps) is None]
    if pending:
        from ray import tune

        resources = connect(exp.cfg)

        def trainable(config: dict) -> None:
            torch.set_num_threads(int(resources["cpu"]))
            info = exp.stage(config["stage"], *fns[config["stage"]])
            tune.report({"seconds": info["seconds"]})

        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"stage": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, exp.cfg.ray_workers)),
            run_config=tune.RunConfig(name="trials", storage_path=str(exp.path("ray").resolve()), verbose=0),
        )
        errors = [r.error for r in tuner.fit() if r.error]
        if errors:
            raise UserError(f"{len(errors)} Ray trial(s) failed; first: {str(errors[0]).splitlines()[-1]}")
    return [read_json(exp.path(name) / "done.json", "delete it to redo the stage") for name in fns]
