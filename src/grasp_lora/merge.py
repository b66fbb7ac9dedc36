"""The merged multi-adapter layer (SPEC §1.4): N LoRA adapters on one frozen nn.Linear, all trainable.

Merge forms are registered by name in FORMS (as mergekit's merge methods): a form is one pure function of
the adapters' tensors, (As, Bs, scales) -> (B, A) of one equivalent LoRA, used through the low-rank path
(never a d_out x d_in matrix per forward):
- `sum`   (exact):  dW = sum_i s_i B_i A_i, s_i = alpha_i / r_i;  y += B_cat diag(s) (A_cat x)
- `paper` (the authors' code): dW = (sum_i B_i)(sum_i A_i), no scaling, equal ranks

Masks (prune.py) are applied in the forward as w * mask, so masked entries also get zero gradient. Each
tensor has a `stash` beside it: the value a masked entry takes when a trial or a commit revives it. With
`straight_through` (prune reset `train`) masked entries instead stay in the weight and keep training on the
straight-through gradient: the forward still sees w * mask. With `full_gradient` (taylor.GradientMoments) a training
forward uses w as it is, equal to w * mask since a committed masked entry holds 0, so every entry gets its
gradient; the reader zeroes the masked entries' gradients before the optimizer step.
Dropout, as PEFT: one per adapter in the `sum` form (each adapter's own rate); the `paper` form has one
on the shared input, none by default (the authors' code has none).
Tensors only: reading, checking and writing adapter files is adapter_io.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

Factors = Callable[[list[torch.Tensor], list[torch.Tensor], list[float]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MergeForm:
    factors: Factors  # (As, Bs, scales) -> (B, A), scales folded into B
    per_adapter_dropout: bool  # the update is a sum of per-adapter terms, each with its own dropout (as PEFT)
    equal_ranks: bool  # the form needs adapters of one rank


FORMS: dict[str, MergeForm] = {}


def merge_form(name: str, *, per_adapter_dropout: bool, equal_ranks: bool) -> Callable[[Factors], Factors]:
    """Register a merge form: one function (As, Bs, scales) -> (B, A)."""
    def register(fn: Factors) -> Factors:
        FORMS[name] = MergeForm(fn, per_adapter_dropout, equal_ranks)
        return fn
    return register


@merge_form("sum", per_adapter_dropout=True, equal_ranks=False)
def sum_factors(As, Bs, scales):
    """dW = sum_i s_i B_i A_i exactly: B = [s_1 B_1 | s_2 B_2 | ...], A = [A_1; A_2; ...] (rank sum_i r_i)."""
    return torch.cat([B * s for B, s in zip(Bs, scales)], 1), torch.cat(As, 0)


@merge_form("paper", per_adapter_dropout=False, equal_ranks=True)
def paper_factors(As, Bs, scales):
    """The authors' code: B = sum_i B_i, A = sum_i A_i, unscaled (rank r)."""
    return sum(Bs), sum(As)


class Adapter(Protocol):
    """What `inject` needs of an adapter (adapter_io.LoadedAdapter is one)."""
    path: str
    weights: dict[str, dict[str, torch.Tensor]]  # module path -> {"A": [r, in], "B": [out, r]}
    scale: float
    dropout: float


class MergedLoraLinear(nn.Module):
    """A frozen nn.Linear plus N trainable LoRA adapters combined in the `sum` or `paper` form."""

    def __init__(self, base: nn.Linear, As: list[torch.Tensor], Bs: list[torch.Tensor], scales: list[float],
                 form: str, dropouts: list[float]):
        """`form`: a name in FORMS; `dropouts`: one rate per adapter (`sum`) or one for the shared input (`paper`)."""
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"merge_form {form!r}: choose one of {', '.join(FORMS)}")
        if len(dropouts) != (len(As) if FORMS[form].per_adapter_dropout else 1):
            raise ValueError(f"dropouts: {len(dropouts)} rates for {len(As)} adapters in the {form} form")
        self.base, self.form = base, form
        dev = base.weight.device
        self.lora_A = nn.ParameterList([nn.Parameter(a.clone().float().to(dev)) for a in As])
        self.lora_B = nn.ParameterList([nn.Parameter(b.clone().float().to(dev)) for b in Bs])
        self.scales = list(scales)
        self.dropouts = nn.ModuleList([nn.Dropout(p) if p > 0 else nn.Identity() for p in dropouts])
        self.straight_through = False
        self.full_gradient = False
        for slot in self.slots():
            self.register_buffer(f"mask_{slot}", torch.ones_like(self.param(slot), dtype=torch.bool), persistent=False)
            self.register_buffer(f"stash_{slot}", torch.zeros_like(self.param(slot)), persistent=False)

    # slots name the trainable tensors: "A0", "B0", "A1", ...
    def slots(self) -> list[str]:
        return [f"{ab}{i}" for i in range(len(self.lora_A)) for ab in "AB"]

    def param(self, slot: str) -> nn.Parameter:
        return (self.lora_A if slot[0] == "A" else self.lora_B)[int(slot[1:])]

    def mask(self, slot: str) -> torch.Tensor:
        return getattr(self, f"mask_{slot}")

    def set_mask(self, slot: str, mask: torch.Tensor) -> None:
        getattr(self, f"mask_{slot}").copy_(mask)

    def stash(self, slot: str) -> torch.Tensor:
        return getattr(self, f"stash_{slot}")

    def full(self, slot: str) -> torch.Tensor:
        """Every entry at the value it has when kept: the live weight, or the stash where masked."""
        if self.straight_through:
            return self.param(slot)
        return torch.where(self.mask(slot), self.param(slot), self.stash(slot))

    def masked(self, slot: str) -> torch.Tensor:
        w, m = self.param(slot), self.mask(slot)
        if self.straight_through:  # the value w * m exactly (w - w = 0), the gradient of w unmasked
            return w + (w * m - w).detach()
        if self.full_gradient and torch.is_grad_enabled():
            # training: masked entries hold 0, so w is w * m and autograd gives them their gradient too (a trial, under
            # no_grad, masks entries that still hold their values)
            return w
        return w * m

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) of one equivalent LoRA: dW = B @ A (scales folded into B)."""
        n = len(self.lora_A)
        return FORMS[self.form].factors([self.masked(f"A{i}") for i in range(n)],
                                        [self.masked(f"B{i}") for i in range(n)], self.scales)

    def _dropout_active(self) -> bool:
        return self.training and any(isinstance(d, nn.Dropout) for d in self.dropouts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if FORMS[self.form].per_adapter_dropout and self._dropout_active():
            # one dropout draw per adapter (as PEFT), so the adapters cannot share one factor product
            delta = sum(((d(x).to(self.lora_A[i].dtype) @ self.masked(f"A{i}").T) @ self.masked(f"B{i}").T) * s
                        for i, (d, s) in enumerate(zip(self.dropouts, self.scales)))
            return y + delta.to(y.dtype)
        B, A = self.factors()
        h = self.dropouts[0](x).to(A.dtype)
        return y + ((h @ A.T) @ B.T).to(y.dtype)


def _get_module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def dropout_rates(adapters: list[Adapter], form: str, dropout: float | None) -> list[float]:
    """Per adapter its own lora_dropout (`sum`, as PEFT), none for `paper` (as the authors); `dropout` overrides."""
    if not FORMS[form].per_adapter_dropout:
        return [dropout or 0.0]
    return [a.dropout if dropout is None else dropout for a in adapters]


def inject(model: nn.Module, adapters: list[Adapter], form: str, dropout: float | None = None
           ) -> dict[str, MergedLoraLinear]:
    """Replace each adapted nn.Linear of `model` by a MergedLoraLinear holding every adapter's A and B.
    `dropout` (None: see dropout_rates) applies to every adapter. A module the model lacks or whose shape
    differs is a ValueError naming the adapter."""
    rates = dropout_rates(adapters, form, dropout)
    layers = {}
    for path in sorted(adapters[0].weights):
        base = _get_module(model, path)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"{adapters[0].path}: module {path} is not an nn.Linear of this model; "
                             "the adapter was made for another architecture")
        As = [a.weights[path]["A"] for a in adapters]
        Bs = [a.weights[path]["B"] for a in adapters]
        for a, A, B in zip(adapters, As, Bs):
            if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
                raise ValueError(f"{a.path}: {path} is {B.shape[0]}x{A.shape[1]} but the model's layer is "
                                 f"{base.out_features}x{base.in_features}; the adapter was made for another base model")
        layer = MergedLoraLinear(base, As, Bs, [a.scale for a in adapters], form, rates)
        _set_module(model, path, layer)
        layers[path] = layer
    return layers


def merged_layers(model: nn.Module) -> dict[str, MergedLoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MergedLoraLinear)}

