"""Single-adapter training (SPEC §1.3) and standard PEFT adapter save/load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import TrainAdapterConfig, save_config
from .data.prompts import get_prompt
from .data.splits import load_split
from .data.tokenize import encode_split
from .errors import UserError
from .io import write_json
from .models import base_model_id, load_model, load_tokenizer, pick_device, resolve
from .train import LoopSettings, train

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def save_adapter(peft_model, out: str | Path, base_id: str) -> None:
    """Write adapter_config.json + adapter_model.safetensors into `out`, each file atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for cfg in peft_model.peft_config.values():
        cfg.base_model_name_or_path = base_id
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=out))
    try:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)  # LoRA on linears only; skips a hub lookup
        for name in ADAPTER_FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_out_dir(out: str) -> Path:
    if not out:
        raise UserError("--out is required: the folder to write results into")
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create it ({e.strerror}); choose a writable folder") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--out {out}: not writable; choose a writable folder")
    return path


def train_adapter(cfg: TrainAdapterConfig) -> dict:
    """Train one LoRA adapter on DATA's train split, keeping the best-val checkpoint in OUT."""
    if not cfg.data:
        raise UserError("--data is required: a folder written by `grasp-lora data prepare`")
    prompt = get_prompt(cfg.task, cfg.lang, cfg.prompts)
    train_records = load_split(cfg.data, "train", cfg.task)
    val_records = load_split(cfg.data, "val", cfg.task)
    resolve(cfg.model)
    device = pick_device(cfg.device)
    if not cfg.out:
        raise UserError("--out is required: the folder to write the adapter into")

    tok = load_tokenizer(cfg.model)
    train_ex = encode_split(tok, prompt, train_records, cfg.max_length)
    val_ex = encode_split(tok, prompt, val_records, cfg.max_length)
    base = load_model(cfg.model, cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)  # LoRA's A init and dropout draw from the global RNG
    from peft import get_peft_model

    try:
        model = get_peft_model(base, lora_config(cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules))
    except ValueError as e:
        raise UserError(f"--target-modules {' '.join(cfg.target_modules)}: {str(e).splitlines()[0]}") from None
    out = prepare_out_dir(cfg.out)
    save_config(cfg, out)
    base_id = base_model_id(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    summary = train(model, params, train_ex, val_ex, LoopSettings.from_config(cfg), out, tok.pad_token_id, device,
                    save_best=lambda: save_adapter(model, out, base_id), desc=f"adapter {cfg.task}/{cfg.lang}")
    summary.update(task=cfg.task, lang=cfg.lang, train_examples=len(train_ex), val_examples=len(val_ex))
    write_json(out / "train_summary.json", summary)
    return summary


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
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise UserError(f"{cfg_file}: missing field '{key}'; is this a LoRA adapter?")
    return cfg
