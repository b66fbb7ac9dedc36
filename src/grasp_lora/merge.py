"""The merged multi-adapter layer (SPEC §1.4): N LoRA adapters on one frozen nn.Linear, all trainable.

Two forms, both computed through the low-rank path (never a d_out x d_in matrix per forward):
- `sum`   (exact):  dW = sum_i s_i B_i A_i, s_i = alpha_i / r_i;  y += B_cat diag(s) (A_cat x)
- `paper` (the authors' code): dW = (sum_i B_i)(sum_i A_i), no scaling, equal ranks

Masks (prune.py) are applied in the forward as w * mask, so masked entries also get zero gradient. Each
tensor has a `stash` beside it: the value a masked entry takes when a trial or a commit revives it.
Dropout, as PEFT: one per adapter in the `sum` form (each adapter's own rate); the `paper` form has one
on the shared input, none by default (the authors' code has none).
Export writes ONE standard PEFT adapter that reproduces the merged layer exactly.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters import load_adapter_config
from .errors import UserError
from .io import atomic_path, write_json

FORMS = ("sum", "paper")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoadedAdapter:
    path: str
    config: dict
    weights: dict[str, dict[str, torch.Tensor]]  # module path -> {"A": [r, in], "B": [out, r]}

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scale(self) -> float:
        alpha = float(self.config["lora_alpha"])
        return alpha / math.sqrt(self.rank) if self.config.get("use_rslora") else alpha / self.rank

    @property
    def target_modules(self) -> set[str]:
        tm = self.config["target_modules"]
        return {tm} if isinstance(tm, str) else set(tm)


def load_adapter(path: str | Path) -> LoadedAdapter:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = load_adapter_config(path)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError(f"{path}/adapter_config.json: rank_pattern/alpha_pattern are not supported; use one rank")
    try:
        state = load_file(path / "adapter_model.safetensors")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}/adapter_model.safetensors: cannot read it ({e}); re-save the adapter") from None
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _KEY.match(key)
        if not m:
            raise UserError(f"{path}/adapter_model.safetensors: unexpected tensor '{key}'; only LoRA A/B weights are supported")
        weights.setdefault(m["module"], {})[m["ab"]] = tensor.float()
    for module, ab in weights.items():
        if set(ab) != {"A", "B"}:
            raise UserError(f"{path}/adapter_model.safetensors: {module} lacks its lora_{'B' if 'A' in ab else 'A'} weight")
        if ab["A"].shape[0] != int(config["r"]) or ab["B"].shape[1] != int(config["r"]):
            raise UserError(f"{path}: {module} has rank {ab['A'].shape[0]} but adapter_config.json says r={config['r']}")
    if not weights:
        raise UserError(f"{path}/adapter_model.safetensors: no LoRA weights in it")
    return LoadedAdapter(str(path), config, weights)


def check_compatible(adapters: list[LoadedAdapter], form: str, base_id: str | None = None) -> None:
    """Refuse adapters made for another base model, other target modules, or (paper form) another rank."""
    first = adapters[0]
    for other in adapters[1:]:
        if other.target_modules != first.target_modules or set(other.weights) != set(first.weights):
            raise UserError(f"{other.path}: targets {sorted(other.target_modules)} but {first.path} targets "
                            f"{sorted(first.target_modules)}; merge adapters trained on the same modules")
        if form == "paper" and other.rank != first.rank:
            raise UserError(f"{other.path}: rank {other.rank} differs from {first.path}'s rank {first.rank}; "
                            "--merge-form paper needs equal ranks (use --merge-form sum)")
    bases = {a.config.get("base_model_name_or_path") for a in adapters} - {None}
    if len(bases) > 1:
        raise UserError("adapters were made for different base models: "
                        + "; ".join(f"{a.path} -> {a.config.get('base_model_name_or_path')}" for a in adapters))
    if base_id is not None and bases and bases != {base_id}:
        raise UserError(f"{first.path}: made for base model {bases.pop()}, not {base_id}; "
                        "use its base model with --model (or edit base_model_name_or_path if it is the same model)")


class MergedLoraLinear(nn.Module):
    """A frozen nn.Linear plus N trainable LoRA adapters combined in the `sum` or `paper` form."""

    def __init__(self, base: nn.Linear, As: list[torch.Tensor], Bs: list[torch.Tensor], scales: list[float],
                 form: str, dropouts: list[float]):
        """`dropouts`: one rate per adapter (`sum`) or one for the shared input (`paper`)."""
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"merge form {form!r}: choose one of {', '.join(FORMS)}")
        if len(dropouts) != (len(As) if form == "sum" else 1):
            raise ValueError(f"{len(dropouts)} dropout rates for {len(As)} adapters in the {form} form")
        self.base, self.form = base, form
        dev = base.weight.device
        self.lora_A = nn.ParameterList([nn.Parameter(a.clone().float().to(dev)) for a in As])
        self.lora_B = nn.ParameterList([nn.Parameter(b.clone().float().to(dev)) for b in Bs])
        self.scales = list(scales)
        self.dropouts = nn.ModuleList([nn.Dropout(p) if p > 0 else nn.Identity() for p in dropouts])
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
        return torch.where(self.mask(slot), self.param(slot), self.stash(slot))

    def masked(self, slot: str) -> torch.Tensor:
        return self.param(slot) * self.mask(slot)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) of one equivalent LoRA: dW = B @ A (scales folded into B)."""
        n = len(self.lora_A)
        if self.form == "sum":
            A = torch.cat([self.masked(f"A{i}") for i in range(n)], 0)
            B = torch.cat([self.masked(f"B{i}") * s for i, s in zip(range(n), self.scales)], 1)
        else:
            A = sum(self.masked(f"A{i}") for i in range(n))
            B = sum(self.masked(f"B{i}") for i in range(n))
        return B, A

    def _dropout_active(self) -> bool:
        return self.training and any(isinstance(d, nn.Dropout) for d in self.dropouts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.form == "sum" and self._dropout_active():
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


def dropout_rates(adapters: list[LoadedAdapter], form: str, dropout: float | None) -> list[float]:
    """Per adapter its own lora_dropout (`sum`, as PEFT), none for `paper` (as the authors); `dropout` overrides."""
    if form == "paper":
        return [dropout or 0.0]
    return [float(a.config.get("lora_dropout") or 0.0) if dropout is None else dropout for a in adapters]


def inject(model: nn.Module, adapters: list[LoadedAdapter], form: str, dropout: float | None = None
           ) -> dict[str, MergedLoraLinear]:
    """Replace each adapted nn.Linear of `model` by a MergedLoraLinear holding every adapter's A and B.
    `dropout` (None: see dropout_rates) applies to every adapter."""
    rates = dropout_rates(adapters, form, dropout)
    layers = {}
    for path in sorted(adapters[0].weights):
        base = _get_module(model, path)
        if not isinstance(base, nn.Linear):
            raise UserError(f"{adapters[0].path}: module {path} is not an nn.Linear of this model; "
                            "the adapter was made for another architecture")
        As = [a.weights[path]["A"] for a in adapters]
        Bs = [a.weights[path]["B"] for a in adapters]
        for a, A, B in zip(adapters, As, Bs):
            if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
                raise UserError(f"{a.path}: {path} is {B.shape[0]}x{A.shape[1]} but the model's layer is "
                                f"{base.out_features}x{base.in_features}; the adapter was made for another base model")
        layer = MergedLoraLinear(base, As, Bs, [a.scale for a in adapters], form, rates)
        _set_module(model, path, layer)
        layers[path] = layer
    return layers


def merged_layers(model: nn.Module) -> dict[str, MergedLoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MergedLoraLinear)}


def write_peft_adapter(out: str | Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], lora_alpha: float,
                       dropout: float, base_id: str) -> None:
    """Write {module path: (B, A)} as a standard PEFT LoRA adapter folder (each file atomically)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out = Path(out)
    state, ranks = {}, set()
    for path, (B, A) in factors.items():
        ranks.add(A.shape[0])
        state[f"base_model.model.{path}.lora_A.weight"] = A.detach().float().cpu().contiguous()
        state[f"base_model.model.{path}.lora_B.weight"] = B.detach().float().cpu().contiguous()
    (rank,) = ranks
    targets = sorted({path.rsplit(".", 1)[-1] for path in factors})
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_id)
    cfg = json.loads(json.dumps(config.to_dict(), default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    with atomic_path(out / "adapter_model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(out / "adapter_config.json", cfg)


@torch.no_grad()
def export_peft(layers: dict[str, MergedLoraLinear], out: str | Path, base_id: str, dropout: float) -> None:
    """Write the merged (and masked) adapter as ONE standard PEFT LoRA adapter.

    sum:   rank sum_i r_i, B = [s_1 B_1 | s_2 B_2 | ...], A = [A_1; A_2; ...], lora_alpha = rank (scale 1)
    paper: rank r, B = sum_i B_i, A = sum_i A_i, lora_alpha = r (scale 1)
    """
    factors = {path: layer.factors() for path, layer in layers.items()}
    rank = next(iter(factors.values()))[1].shape[0]
    write_peft_adapter(out, factors, rank, dropout, base_id)
