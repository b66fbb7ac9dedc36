"""Single-adapter training (SPEC §1.3): one LoRA adapter on one language's train split, saved as a PEFT adapter."""

from __future__ import annotations

import torch

from .adapter_io import save_adapter
from .config import TrainAdapterConfig, save_run_config
from .errors import OptionError
from .files import output_dir, staged_run, write_json
from .inputs import load_inputs
from .model_card import write_model_card
from .models import base_model_id, load_model
from .tracking import Tracker
from .train import train


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]):
    from peft import LoraConfig

    from peft.tuners.tuners_utils import INCLUDE_LINEAR_LAYERS_SHORTHAND

    # PEFT's "all-linear" is a string, not a module name: every linear layer but the output head
    targets = INCLUDE_LINEAR_LAYERS_SHORTHAND if list(target_modules) == [INCLUDE_LINEAR_LAYERS_SHORTHAND] \
        else list(target_modules)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")


def train_adapter(cfg: TrainAdapterConfig) -> dict:
    """Train one LoRA adapter on DATA's train split, keeping the best-val checkpoint in OUT (written whole when
    the run finishes; files.staged_run)."""
    from peft import get_peft_model

    inputs = load_inputs(cfg, ("train", "val"))
    base = load_model(cfg.model, str(inputs.device), cfg.dtype)
    torch.manual_seed(cfg.seed)  # LoRA's A init and dropout draw from the global RNG
    try:
        model = get_peft_model(base, lora_config(cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules))
    except ValueError as e:
        raise OptionError({"target_modules": " ".join(cfg.target_modules)}, str(e).splitlines()[0]) from None
    base_id = base_model_id(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    train_ex, val_ex = inputs.examples["train"], inputs.examples["val"]
    desc = f"adapter {cfg.task}/{cfg.lang}"
    with staged_run(output_dir(cfg.out), cfg.resume) as work, Tracker(cfg.report_to, work, desc, cfg) as tracker:
        save_run_config(cfg, work)
        summary = train(model, params, train_ex, val_ex, cfg, work, inputs.tok.pad_token_id, inputs.device,
                        save_best=lambda: save_adapter(model, work, base_id), desc=desc, tracker=tracker)
        summary.update(task=cfg.task, lang=cfg.lang, train_examples=len(train_ex), val_examples=len(val_ex))
        write_json(work / "train_summary.json", summary)
        write_model_card(work, base_id, cfg.task, [cfg.lang], "LoRA adapter (grasp-lora train-adapter)", {
            "Rank / alpha / dropout": f"{cfg.rank} / {cfg.alpha} / {cfg.dropout}",
            "Target modules": ", ".join(cfg.target_modules), "Training examples": len(train_ex),
            "Best val loss": f"{summary['best_val_loss']:.4f} after {summary['steps']} steps"})
    return summary
