"""Experiment tracking, as transformers' `report_to`: the training loop's scalars (loss, learning rate, val
loss and, in the controller run, p, mu, sigma and rewards) sent to TensorBoard event files and/or Weights & Biases
(offline unless the user's WANDB_MODE/login say otherwise), and, inside a Ray Tune trial, the val loss of every
evaluation to Tune (`ray`: what a scheduler such as ASHA stops trials on). The JSONL logs stay the record."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import OptionError

REPORT_TO = ("none", "tensorboard", "wandb", "ray")


def _in_tune_trial() -> bool:
    import warnings

    from ray.tune import get_context

    with warnings.catch_warnings():  # outside a trial Ray warns, then returns None: the answer we want
        warnings.simplefilter("ignore")
        return get_context().get_trial_id() is not None


class Tracker:
    """Send scalars to every backend in `report_to`; a no-op for ["none"]."""

    def __init__(self, report_to: list[str], folder: Path, name: str, config: object):
        from dataclasses import asdict

        from .files import json_safe

        config = json_safe(asdict(config))
        self.writers = []
        for backend in set(report_to) - {"none"}:
            if importlib.util.find_spec(backend) is None:
                raise OptionError({"report_to": backend}, f"needs the {backend} package: pip install "
                                                          f"\"grasp-lora[{'ray' if backend == 'ray' else 'track'}]\" "
                                                          f"(or {backend})")
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.writers.append(SummaryWriter(log_dir=str(folder / "tensorboard")))
        self.tune = None
        if "ray" in report_to:
            from ray import tune

            if not _in_tune_trial():
                raise OptionError({"report_to": "ray"}, "reports to a Ray Tune trial and this run is not in "
                                                        "one: use it inside a Tuner's trainable, or choose tensorboard "
                                                        "or wandb")
            self.tune = tune
        if "wandb" in report_to:
            import wandb

            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "grasp-lora"), name=name, dir=str(folder),
                                  config=config, mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")
        else:
            self.run = None

    def log(self, values: dict[str, float], step: int) -> None:
        for writer in self.writers:
            for key, value in values.items():
                writer.add_scalar(key, value, step)
        if self.run is not None:
            self.run.log(values, step=step)
        if self.tune is not None and "val/loss" in values:  # one Tune result per val evaluation: a scheduler's time unit
            self.tune.report({"val_loss": values["val/loss"], "step": step})

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers:
            writer.close()
        if self.run is not None:
            self.run.finish(exit_code=1 if exc[0] else 0)
