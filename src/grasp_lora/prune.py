"""Pruning (SPEC §1.5): importance criteria, masks for a prune ratio, trial masks, commits.

`prune_ratio` p is a drop rate: floor(p * n) entries of each tensor (scope `per_tensor`) or of all
tensors together (scope `global`) are masked, lowest importance first, ties broken by position.

Pruned values are kept (the authors' "stash"). A masked entry is 0 in its weight tensor and its stash
holds the value it takes when revived: under `keep` (default) its value when it was pruned, under `init`
its loaded value, under `zero` 0. A trial (`trial`) revives the stashed entries its mask keeps and
reverts exactly afterwards; a commit stashes and zeroes the newly pruned entries (and their AdamW moments,
only theirs) and revives the un-pruned ones. Under `train` (`straight_through`) nothing is stashed: a masked
entry stays in its weight and keeps training on the straight-through gradient (the gradient it would get if
kept), so a trial or a commit revives it at a current value instead of the one it had when pruned.

Criteria are registered by name in CRITERIA (`@criterion`): a stateless one is a function model -> scores, one
that learns from training (statistics over steps or data) a Criterion subclass. Each scores every entry at the
value it has when kept.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch

from .merge import MergedLoraLinear, merged_layers

log = logging.getLogger(__name__)

SCOPES = ("per_tensor", "global")
RESETS = ("keep", "zero", "init", "train")
REPRUNE = ("every_step", "once")  # a final run re-scores and re-prunes after every optimizer step, or prunes once

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

Batches = Callable[[], Iterable[dict[str, torch.Tensor]]]  # the training set as collated batches, on the device


class Criterion:
    """Scores every prunable entry of a model's merged layers (higher = more important). `batches()` yields the
    training set. A criterion with state overrides `after_backward` (called before each optimizer step),
    `state_dict` and `load_state_dict` (the checkpoint)."""

    def __init__(self, model: torch.nn.Module, batches: Batches):
        self.model, self.batches = model, batches

    def scores(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_backward(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


CRITERIA: dict[str, type[Criterion]] = {}


def criterion(name: str):
    """Register a criterion by name: a function model -> scores, or a Criterion subclass."""
    def register(obj):
        CRITERIA[name] = obj if isinstance(obj, type) else type(
            f"{name}_criterion", (Criterion,), {"scores": lambda self: obj(self.model), "__doc__": obj.__doc__})
        return obj
    return register


@criterion("magnitude")
@torch.no_grad()
def magnitude_scores(model) -> dict[str, torch.Tensor]:
    """|w| of every entry."""
    return {name: layer.full(slot).detach().abs() for name, layer, slot in tensors(model)}


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")


@torch.no_grad()
def input_feature_norms(model, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """n_j: the L2 norm over all (non-pad) tokens of `batches` of input feature j of each merged layer (SPEC §1.5).

    A layer fed by a normalisation module (q/k/v after input_layernorm, gate/up after the post-attention
    norm, in any architecture) is measured on that norm's *input*, the residual stream, under a unit-weight
    RMSNorm: the learned gain is not part of it. Other layers (o_proj, down_proj) on their own input,
    RMS-normalised with unit weight."""
    layers = merged_layers(model)
    device = next(iter(layers.values())).base.weight.device
    sums = {p: torch.zeros(l.base.in_features, dtype=torch.float64, device=device) for p, l in layers.items()}
    norm_io: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(norm output) -> (output, input)
    current_mask: list[torch.Tensor] = []

    def record_norm(module, args, output):
        if isinstance(output, torch.Tensor) and args:
            norm_io[id(output)] = (output, args[0])

    def measure(path):
        def fn(module, args):
            x = args[0]
            seen = norm_io.get(id(x))
            if seen is not None and seen[0] is x and seen[1].shape == x.shape:
                x = seen[1]
            m = current_mask[0].unsqueeze(-1).double()
            sums[path] += (_unit_rms(x).pow(2) * m).sum(dim=tuple(range(x.dim() - 1)))
        return fn

    handles = [m.register_forward_hook(record_norm) for m in model.modules() if _is_norm(m)]
    handles += [layer.register_forward_pre_hook(measure(p)) for p, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            current_mask[:] = [batch["attention_mask"]]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            norm_io.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {p: s.sqrt().float() for p, s in sums.items()}


@torch.no_grad()
def input_weighted_importance(A: torch.Tensor, B: torch.Tensor, norms: torch.Tensor, rows: int = 1024
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """|dS/dA|, |dS/dB| for S = sum_{o,j} |(B A)_{oj}| n_j (the Adaptive LoRA Merge criterion), in closed form:
    with W = sign(B A) * n, dS/dA = B^T W and dS/dB = W A^T. Computed in A's dtype, `rows` output rows of
    B A at a time, so no d_out x d_in matrix is ever whole."""
    n = norms.to(A.dtype)
    gA = torch.zeros_like(A)
    gB = torch.empty_like(B)
    for o in range(0, B.shape[0], rows):
        Bo = B[o:o + rows]
        W = torch.sign(Bo @ A) * n
        gA += Bo.T @ W
        gB[o:o + rows] = W @ A.T
    return gA.abs(), gB.abs()


def input_weighted_scores(model, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    scores = {}
    for path, layer in merged_layers(model).items():
        for i in range(len(layer.lora_A)):
            gA, gB = input_weighted_importance(layer.full(f"A{i}"), layer.full(f"B{i}"), norms[path])
            scores[f"{path}.A{i}"], scores[f"{path}.B{i}"] = gA, gB
    return scores


@criterion("input_weighted")
class InputWeighted(Criterion):
    """Adaptive LoRA Merge's criterion: |d/dw sum_{o,j} |(B A)_{oj}| n_j|, with the input feature norms n_j
    measured once over the training set."""

    norms: dict[str, torch.Tensor] | None = None

    def scores(self) -> dict[str, torch.Tensor]:
        if self.norms is None:
            self.norms = input_feature_norms(self.model, self.batches())
        return input_weighted_scores(self.model, self.norms)

    def state_dict(self) -> dict:
        return {"norms": self.norms}

    def load_state_dict(self, state: dict) -> None:
        self.norms = state["norms"]


@criterion("sensitivity")
class Sensitivity(Criterion):
    """AdaLoRA-style sensitivity: EMA of |w * grad| times EMA of its deviation from that EMA."""

    beta1 = beta2 = 0.85

    def __init__(self, model, batches: Batches):
        super().__init__(model, batches)
        self.ipt: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def after_backward(self) -> None:
        for name, layer, slot in tensors(self.model):
            p = layer.param(slot)
            if p.grad is None:
                continue
            ipt = (p * p.grad).abs()
            if name not in self.ipt:
                self.ipt[name], self.unc[name] = torch.zeros_like(ipt), torch.zeros_like(ipt)
            self.ipt[name].mul_(self.beta1).add_(ipt, alpha=1 - self.beta1)
            self.unc[name].mul_(self.beta2).add_((ipt - self.ipt[name]).abs(), alpha=1 - self.beta2)

    def scores(self) -> dict[str, torch.Tensor]:
        if not self.ipt:  # before the first backward there is no sensitivity yet
            log.warning("sensitivity: no gradient seen yet; scoring by magnitude this once")
            return magnitude_scores(self.model)
        return {name: self.ipt[name] * self.unc[name] for name, _, _ in tensors(self.model)}

    def state_dict(self) -> dict:
        return {"ipt": self.ipt, "unc": self.unc}

    def load_state_dict(self, state: dict) -> None:
        self.ipt, self.unc = dict(state["ipt"]), dict(state["unc"])


# ------------------------------------------------------------------ applying masks to a model

def current_masks(model) -> Masks:
    return {name: layer.mask(slot).clone() for name, layer, slot in tensors(model)}


@torch.no_grad()
def set_masks(model, masks: Masks) -> None:
    """Set the mask buffers only (restoring a checkpoint, whose weights and stashes are restored with it)."""
    for name, layer, slot in tensors(model):
        layer.set_mask(slot, masks[name])


def straight_through(model) -> None:
    """Reset `train`: masked entries keep training on the straight-through gradient (set before training)."""
    for layer in merged_layers(model).values():
        layer.straight_through = True


@contextmanager
def trial(model, masks: Masks):
    """Evaluate the model under `masks` with every entry they keep at its true value (stashed entries
    revived), then revert exactly: the weights, stashes and masks are as before."""
    changed = []
    with torch.no_grad():
        for name, layer, slot in tensors(model):
            old = layer.mask(slot).clone()
            # a straight-through weight holds its masked entries' values already
            revived = torch.zeros_like(old) if layer.straight_through else masks[name].to(old.device) & ~old
            layer.param(slot)[revived] = layer.stash(slot)[revived]
            layer.set_mask(slot, masks[name])
            changed.append((layer, slot, old, revived))
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, slot, old, revived in changed:
                layer.param(slot)[revived] = 0.0
                layer.set_mask(slot, old)


@torch.no_grad()
def commit_masks(model, masks: Masks, reset: str = "keep", optimizer: torch.optim.Optimizer | None = None,
                 initial: dict[str, torch.Tensor] | None = None) -> int:
    """Make `masks` the model's masks. Newly pruned entries are stashed (`reset`: keep their value, or
    zero, or init = their loaded value from `initial`), set to 0 and lose their AdamW moments; entries
    the new masks keep again take their stashed value. Under `train` only the masks change (the model must be
    `straight_through`). Returns how many entries were newly pruned."""
    if reset not in RESETS:
        raise ValueError(f"reset {reset!r}: choose one of {', '.join(RESETS)}")
    newly = 0
    for name, layer, slot in tensors(model):
        old, new = layer.mask(slot), masks[name].to(layer.mask(slot).device)
        if reset == "train":
            if not layer.straight_through:
                raise ValueError("reset 'train' needs prune.straight_through(model) before training")
            newly += int((old & ~new).sum())
            layer.set_mask(slot, new)
            continue
        p, stash = layer.param(slot), layer.stash(slot)
        revived, pruned_now = new & ~old, old & ~new
        p[revived] = stash[revived]
        n = int(pruned_now.sum())
        newly += n
        if n:
            if reset == "keep":
                stash[pruned_now] = p[pruned_now]
            elif reset == "zero":
                stash[pruned_now] = 0.0
            else:
                stash[pruned_now] = initial[name].to(p.device, p.dtype)[pruned_now]
            p[pruned_now] = 0.0
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][pruned_now] = 0.0
        layer.set_mask(slot, new)
    return newly


def stashes(model) -> dict[str, torch.Tensor]:
    return {name: layer.stash(slot).clone() for name, layer, slot in tensors(model)}


@torch.no_grad()
def set_stashes(model, values: dict[str, torch.Tensor]) -> None:
    for name, layer, slot in tensors(model):
        layer.stash(slot).copy_(values[name])


def initial_values(model) -> dict[str, torch.Tensor]:
    """The loaded values of every prunable tensor (the `init` reset restores these)."""
    return {name: layer.param(slot).detach().clone() for name, layer, slot in tensors(model)}
