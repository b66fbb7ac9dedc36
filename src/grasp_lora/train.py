"""The one training loop: used for single adapters, the controller run, the final run and the baselines.

It knows nothing of merging, pruning or the controller: callers pass `hooks` (see Hooks; the pruning
masks and the controller come in there) and `save_best` (called when the val loss improves; callers
write their adapter).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .data.batching import collate
from .errors import NumericalError, OptionError, UserError
from .files import RESUME_FIX, append_jsonl, atomic_path, truncate_jsonl

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .config import TrainOptions
    from .tracking import Tracker


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most transformers causal LMs do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:  # once per model class, not on every forward
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the next-token targets and their mask, [B, P] over the P positions that predict a
    target token in some row. The LM head runs only there: prompts are long and targets short, and the
    head over a 49k-50k vocabulary is a large share of a small model's forward and backward."""
    labels = batch["labels"][:, 1:]
    positions = (labels != -100).any(0).nonzero().flatten()
    kwargs = {"logits_to_keep": positions} if _keeps_logits(model) else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    if not kwargs:
        logits = logits[:, positions]
    labels = labels[:, positions]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll, labels != -100


def example_nll(model, batch) -> torch.Tensor:
    """Each example's mean target-token NLL, [B]. The training loss of a step is their mean over the step's
    examples, as val and micro-dev losses are, so it does not depend on how the step is cut into
    micro-batches (nor on how long each example's target is)."""
    nll, mask = token_nll(model, batch)
    return (nll * mask).sum(1) / mask.sum(1)


class LossProbe:
    """Each example's mean target-token NLL, teacher forced (SPEC §1.6 step 1), for a fixed set of examples that is
    evaluated many times (val loss, the controller's micro-dev probes, LoRAHub's objective): the batches are sorted
    by length (little padding), collated and moved to the device once, and run under inference_mode."""

    def __init__(self, examples: list[dict], pad_id: int, device: torch.device, batch_size: int = 8):
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        self.n = len(examples)
        self.batches = [(order[s:s + batch_size], collate([examples[i] for i in order[s:s + batch_size]], pad_id, device))
                        for s in range(0, len(order), batch_size)]

    def losses(self, model) -> torch.Tensor:
        """Per-example losses, in the examples' order."""
        was_training = model.training
        model.eval()
        out = torch.empty(self.n, dtype=torch.float64)
        try:
            with torch.inference_mode():
                for idx, batch in self.batches:
                    out[idx] = example_nll(model, batch).double().cpu()
        finally:
            model.train(was_training)
        return out

    def __call__(self, model) -> float:
        return float(self.losses(model).mean())


def example_losses(model, examples: list[dict], pad_id: int, device: torch.device, batch_size: int = 8) -> torch.Tensor:
    return LossProbe(examples, pad_id, device, batch_size).losses(model)


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over `n_examples` (the last micro-batch and the last group may be short)."""
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


def total_steps(n_examples: int, settings: TrainOptions) -> int:
    """The optimizer steps of a run that does not stop early: its epochs, or max_steps if fewer."""
    total = settings.epochs * steps_per_epoch(n_examples, settings.batch_size, settings.grad_accum)
    return min(total, settings.max_steps) if settings.max_steps else total


def evaluation_steps(n_examples: int, settings: TrainOptions) -> list[int]:
    """The steps after which a run that does not stop early computes its val loss: each epoch's end (the last one
    cut by max_steps) and, within an epoch, every eval_every steps (what a scheduler's rungs count)."""
    per_epoch = steps_per_epoch(n_examples, settings.batch_size, settings.grad_accum)
    total = total_steps(n_examples, settings)
    every = range(settings.eval_every, total, settings.eval_every) if settings.eval_every else []
    return sorted(set(range(per_epoch, total + 1, per_epoch)) | {total} | set(every))


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

    def on_examples(self, group: list[list[dict]]) -> None:
        """Called with the micro-batches of the step about to run (a paired controller trains its second member on
        the same)."""

    def before_step(self, step: int) -> None:
        """Called after backward, before the optimizer step (gradients are there)."""

    def after_step(self, step: int, loss: float) -> dict | None:
        """Called after each optimizer step with the step's loss (its examples scored before it trained on them);
        may return fields for the log line and the progress bar."""
        return None

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly (masks, controller state, RNGs)."""
        return {}

    def load_state_dict(self, state: dict, step: int) -> None:
        """Restore `state_dict()`; drop log lines written after `step` (the checkpoint's)."""


@dataclass
class Progress:
    """Where the loop is: saved in every checkpoint, so a killed run resumes at the same place."""

    step: int = 0
    epoch: int = 0
    group: int = 0  # index of the next optimizer step's micro-batch group within the epoch
    best: float = math.inf
    bad_epochs: int = 0  # val evaluations since the best (one per epoch unless eval_every; the checkpoints' name)
    seconds: float = 0.0  # training wall time before this process
    stopped: str = ""  # why training ended: epochs | max_steps | early_stopping ("" while it runs)
    evaluations: int = -1  # val_log's lines (-1 in checkpoints from before they were counted)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, params, optimizer, scheduler, progress: Progress, hooks: Hooks) -> None:
    state = {"params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "progress": asdict(progress), "rng": rng_state(),
             "hooks": hooks.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, params, optimizer, scheduler, hooks: Hooks) -> Progress:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # a checkpoint is data, never code
    except pickle.UnpicklingError:  # weights_only refused an object that is not plain data: never run it
        raise UserError(f"{path}: cannot read the checkpoint (it holds objects that are not tensors or plain data, "
                        "refused unread); delete it or run without resume") from None
    except Exception as e:  # a checkpoint we cannot read is the user's to delete, not a crash
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: cannot read the checkpoint ({why}); delete it or run without resume") from None
    if len(state["params"]) != len(params) or any(a.shape != p.shape for a, p in zip(state["params"], params)):
        raise UserError(f"{path}: the checkpoint does not match this run's adapters; use another output folder")
    with torch.no_grad():
        for p, saved in zip(params, state["params"]):
            p.copy_(saved.to(p.device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = Progress(**state["progress"])
    hooks.load_state_dict(state["hooks"], progress.step)
    set_rng_state(state["rng"])
    return progress


def check_log_length(path: Path, found: int, expected: int, what: str) -> None:
    """A log a resumed run continues must hold one line for each of the checkpoint's steps (or evaluations): one
    cut at a line boundary reads as a valid shorter log."""
    if found != expected:
        raise UserError(f"{path}: {found} lines, but the checkpoint has {expected} {what}; the log is incomplete: "
                        f"{RESUME_FIX}")


def train(model, params: list[torch.nn.Parameter], train_examples: list[dict], val_examples: list[dict],
          settings: TrainOptions, out_dir: str | Path, pad_id: int, device: torch.device,
          save_best: Callable[[], None], hooks: Optional[Hooks] = None, desc: str = "train",
          tracker: Optional[Tracker] = None) -> dict:
    """Train `params` with AdamW + StepLR, early stopping on val loss; returns a summary. `settings`: the
    command's config (its TrainOptions fields).

    A checkpoint (weights, optimizer, scheduler, RNGs, data position, hooks' state) is written every
    `checkpoint_every` steps and at the end of each epoch; `resume` continues from it exactly.
    """
    hooks = hooks or Hooks()
    if settings.gradient_checkpointing:  # non-reentrant: the frozen base needs no input gradients
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    out_dir = Path(out_dir)
    main = distributed.is_main()  # only rank 0 writes files and shows progress
    train_log, val_log, ckpt = out_dir / "train_log.jsonl", out_dir / "val_log.jsonl", out_dir / "checkpoint.pt"
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=settings.gamma)
    hooks.on_start(optimizer)
    progress = Progress(evaluations=0)
    if settings.resume and ckpt.is_file():
        progress = load_checkpoint(ckpt, params, optimizer, scheduler, hooks)
        for name, done, limit in (("max_steps", progress.step, settings.max_steps),
                                  ("epochs", progress.epoch + bool(progress.group), settings.epochs)):
            if limit and done > limit:
                raise OptionError({name: limit}, f"the run in {out_dir.parent} is already past it ({name} done: "
                                                  f"{done}); give at least {done}, or run without <resume>")
        more_steps = not settings.max_steps or progress.step < settings.max_steps
        if progress.stopped in ("max_steps", "epochs") and more_steps and progress.epoch < settings.epochs:
            progress.stopped = ""  # a finished run given more steps or epochs continues
        elif progress.stopped and more_steps and main:
            why = (f"its {settings.epochs} epochs are done (raise --epochs to continue)" if progress.epoch >= settings.epochs
                   else f"it stopped early (no better val loss in {settings.patience} epochs)")
            log.warning("%s: nothing to continue after step %d: %s", out_dir.parent, progress.step, why)
        if main:
            steps = truncate_jsonl(train_log, lambda r: r["step"] <= progress.step)
            evaluations = truncate_jsonl(val_log, lambda r: r["step"] <= progress.step)
            check_log_length(train_log, steps, progress.step, "steps")
            if progress.evaluations < 0:  # an older checkpoint: count them now
                progress.evaluations = evaluations
            check_log_length(val_log, evaluations, progress.evaluations, "evaluations")
    elif main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for log in (train_log, val_log):
            log.unlink(missing_ok=True)

    bar = tqdm(total=total_steps(len(train_examples), settings), initial=progress.step, desc=desc, dynamic_ncols=True,
               disable=not main)

    def checkpoint():
        if main:
            progress.seconds += time.time() - start_of_segment[0]
            start_of_segment[0] = time.time()
            save_checkpoint(ckpt, params, optimizer, scheduler, progress, hooks)

    val_probe = LossProbe(val_examples, pad_id, device, settings.eval_batch_size)
    start_of_segment = [time.time()]

    def evaluate(epoch: int) -> None:
        val = val_probe(model)
        if not math.isfinite(val):
            raise NumericalError(f"{desc}: val loss is {val} at step {progress.step}; "
                                 f"the last good checkpoint in {out_dir} is intact")
        improved = val < progress.best
        progress.evaluations += 1
        if improved:
            progress.best, progress.bad_epochs = val, 0
            if main:
                save_best()
        else:
            progress.bad_epochs += 1
        if main:
            append_jsonl(val_log, {"step": progress.step, "epoch": epoch, "val_loss": val, "best": improved})
            if tracker:
                tracker.log({"val/loss": val}, progress.step)

    def finished() -> bool:
        return bool(settings.max_steps) and progress.step >= settings.max_steps

    def patience_spent() -> bool:
        return bool(settings.patience) and progress.bad_epochs >= settings.patience

    with bar:  # closed on any exit, so an error message starts on a line of its own
        model.train()
        while not progress.stopped:
            epoch = progress.epoch
            order = epoch_order(len(train_examples), settings.seed, epoch)
            batches = _micro_batches(train_examples, order, settings.batch_size)
            groups = [batches[s:s + settings.grad_accum] for s in range(0, len(batches), settings.grad_accum)]
            while progress.group < len(groups) and not finished():
                group = groups[progress.group]
                n_examples = sum(len(mb) for mb in group)
                hooks.on_examples(group)
                local = 0.0
                for mb in group[distributed.rank()::distributed.world()]:  # this rank's share of the step
                    per_example = example_nll(model, collate(mb, pad_id, device))
                    (per_example.sum() / n_examples).backward()
                    local += per_example.sum().item()
                (total_loss,) = distributed.sum_floats([local], device)
                loss_value = total_loss / n_examples
                if not math.isfinite(loss_value):
                    raise NumericalError(f"{desc}: loss is {loss_value} at step {progress.step + 1}; "
                                         f"the last good checkpoint in {out_dir} is intact")
                distributed.sum_gradients(params)
                if not all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
                    raise NumericalError(f"{desc}: non-finite gradient at step {progress.step + 1}; "
                                         f"the last good checkpoint in {out_dir} is intact")
                hooks.before_step(progress.step + 1)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                progress.group += 1
                extra = hooks.after_step(progress.step, loss_value)
                if main:
                    append_jsonl(train_log, {"step": progress.step, "epoch": epoch, "loss": loss_value,
                                             "lr": optimizer.param_groups[0]["lr"], **(extra or {})})
                    if tracker:
                        tracker.log({"train/loss": loss_value, "train/lr": optimizer.param_groups[0]["lr"],
                                     **{f"train/{k}": v for k, v in (extra or {}).items()
                                        if isinstance(v, float)}}, progress.step)
                bar.set_postfix(loss=f"{loss_value:.3f}", **{k: f"{v:.3f}" for k, v in (extra or {}).items()
                                                             if isinstance(v, float)})
                bar.update(1)
                within = progress.group < len(groups) and not finished()  # else the epoch's end evaluates
                if within and settings.eval_every and progress.step % settings.eval_every == 0:
                    evaluate(epoch)
                    if patience_spent():
                        break  # stopped mid-epoch, just evaluated: the epoch's end adds no evaluation
                if within and settings.checkpoint_every and progress.step % settings.checkpoint_every == 0:
                    checkpoint()
            else:
                evaluate(epoch)
            if progress.group >= len(groups):  # a run capped by max_steps mid-epoch keeps its place in it
                scheduler.step()
                progress.epoch, progress.group = epoch + 1, 0
            if finished():
                progress.stopped = "max_steps"
            elif patience_spent():
                progress.stopped = "early_stopping"
            elif progress.epoch >= settings.epochs:
                progress.stopped = "epochs"
            checkpoint()
    seconds = progress.seconds + (time.time() - start_of_segment[0])
    return {"steps": progress.step, "best_val_loss": progress.best, "stopped": progress.stopped, "seconds": seconds}
