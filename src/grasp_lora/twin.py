"""The second member of a paired controller run (controller `pair`): its own LoRA values, masks, stashes and AdamW
moments, trained on the same examples as the run, one step after each of the run's, at a ratio of its own.

Why a member and not a probe: a probe masks weights that trained under another mask, so it measures the cost of
leaving that mask as much as the ratio (the anchoring in benchmarks/RESULTS.md); a member is scored at the ratio it
trains under, as a grid run is, and the two members see the same examples in the same order, so the data's common
level cancels in their difference. Only one member lives in the model at a time: `swapped` puts the other in.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from . import prune
from .data.batching import collate
from .train import example_nll


class Twin:
    def __init__(self, model, params: list[torch.nn.Parameter], lr: float, weight_decay: float):
        """A copy of the model's current trainable values, masks and stashes, with an optimizer of its own over the
        same parameter objects (its moments are the twin's; the run's optimizer never sees them)."""
        self.model, self.params = model, params
        self.values = [p.detach().clone() for p in params]
        self.masks, self.stashes = prune.current_masks(model), prune.stashes(model)
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    @torch.no_grad()
    def _exchange(self) -> None:
        """Swap the model's values, masks and stashes with the twin's."""
        live = [p.detach().clone() for p in self.params], prune.current_masks(self.model), prune.stashes(self.model)
        for p, v in zip(self.params, self.values):
            p.copy_(v)
        prune.set_masks(self.model, self.masks)
        prune.set_stashes(self.model, self.stashes)
        self.values, self.masks, self.stashes = live

    @contextmanager
    def swapped(self):
        """The twin in the model (what it does there -- a step, a commit -- is the twin's), then the run back."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    def step(self, group: list[list[dict]], pad_id: int, device: torch.device, lr: float) -> float:
        """One optimizer step of the twin on a step's micro-batches (the run's loss: the mean of each example's mean
        target NLL); returns that loss."""
        n = sum(len(mb) for mb in group)
        total = 0.0
        for g in self.optimizer.param_groups:
            g["lr"] = lr  # the run's schedule
        with self.swapped():
            for mb in group:
                per_example = example_nll(self.model, collate(mb, pad_id, device))
                (per_example.sum() / n).backward()
                total += per_example.sum().item()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total / n

    def commit(self, masks: prune.Masks, reset: str, initial: dict | None) -> int:
        """Make `masks` the twin's (prune.commit_masks with the twin's own optimizer moments)."""
        with self.swapped():
            return prune.commit_masks(self.model, masks, reset, self.optimizer, initial)

    def run(self, fn):
        """fn() with the twin in the model (its loss, its importance scores)."""
        with self.swapped():
            return fn()

    def state_dict(self) -> dict:
        return {"values": [v.cpu() for v in self.values], "masks": self.masks, "stashes": self.stashes,
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.values = [v.to(p.device) for v, p in zip(state["values"], self.params)]
        self.masks, self.stashes = state["masks"], state["stashes"]
        self.optimizer.load_state_dict(state["optimizer"])
