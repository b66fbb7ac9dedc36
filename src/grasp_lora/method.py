"""The two GRASP runs on merged adapters (SPEC §1.6, §1.7).

- `search` (the controller run): merge, prune at p_init, train on the target train set while the
  controller probes candidate ratios on the micro-dev set every K steps; writes history.jsonl, ratio.json.
- `finetune_merged` (the final run): merge, prune at a fixed ratio, train, export ONE PEFT adapter.
  `--prune-ratio 0` is Adaptive LoRA Merge without pruning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import distributed, prune
from .adapters import prepare_out_dir
from .config import FinetuneMergedConfig, SearchConfig, save_config
from .controller import Controller, ControllerSettings, ControllerState
from .data.prompts import get_prompt
from .data.splits import load_split
from .data.tokenize import encode_split
from .errors import UserError
from .io import append_jsonl, truncate_jsonl, write_json
from .merge import MergedLoraLinear, check_compatible, export_peft, inject, load_adapter
from .models import base_model_id, load_model, load_tokenizer, pick_device, resolve
from .train import Hooks, LoopSettings, mean_loss, train


@dataclass
class MergedSetup:
    model: torch.nn.Module
    layers: dict[str, MergedLoraLinear]
    tok: object
    device: torch.device
    examples: dict[str, list[dict]]  # split -> encoded examples
    base_id: str
    dropout: float
    out: Path


def setup_merged(cfg, splits: tuple[str, ...]) -> MergedSetup:
    """Check every input, then load the base model, the adapters and the data; inject the merged layers."""
    if len(cfg.adapters) < 1:
        raise UserError("--adapters is required: one or more PEFT adapter folders, source first")
    if not cfg.data:
        raise UserError("--data is required: a folder written by `grasp-lora data prepare`")
    if not cfg.out:
        raise UserError("--out is required: the folder to write results into")
    prompt = get_prompt(cfg.task, cfg.lang, cfg.prompts)
    records = {s: load_split(cfg.data, s, cfg.task) for s in splits}
    resolve(cfg.model)
    device = pick_device(cfg.device)
    distributed.init(device)
    device = distributed.local_device(device)
    adapters = [load_adapter(p) for p in cfg.adapters]
    base_id = base_model_id(cfg.model)
    check_compatible(adapters, cfg.merge_form, base_id)
    # the exported adapter's lora_dropout: the override, else the first adapter's
    dropout = float(adapters[0].config.get("lora_dropout") or 0.0) if cfg.dropout is None else cfg.dropout

    tok = load_tokenizer(cfg.model)
    examples = {s: encode_split(tok, prompt, r, cfg.max_length) for s, r in records.items()}
    model = load_model(cfg.model, str(device), cfg.dtype)
    torch.manual_seed(cfg.seed)  # dropout draws from the global RNG
    layers = inject(model, adapters, cfg.merge_form, cfg.dropout)
    out = prepare_out_dir(cfg.out)
    if distributed.is_main():
        save_config(cfg, out)
    return MergedSetup(model, layers, tok, device, examples, base_id, dropout, out)


def trainable(setup: MergedSetup) -> list[torch.nn.Parameter]:
    return [p for layer in setup.layers.values() for p in (*layer.lora_A, *layer.lora_B)]


class PruneHooks(Hooks):
    """Keeps the masks of one criterion: scores, commits (zeroing moments of newly pruned entries only)."""

    def __init__(self, setup: MergedSetup, cfg, eval_batch_size: int):
        self.setup, self.cfg = setup, cfg
        self.optimizer: torch.optim.Optimizer | None = None
        self.initial = prune.initial_values(setup.model) if cfg.reset == "init" else None
        self.tracker = prune.SensitivityTracker() if cfg.criterion == "sensitivity" else None
        self._norms = None
        self.eval_batch_size = eval_batch_size

    def scores(self) -> dict[str, torch.Tensor]:
        s = self.setup
        if self.cfg.criterion == "magnitude":
            return prune.magnitude_scores(s.model)
        if self.cfg.criterion == "sensitivity":
            return self.tracker.scores(s.model)
        if self._norms is None:  # input feature norms over the training set, computed once
            self._norms = prune.input_feature_norms(s.model, s.examples["train"], s.tok.pad_token_id, s.device,
                                                    self.eval_batch_size)
        return prune.input_weighted_scores(s.model, self._norms)

    def commit(self, masks: prune.Masks) -> int:
        return prune.commit_masks(self.setup.model, masks, self.cfg.reset, self.optimizer, self.initial)

    def prune_to(self, ratio: float) -> int:
        return self.commit(prune.masks_for_ratio(self.scores(), ratio, self.cfg.scope))

    def on_start(self, optimizer):
        self.optimizer = optimizer

    def before_step(self, step):
        if self.tracker is not None:
            self.tracker.update(self.setup.model)

    def state_dict(self) -> dict:
        return {"masks": prune.current_masks(self.setup.model), "stashes": prune.stashes(self.setup.model),
                "norms": self._norms, "tracker": self.tracker.state_dict() if self.tracker else None}

    def load_state_dict(self, state: dict, step: int) -> None:
        prune.set_masks(self.setup.model, state["masks"])
        prune.set_stashes(self.setup.model, state["stashes"])
        self._norms = state["norms"]
        if self.tracker is not None:
            self.tracker.load_state_dict(state["tracker"])


class SearchHooks(PruneHooks):
    def __init__(self, setup: MergedSetup, cfg: SearchConfig):
        super().__init__(setup, cfg, cfg.eval_batch_size)
        micro = setup.examples["micro_dev"]
        loss_fn: Callable[[], float] = lambda: mean_loss(setup.model, micro, setup.tok.pad_token_id, setup.device,
                                                         cfg.eval_batch_size)
        self.controller = Controller(ControllerSettings.from_config(cfg), loss_fn, self.scores, self.commit, cfg.scope)
        self.history = setup.out / "history.jsonl"
        self.every = cfg.round_every
        self.probe_seconds = 0.0

    def after_step(self, step):
        if step % self.every == 0:
            self.controller_round(step)
        st = self.controller.state
        return {"p": st.p, "mu": st.mu, "sigma": st.sigma}


    def state_dict(self) -> dict:
        return {**super().state_dict(), "controller": self.controller.state_dict(), "probe_seconds": self.probe_seconds}

    def load_state_dict(self, state: dict, step: int) -> None:
        super().load_state_dict(state, step)
        self.controller.load_state_dict(state["controller"])
        self.probe_seconds = state["probe_seconds"]
        if distributed.is_main():
            truncate_jsonl(self.history, lambda r: r["step"] <= step)

    def controller_round(self, step: int) -> None:
        """Rank 0 probes and decides; every other rank takes its masks and state."""
        if distributed.is_main():
            record = self.controller.round(self.setup.model, step)
            self.probe_seconds += record["seconds"]
            append_jsonl(self.history, record)
        if distributed.active():
            masks = prune.current_masks(self.setup.model)
            distributed.broadcast_tensors(masks)
            state = distributed.broadcast_object(asdict(self.controller.state))
            if not distributed.is_main():
                self.commit(masks)
                self.controller.state = ControllerState(**state)


class RepruneHooks(PruneHooks):
    def __init__(self, setup: MergedSetup, cfg: FinetuneMergedConfig):
        super().__init__(setup, cfg, cfg.eval_batch_size)
        self.ratio = cfg.prune_ratio
        self.every_step = cfg.reprune == "every_step" and cfg.prune_ratio > 0

    def after_step(self, step):
        if self.every_step:
            self.prune_to(self.ratio)
        return {"p": self.ratio} if self.ratio > 0 else None


def validate_search(cfg: SearchConfig) -> None:
    if not (0 <= cfg.p_min <= cfg.p_init <= cfg.p_max < 1):
        raise UserError(f"--p-min {cfg.p_min} --p-init {cfg.p_init} --p-max {cfg.p_max}: "
                        "need 0 <= p_min <= p_init <= p_max < 1")
    if cfg.group_size < 1:
        raise UserError(f"--group-size {cfg.group_size}: must be at least 1")
    if cfg.round_every < 1:
        raise UserError(f"--round-every {cfg.round_every}: must be at least 1")
    if cfg.sigma_init is not None and cfg.sigma_init <= 0:
        raise UserError(f"--sigma-init {cfg.sigma_init}: must be positive")


def search(cfg: SearchConfig) -> tuple[dict, torch.nn.Module]:
    """The controller run: learn the prune ratio online; writes history.jsonl and ratio.json.
    Returns ratio.json's content and the trained, masked model."""
    validate_search(cfg)
    setup = setup_merged(cfg, ("train", "val", "micro_dev"))
    if distributed.is_main() and not (cfg.resume and (setup.out / "checkpoint.pt").is_file()):
        setup.out.joinpath("history.jsonl").unlink(missing_ok=True)
    hooks = SearchHooks(setup, cfg)
    hooks.prune_to(cfg.p_init)
    summary = train(setup.model, trainable(setup), setup.examples["train"], setup.examples["val"],
                    LoopSettings.from_config(cfg), setup.out, setup.tok.pad_token_id, setup.device,
                    save_best=lambda: None, hooks=hooks, desc=f"search {cfg.task}/{cfg.lang}")
    result = {**hooks.controller.result(), "steps": summary["steps"], "seconds": summary["seconds"],
              "probe_seconds": hooks.probe_seconds, "best_val_loss": summary["best_val_loss"]}
    if distributed.is_main():
        write_json(setup.out / "ratio.json", result)
    return result, setup.model


def finetune_merged(cfg: FinetuneMergedConfig) -> tuple[dict, torch.nn.Module]:
    """The final run: merge, prune at a fixed ratio, fine-tune, export one PEFT adapter to OUT/adapter.
    Returns the run's summary and the model (as last trained; the export is the best-val checkpoint)."""
    if not 0 <= cfg.prune_ratio < 1:
        raise UserError(f"--prune-ratio {cfg.prune_ratio}: must be in [0, 1)")
    setup = setup_merged(cfg, ("train", "val"))
    hooks = RepruneHooks(setup, cfg)
    if cfg.prune_ratio > 0:
        hooks.prune_to(cfg.prune_ratio)
    adapter_dir = setup.out / "adapter"
    summary = train(setup.model, trainable(setup), setup.examples["train"], setup.examples["val"],
                    LoopSettings.from_config(cfg), setup.out, setup.tok.pad_token_id, setup.device,
                    save_best=lambda: export_peft(setup.layers, adapter_dir, setup.base_id, setup.dropout),
                    hooks=hooks, desc=f"finetune-merged p={cfg.prune_ratio:.3f}")
    summary.update(prune_ratio=cfg.prune_ratio, kept_fraction=prune.kept_fraction(prune.current_masks(setup.model)))
    if distributed.is_main():
        write_json(setup.out / "train_summary.json", summary)
    return summary, setup.model
