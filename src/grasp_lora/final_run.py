"""The final run (`finetune-merged`, SPEC §1.7): merge, prune at a fixed ratio, fine-tune, export ONE PEFT
adapter. `--prune-ratio 0` is Adaptive LoRA Merge without pruning."""

from __future__ import annotations

import torch

from . import distributed, prune
from .adapter_io import export_peft
from .config import FinetuneMergedConfig
from .files import write_json
from .model_card import write_model_card
from .merged_run import MergedSetup, PruneHooks, run_folder, setup_merged, trainable
from .train import train


class RepruneHooks(PruneHooks):
    def __init__(self, setup: MergedSetup, cfg: FinetuneMergedConfig):
        super().__init__(setup, cfg)
        self.ratio = cfg.prune_ratio
        self.every_step = cfg.reprune == "every_step" and cfg.prune_ratio > 0

    def after_step(self, step, loss):
        if self.every_step:
            self.prune_to(self.ratio)
        return {"p": self.ratio} if self.ratio > 0 else None


def finetune_merged(cfg: FinetuneMergedConfig) -> tuple[dict, torch.nn.Module]:
    """The final run: merge, prune at a fixed ratio, fine-tune, export one PEFT adapter to OUT/adapter.
    Returns the run's summary and the model (as last trained; the export is the best-val checkpoint)."""
    setup = setup_merged(cfg, ("train", "val"))
    hooks = RepruneHooks(setup, cfg)
    if cfg.prune_ratio > 0:
        hooks.prune_to(cfg.prune_ratio)
    desc = f"finetune-merged p={cfg.prune_ratio:.3f}"
    with run_folder(setup, cfg, desc) as (work, tracker):
        summary = train(setup.model, trainable(setup), setup.examples["train"], setup.examples["val"], cfg, work,
                        setup.tok.pad_token_id, setup.device,
                        save_best=lambda: export_peft(setup.layers, work / "adapter", setup.base_id, setup.dropout),
                        hooks=hooks, desc=desc, tracker=tracker)
        summary.update(prune_ratio=cfg.prune_ratio,
                       kept_fraction=prune.kept_fraction(prune.current_masks(setup.model)))
        if distributed.is_main():
            write_json(work / "train_summary.json", summary)
            write_model_card(work / "adapter", setup.base_id, cfg.task, [cfg.lang], "GRASP LoRA merged adapter "
                             "(grasp-lora finetune-merged)" if cfg.prune_ratio else "Adaptive LoRA Merge (no pruning)", {
                                 "Merged adapters": ", ".join(f"`{a}`" for a in cfg.adapters),
                                 "Merge form": cfg.merge_form,
                                 "Prune ratio": f"{cfg.prune_ratio:.4f} (drop rate; PEFT density "
                                                f"{1 - cfg.prune_ratio:.4f}), {cfg.criterion} criterion",
                                 "Kept fraction": f"{summary['kept_fraction']:.4f}",
                                 "Best val loss": f"{summary['best_val_loss']:.4f} after {summary['steps']} steps"})
    return summary, setup.model
