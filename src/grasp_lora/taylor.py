"""Probes without a forward: the loss change of a mask change, estimated from the training gradients.

A controller round asks how the loss would change if the merged adapter were pruned at a candidate ratio instead of
the committed one. A forward probe measures it (a micro-dev pass per candidate, about twice the training it steers
at the paper's protocol: issue 24). This estimates it from what training computes anyway, in the manner of Optimal
Brain Damage (LeCun et al. 1990) with the empirical Fisher as the curvature: with d = w_candidate - w_now (entries
the candidate prunes go to 0, entries it revives take their stashed value),

    dL ~= a * sum(g * d) + b * 1/2 * sum(F * d^2)

g: the mean gradient of the training loss over the steps since the last round, at every entry, masked ones included
(their gradient is what reviving them would start from); F: the mean squared per-example gradient (the empirical
Fisher, diagonal); a and b are fitted to the changes that forward probes measure (controller.calibrate): the
empirical Fisher is not the curvature, only its shape, and a mask the model has trained under costs more to leave in
either direction than a local expansion says (benchmarks/RESULTS.md). Masked entries hold 0 in their weight (every
reset but `train`), so the forward can use the weight as it is and autograd gives every entry its gradient
(MergedLoraLinear.full_gradient); the masked entries' gradients are zeroed after they are read, so training is
unchanged.
"""

from __future__ import annotations

import torch

from . import prune
from .merge import merged_layers


def loss_change(g: torch.Tensor, fisher: torch.Tensor, now: torch.Tensor, new: torch.Tensor) -> tuple[float, float]:
    """The first- and second-order terms of the estimated loss change when one tensor goes from `now` to `new`."""
    d = (new - now).double()
    return float((g.double() * d).sum()), float(0.5 * (fisher.double() * d * d).sum())


class GradientMoments:
    """The mean gradient and the empirical Fisher of every prunable entry over a round's training steps.

    A step's gradient g is the mean of its `per_step` examples' gradients, so E[per_step * g^2] is the per-example
    Fisher plus (per_step - 1) * the squared mean gradient: exact at one example per step (the paper's controller
    run), an overestimate where the mean gradient is large at larger steps. Kept in float32, factor-shaped."""

    def __init__(self, model: torch.nn.Module, per_step: int):
        self.model, self.per_step = model, per_step
        for layer in merged_layers(model).values():
            layer.full_gradient = True
        self.reset()

    def reset(self) -> None:
        self.sum_g: dict[str, torch.Tensor] = {}
        self.sum_g2: dict[str, torch.Tensor] = {}
        self.steps = 0

    @torch.no_grad()
    def add_step(self) -> None:
        """Read one optimizer step's gradients (summed over its micro-batches), then zero the masked entries'."""
        for name, layer, slot in prune.tensors(self.model):
            p = layer.param(slot)
            if p.grad is None:
                continue
            g = p.grad.float()
            if name not in self.sum_g:
                self.sum_g[name], self.sum_g2[name] = torch.zeros_like(g), torch.zeros_like(g)
            self.sum_g[name] += g
            self.sum_g2[name] += g * g * self.per_step
            if not layer.straight_through:
                p.grad[~layer.mask(slot)] = 0.0
        self.steps += 1

    @torch.no_grad()
    def estimate(self, masks: prune.Masks) -> list[float]:
        """[first-order, second-order] terms of the loss change of committing `masks` instead of the current ones,
        summed over every tensor (0 before any step)."""
        total = [0.0, 0.0]
        if not self.steps:
            return total
        for name, layer, slot in prune.tensors(self.model):
            if name not in self.sum_g:
                continue
            full, now_mask = layer.full(slot), layer.mask(slot)
            now = torch.where(now_mask, full, torch.zeros_like(full))
            new = torch.where(masks[name].to(full.device), full, torch.zeros_like(full))
            terms = loss_change(self.sum_g[name] / self.steps, self.sum_g2[name] / self.steps, now, new)
            total = [t + x for t, x in zip(total, terms)]
        return total

    def state_dict(self) -> dict:
        return {"sum_g": self.sum_g, "sum_g2": self.sum_g2, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sum_g, self.sum_g2, self.steps = dict(state["sum_g"]), dict(state["sum_g2"]), state["steps"]
