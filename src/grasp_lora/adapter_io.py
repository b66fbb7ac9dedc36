"""Standard PEFT LoRA adapter folders: read and check them, put them on a model, write them (each file atomically)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import OptionError, UserError
from .files import TMP_SUFFIX, atomic_path, file_mode, raise_write_error, write_json
from .merge import FORMS, MergedLoraLinear, inject
from .models import base_identity, base_model_id

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
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
    def dropout(self) -> float:
        return float(self.config.get("lora_dropout") or 0.0)

    @property
    def target_modules(self) -> set[str]:
        tm = self.config["target_modules"]
        return {tm} if isinstance(tm, str) else set(tm)


def load_adapter_config(path: str | Path) -> dict:
    """Read and check a PEFT adapter folder's adapter_config.json."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError(f"{path}: adapter_model.safetensors is missing")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{cfg_file}: cannot be read as JSON ({str(e)[:80] or type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_file}: expected a JSON object (a PEFT LoraConfig)")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise UserError(f"{cfg_file}: missing field '{key}'; is this a LoRA adapter?")
    r, alpha, targets = cfg["r"], cfg["lora_alpha"], cfg["target_modules"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise UserError(f"{cfg_file}: r = {r!r}; the LoRA rank must be a positive integer")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise UserError(f"{cfg_file}: lora_alpha = {alpha!r}; it must be a positive number")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                          and all(isinstance(t, str) for t in targets))):
        raise UserError(f"{cfg_file}: target_modules = {targets!r}; give module names (a list of strings)")
    dropout = cfg.get("lora_dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0 <= dropout < 1):
        raise UserError(f"{cfg_file}: lora_dropout = {dropout!r}; it must be a number in [0, 1)")
    return cfg


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


def check_compatible(adapters: list[LoadedAdapter], form: str, base: str | None = None,
                     allow_other_base: bool = False) -> None:
    """Refuse adapters made for another base model than `base` (check_base), for other target modules, or (a form
    of equal ranks) with another rank."""
    first = adapters[0]
    for other in adapters[1:]:
        if other.target_modules != first.target_modules or set(other.weights) != set(first.weights):
            raise UserError(f"{other.path}: targets {sorted(other.target_modules)} but {first.path} targets "
                            f"{sorted(first.target_modules)}; merge adapters trained on the same modules")
        if FORMS[form].equal_ranks and other.rank != first.rank:
            raise OptionError({"merge_form": form}, f"needs equal ranks, but {other.path} has rank {other.rank} "
                              f"and {first.path} rank {first.rank} (use the sum form)")
    check_base({a.path: a.config for a in adapters}, base, allow_other_base)


def check_base(configs: dict[str, dict], model: str | None, allow_other_base: bool = False) -> None:
    """The adapters ({folder: adapter_config}) were made for one base model, and it is `model`: the same model by
    any of its names (a path spelt otherwise, a link, a GGUF or packaged model and its cache, a hub id and its
    local copy) passes; `allow_other_base` lets a real mismatch through."""
    recorded = [(path, c["base_model_name_or_path"]) for path, c in configs.items() if c.get("base_model_name_or_path")]
    if not recorded or allow_other_base:
        return
    first, name = recorded[0]
    for other, other_name in recorded[1:]:
        if _same_base(name, other_name) is False:
            raise OptionError("adapters", f"were made for different base models: {first} -> {name}; {other} -> "
                                          f"{other_name} (pass <allow_other_base> to merge them anyway)")
    if model is None:
        return
    same = _same_base(name, model)
    if same is False:
        raise OptionError({"model": model}, f"is not the base model {first} was made for ({name}); use that "
                                            "model, or pass <allow_other_base> to use the adapters on this one")
    if same is None:
        log.warning("cannot check offline that %s (the base of %s) is the model %s; going on", name, first, model)


def _same_base(a: str, b: str) -> bool | None:
    """Whether two names are one base model (models.base_identity); None when one cannot be seen offline."""
    id_a = base_model_id_or_none(a)
    if a == b or (id_a is not None and id_a == base_model_id_or_none(b)):
        return True
    ia, ib = base_identity(a), base_identity(b)
    return None if ia is None or ib is None else ia == ib


def base_model_id_or_none(name: str) -> str | None:
    try:
        return base_model_id(name)
    except UserError:  # a recorded path that no longer exists, a packaged model not installed
        return None


def put_on(model: torch.nn.Module, adapters: list[LoadedAdapter], form: str, dropout: float | None = None
           ) -> dict[str, MergedLoraLinear]:
    """merge.inject, with an adapter that does not fit the model reported as the user's input to fix."""
    try:
        return inject(model, adapters, form, dropout)
    except ValueError as e:
        raise OptionError("adapters", str(e)) from None


def save_adapter(peft_model, out: str | Path, base_id: str) -> None:
    """Write a PEFT model's adapter_config.json + adapter_model.safetensors into `out`, each file atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for cfg in peft_model.peft_config.values():
        cfg.base_model_name_or_path = base_id
        if isinstance(cfg.target_modules, set):  # PEFT keeps a set: its JSON order would change from run to run
            cfg.target_modules = sorted(cfg.target_modules)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", suffix=TMP_SUFFIX, dir=out))
    try:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)  # LoRA on linears only; skips a hub lookup
        for name in ADAPTER_FILES:
            os.chmod(tmp / name, file_mode())  # safetensors writes 0600; PEFT users expect the umask's 0644
            os.replace(tmp / name, out / name)
    except Exception as e:
        raise_write_error(out / ADAPTER_FILES[1], e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    """Write the merged (and masked) adapter as ONE standard PEFT LoRA adapter, scale 1 (lora_alpha = rank):
    sum: rank sum_i r_i, B = [s_1 B_1 | s_2 B_2 | ...], A = [A_1; A_2; ...]; paper: rank r, B = sum B_i, A = sum A_i."""
    factors = {path: layer.factors() for path, layer in layers.items()}
    rank = next(iter(factors.values()))[1].shape[0]
    write_peft_adapter(out, factors, rank, dropout, base_id)
