"""Pruning (SPEC §1.5): importance criteria, masks for a prune ratio, trial masks, commits.

`prune_ratio` p is a drop rate: floor(p * n) entries of each tensor (scope `per_tensor`) or of all
tensors together (scope `global`) are masked, lowest importance first, ties broken by position.
Trial masks only swap the mask buffers (the forward multiplies by them), so reverting is exact.
Committing zeroes (or restores to their loaded value) the newly pruned weights and zeroes their AdamW
moments, and only theirs.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import torch

from .merge import MergedLoraLinear, merged_layers
from .train import collate

log = logging.getLogger(__name__)

CRITERIA = ("magnitude", "input_weighted", "sensitivity")
SCOPES = ("per_tensor", "global")
RESETS = ("zero", "init")

Masks = dict[str, torch.Tensor]  # tensor name "module.A0" -> bool keep-mask


def tensors(model) -> Iterator[tuple[str, MergedLoraLinear, str]]:
    """(name, layer, slot) for every prunable tensor, in a fixed order."""
    for path, layer in merged_layers(model).items():
        for slot in layer.slots():
            yield f"{path}.{slot}", layer, slot


# ------------------------------------------------------------------ masks (pure tensor functions)

def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k lowest scores; ties go to the earlier position (stable sort)."""
    return torch.sort(scores, stable=True).indices[:k]


def masks_for_ratio(scores: dict[str, torch.Tensor], ratio: float, scope: str = "per_tensor") -> Masks:
    """Keep-masks that drop exactly floor(ratio * n) entries, lowest score first."""
    masks = {}
    if scope == "per_tensor":
        for name, s in scores.items():
            flat = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
            flat[_lowest(s.flatten().double(), math.floor(ratio * s.numel()))] = False
            masks[name] = flat.view_as(s)
        return masks
    names = list(scores)
    flat_scores = torch.cat([scores[n].flatten().double().cpu() for n in names])
    keep = torch.ones(flat_scores.numel(), dtype=torch.bool)
    keep[_lowest(flat_scores, math.floor(ratio * flat_scores.numel()))] = False
    start = 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[start:start + size].view_as(scores[n]).to(scores[n].device)
        start += size
    return masks


def kept_fraction(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / total


# ------------------------------------------------------------------ importance criteria

@torch.no_grad()
def magnitude_scores(model) -> dict[str, torch.Tensor]:
    return {name: layer.param(slot).detach().abs() for name, layer, slot in tensors(model)}


@torch.no_grad()
def input_feature_norms(model, examples: list[dict], pad_id: int, device, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """n_j: the L2 norm over all (non-pad) training tokens of input feature j of each merged layer,
    each token's input RMS-normalised with unit weight."""
    layers = merged_layers(model)
    sums = {p: torch.zeros(l.base.in_features, dtype=torch.float64, device=device) for p, l in layers.items()}
    current_mask: list[torch.Tensor] = []

    def hook(path):
        def fn(module, args):
            x = args[0].double()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            m = current_mask[0].unsqueeze(-1).to(x.dtype)
            sums[path] += (x.pow(2) * m).sum(dim=tuple(range(x.dim() - 1)))
        return fn

    handles = [layer.register_forward_pre_hook(hook(p)) for p, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(examples), batch_size):
            batch = collate(examples[s:s + batch_size], pad_id, device)
            current_mask[:] = [batch["attention_mask"]]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {p: s.sqrt().float() for p, s in sums.items()}


def input_weighted_importance(A: torch.Tensor, B: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|dS/dA|, |dS/dB| for S = sum_{o,j} |(B A)_{oj}| n_j (the Adaptive LoRA Merge criterion)."""
    A = A.detach().double().requires_grad_(True)
    B = B.detach().double().requires_grad_(True)
    S = ((B @ A).abs() * norms.double().unsqueeze(0)).sum()
    gA, gB = torch.autograd.grad(S, (A, B))
    return gA.abs().float(), gB.abs().float()


def input_weighted_scores(model, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scores = {}
    for path, layer in merged_layers(model).items():
        for i in range(len(layer.lora_A)):
            gA, gB = input_weighted_importance(layer.masked(f"A{i}"), layer.masked(f"B{i}"), norms[path])
            scores[f"{path}.A{i}"], scores[f"{path}.B{i}"] = gA, gB
    return scores


class SensitivityTracker:
    """AdaLoRA-style sensitivity: EMA of |w * grad| times EMA of its deviation from that EMA."""

    def __init__(self, beta1: float = 0.85, beta2: float = 0.85):
        self.beta1, self.beta2 = beta1, beta2
        self.ipt: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model) -> None:
        """Call after backward, before the optimizer step."""
        for name, layer, slot in tensors(model):
            p = layer.param(slot)
            if p.grad is None:
                continue
            ipt = (p * p.grad).abs()
            if name not in self.ipt:
                self.ipt[name], self.unc[name] = torch.zeros_like(ipt), torch.zeros_like(ipt)
            self.ipt[name].mul_(self.beta1).add_(ipt, alpha=1 - self.beta1)
            self.unc[name].mul_(self.beta2).add_((ipt - self.ipt[name]).abs(), alpha=1 - self.beta2)

    def scores(self, model) -> dict[str, torch.Tensor]:
        if not self.ipt:  # before the first backward there is no sensitivity yet
            log.warning("sensitivity: no gradient seen yet; scoring by magnitude this once")
            return magnitude_scores(model)
        return {name: self.ipt[name] * self.unc[name] for name, _, _ in tensors(model)}

    def state_dict(self) -> dict:
        return {"ipt": self.ipt, "unc": self.unc}

    def load_state_dict(self, state: dict) -> None:
        self.ipt, self.unc = dict(state["ipt"]), dict(state["unc"])


# ------------------------------------------------------------------ applying masks to a model

def current_masks(model) -> Masks:
    return {name: layer.mask(slot).clone() for name, layer, slot in tensors(model)}


@torch.no_grad()
def set_masks(model, masks: Masks) -> None:
    """Swap the mask buffers only (a trial, or its exact revert); weights are untouched."""
    for name, layer, slot in tensors(model):
        layer.set_mask(slot, masks[name])


@torch.no_grad()
def commit_masks(model, masks: Masks, reset: str = "zero", optimizer: torch.optim.Optimizer | None = None,
                 initial: dict[str, torch.Tensor] | None = None) -> int:
    """Make `masks` the model's masks. Newly pruned entries are reset (to zero, or to `initial`, their
    loaded values) and lose their AdamW moments. Returns how many entries were newly pruned."""
    newly = 0
    for name, layer, slot in tensors(model):
        old, new = layer.mask(slot), masks[name].to(layer.mask(slot).device)
        pruned_now = old & ~new
        n = int(pruned_now.sum())
        newly += n
        if n:
            p = layer.param(slot)
            p[pruned_now] = 0.0 if reset == "zero" else initial[name].to(p.device, p.dtype)[pruned_now]
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][pruned_now] = 0.0
        layer.set_mask(slot, new)
    return newly


def initial_values(model) -> dict[str, torch.Tensor]:
    """The loaded values of every prunable tensor (the `init` reset restores these)."""
    return {name: layer.param(slot).detach().clone() for name, layer, slot in tensors(model)}
