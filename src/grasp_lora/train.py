"""The one training loop: used for single adapters, the controller run, the final run and the baselines.

It knows nothing of merging, pruning or the controller: callers pass `hooks` (see Hooks; the pruning
masks and the controller come in there) and `save_best` (called when the val loss improves; callers
write their adapter).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .errors import NumericalError
from .io import append_jsonl


@dataclass
class LoopSettings:
    lr: float = 1e-4
    weight_decay: float = 0.0
    gamma: float = 0.85
    epochs: int = 10
    batch_size: int = 1
    grad_accum: int = 8
    patience: int = 3
    max_steps: int = 0
    seed: int = 42
    eval_batch_size: int = 8

    @classmethod
    def from_config(cls, cfg) -> "LoopSettings":
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


def collate(examples: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors (labels -100 on padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the next-token targets and the mask of target tokens, both [B, T-1]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll, labels != -100


def batch_loss(model, batch) -> torch.Tensor:
    """Mean NLL over all target tokens of the batch (the training objective)."""
    nll, mask = token_nll(model, batch)
    return nll[mask].mean()


@torch.no_grad()
def example_losses(model, examples: list[dict], pad_id: int, device: torch.device, batch_size: int = 8) -> torch.Tensor:
    """Each example's mean target-token NLL, teacher forced, computed in batches (SPEC §1.6 step 1).

    Batches are sorted by length so padding stays small; the result is in the examples' order.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    out = torch.empty(len(examples), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        nll, mask = token_nll(model, collate([examples[i] for i in idx], pad_id, device))
        per = (nll * mask).sum(1) / mask.sum(1)
        out[idx] = per.double().cpu()
    model.train(was_training)
    return out


def mean_loss(model, examples, pad_id, device, batch_size=8) -> float:
    return float(example_losses(model, examples, pad_id, device, batch_size).mean())


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _micro_batches(examples: list[dict], order: Iterable[int], batch_size: int) -> list[list[dict]]:
    order = list(order)
    return [[examples[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


class Hooks:
    """What a caller can add to the loop without the loop knowing about it (pruning, the controller)."""

    def on_start(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once, before the first step."""

    def before_step(self, step: int) -> None:
        """Called after backward, before the optimizer step (gradients are there)."""

    def after_step(self, step: int) -> dict | None:
        """Called after each optimizer step; may return fields for the log line and the progress bar."""
        return None


def train(model, params: list[torch.nn.Parameter], train_examples: list[dict], val_examples: list[dict],
          settings: LoopSettings, out_dir: str | Path, pad_id: int, device: torch.device,
          save_best: Callable[[], None], hooks: Optional[Hooks] = None, desc: str = "train") -> dict:
    """Train `params` with AdamW + StepLR, early stopping on val loss; returns a summary."""
    hooks = hooks or Hooks()
    out_dir = Path(out_dir)
    main = distributed.is_main()  # only rank 0 writes files and shows progress
    train_log, val_log = out_dir / "train_log.jsonl", out_dir / "val_log.jsonl"
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for log in (train_log, val_log):
            log.unlink(missing_ok=True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=settings.gamma)
    hooks.on_start(optimizer)
    steps_per_epoch = math.ceil(math.ceil(len(train_examples) / settings.batch_size) / settings.grad_accum)
    total = settings.epochs * steps_per_epoch
    if settings.max_steps:
        total = min(total, settings.max_steps)

    best, bad_epochs, step, start = math.inf, 0, 0, time.time()
    stopped = "epochs"
    bar = tqdm(total=total, desc=desc, dynamic_ncols=True, disable=not main)

    def evaluate(epoch: int) -> bool:
        nonlocal best, bad_epochs
        val = mean_loss(model, val_examples, pad_id, device, settings.eval_batch_size)
        if not math.isfinite(val):
            raise NumericalError(f"{desc}: val loss is {val} at step {step}; the best checkpoint in {out_dir} is intact")
        improved = val < best
        if improved:
            best, bad_epochs = val, 0
            if main:
                save_best()
        else:
            bad_epochs += 1
        if main:
            append_jsonl(val_log, {"step": step, "epoch": epoch, "val_loss": val, "best": improved})
        return improved

    model.train()
    for epoch in range(settings.epochs):
        batches = _micro_batches(train_examples, epoch_order(len(train_examples), settings.seed, epoch), settings.batch_size)
        for s in range(0, len(batches), settings.grad_accum):
            group = batches[s:s + settings.grad_accum]
            local = []
            for mb in group[distributed.rank()::distributed.world()]:  # this rank's share of the step
                loss = batch_loss(model, collate(mb, pad_id, device))
                (loss / len(group)).backward()
                local.append(loss.item())
            total, count = distributed.sum_floats([float(np.sum(local)), float(len(local))], device)
            loss_value = total / count
            if not math.isfinite(loss_value):
                raise NumericalError(f"{desc}: loss is {loss_value} at step {step + 1}; "
                                     f"the best checkpoint in {out_dir} is intact")
            distributed.sum_gradients(params)
            grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
            if not grads_finite:
                raise NumericalError(f"{desc}: non-finite gradient at step {step + 1}; "
                                     f"the best checkpoint in {out_dir} is intact")
            hooks.before_step(step + 1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            extra = hooks.after_step(step)
            if main:
                append_jsonl(train_log, {"step": step, "epoch": epoch, "loss": loss_value,
                                         "lr": optimizer.param_groups[0]["lr"], **(extra or {})})
            bar.set_postfix(loss=f"{loss_value:.3f}", **{k: f"{v:.3f}" for k, v in (extra or {}).items()
                                                         if isinstance(v, float)})
            bar.update(1)
            if settings.max_steps and step >= settings.max_steps:
                stopped = "max_steps"
                break
        evaluate(epoch)
        scheduler.step()
        if stopped == "max_steps":
            break
        if settings.patience and bad_epochs >= settings.patience:
            stopped = "early_stopping"
            break
    bar.close()
    return {"steps": step, "best_val_loss": best, "stopped": stopped, "seconds": time.time() - start}
