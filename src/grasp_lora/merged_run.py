"""What the two GRASP runs on merged adapters share (SPEC §1.4, §1.5): loading the base model, the adapters and
the data with the merged layers injected, and the pruning hooks of the training loop."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed, prune
from .adapter_io import check_compatible, load_adapter, put_on
from .config import save_run_config
from .data.batching import batches
from .files import RUN_NAME, output_dir, staged_run
from .inputs import load_inputs
from .merge import MergedLoraLinear
from .models import base_model_id, load_model
from .tracking import Tracker
from .train import Hooks


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
    """Check the adapters, then load the data, the base model and the adapters; inject the merged layers."""
    adapters = [load_adapter(p) for p in cfg.adapters]
    inputs = load_inputs(cfg, splits)
    check_compatible(adapters, cfg.merge_form, cfg.model, cfg.allow_other_base)
    distributed.init(inputs.device)
    device = distributed.local_device(inputs.device)
    # the exported adapter's lora_dropout: the override, else the first adapter's
    dropout = adapters[0].dropout if cfg.dropout is None else cfg.dropout
    model = load_model(cfg.model, str(device), cfg.dtype)
    torch.manual_seed(cfg.seed)  # dropout draws from the global RNG
    layers = put_on(model, adapters, cfg.merge_form, cfg.dropout)
    return MergedSetup(model, layers, inputs.tok, device, inputs.examples, base_model_id(cfg.model), dropout,
                       output_dir(cfg.out))


@contextlib.contextmanager
def run_folder(setup: MergedSetup, cfg, desc: str):
    """The folder the run writes into (files.staged_run; rank 0 prepares and publishes it, the other ranks
    read their checkpoint from it) and the run's tracker (rank 0's only)."""
    main = distributed.is_main()
    with staged_run(setup.out, cfg.resume) if main else contextlib.nullcontext(setup.out / RUN_NAME) as work, \
            Tracker(cfg.report_to if main else ["none"], work, desc, cfg) as tracker:
        if main:
            save_run_config(cfg, work)
        distributed.broadcast_object(None)  # a barrier: no rank looks for a checkpoint before rank 0 set it up
        yield work, tracker


def trainable(setup: MergedSetup) -> list[torch.nn.Parameter]:
    return [p for layer in setup.layers.values() for p in (*layer.lora_A, *layer.lora_B)]


class PruneHooks(Hooks):
    """Keeps the masks of one criterion (prune.CRITERIA): scores, commits (zeroing moments of newly pruned
    entries only)."""

    def __init__(self, setup: MergedSetup, cfg):
        self.setup, self.cfg = setup, cfg
        self.optimizer: torch.optim.Optimizer | None = None
        self.initial = prune.initial_values(setup.model) if cfg.reset == "init" else None
        if cfg.reset == "train":
            prune.straight_through(setup.model)
        train = setup.examples["train"]
        self.criterion = prune.CRITERIA[cfg.criterion](setup.model, lambda: batches(
            train, setup.tok.pad_token_id, setup.device, cfg.eval_batch_size))

    def scores(self) -> dict[str, torch.Tensor]:
        return self.criterion.scores()

    def commit(self, masks: prune.Masks) -> int:
        return prune.commit_masks(self.setup.model, masks, self.cfg.reset, self.optimizer, self.initial)

    def prune_to(self, ratio: float) -> int:
        return self.commit(prune.masks_for_ratio(self.scores(), ratio, self.cfg.scope))

    def on_start(self, optimizer):
        self.optimizer = optimizer

    def before_step(self, step):
        self.criterion.after_backward()

    def state_dict(self) -> dict:
        return {"masks": prune.current_masks(self.setup.model), "stashes": prune.stashes(self.setup.model),
                "criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: dict, step: int) -> None:
        prune.set_masks(self.setup.model, state["masks"])
        prune.set_stashes(self.setup.model, state["stashes"])
        self.criterion.load_state_dict(state["criterion"])
