"""The controller run (`search`, SPEC §1.6): merge, prune at p_init, train on the target train set while the
controller probes candidate ratios on the micro-dev set every K steps; writes history.jsonl and ratio.json."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed, prune
from .adapter_io import export_peft
from .config import SearchConfig
from .errors import OptionError
from .controller import Controller, ControllerState, pair_ratios, probe, trains_pair
from .files import append_jsonl, atomic_path, truncate_jsonl, write_json
from .merged_run import MergedSetup, PruneHooks, run_folder, setup_merged, trainable
from .model_card import write_model_card
from .taylor import GradientMoments
from .twin import Twin
from .tracking import Tracker
from .data.batching import collate
from .train import LossProbe, check_log_length, example_nll, rng_state, set_rng_state, steps_per_epoch, train


class SearchHooks(PruneHooks):
    def __init__(self, setup: MergedSetup, cfg: SearchConfig, work: Path, tracker: Tracker):
        super().__init__(setup, cfg)
        self.tracker = tracker
        micro_dev = LossProbe(setup.examples["micro_dev"], setup.tok.pad_token_id, setup.device, cfg.eval_batch_size)
        self.full_loss: Callable[[], float] = lambda: micro_dev(setup.model)  # the trace's: every round alike
        sliced = 0 < cfg.probe_examples < len(setup.examples["micro_dev"])
        self.loss_fn: Callable[[], float] = (lambda: self.round_slice()(setup.model)) if sliced else self.full_loss
        self._slice: tuple[int, LossProbe] | None = None
        # probe taylor: the gradients of every entry over each round's steps, read before each optimizer step
        self.moments = GradientMoments(setup.model, cfg.batch_size * cfg.grad_accum) if cfg.probe == "taylor" else None
        self.controller = Controller(cfg, self.probe, self.prune_to_scores, self.base_loss, self.trace,
                                     self.estimate if self.moments else None)
        self.history = work / "history.jsonl"
        self.every = cfg.round_every
        self.probe_seconds = 0.0
        self._scores: dict[str, torch.Tensor] | None = None  # the controller's importance (refresh: once | every_round)
        # probe_from start: the unpruned starting weights and their importance, which every probe begins from (a
        # probe from the current weights is anchored to the mask they trained under: RESULTS.md)
        self.start = None
        if cfg.probe_from == "start":
            self.start = ([p.detach().clone() for p in trainable(setup)], prune.current_masks(setup.model),
                          prune.stashes(setup.model), self.scores())
        # a probe that trains first or starts elsewhere goes through `lookahead` (set up, train, measure, restore)
        self.set_up_probes = bool(cfg.lookahead_steps) or self.start is not None
        # controller pair: the run's weights are the less pruned member, the twin the more pruned one
        self.twin: Twin | None = None
        self._group: list[list[dict]] = []
        if trains_pair(cfg.controller):
            if distributed.active():
                raise OptionError({"controller": cfg.controller}, "trains its two members in one process: run it on "
                                                                  "one device (without torchrun), or under torchrun "
                                                                  "choose a controller that probes (--controller "
                                                                  "sliced)")
            self.twin = Twin(setup.model, trainable(setup), cfg.lr, cfg.weight_decay)
        # probe_loss online: each member's training losses summed over the round's steps (the run's, the twin's),
        # on the first pass over the training set only: an example seen before is no longer held out, and scored
        # again it rewards the member that memorised it (the less pruned: benchmarks/RESULTS.md)
        self._online = [0.0, 0.0, 0]
        self.fresh_steps = steps_per_epoch(len(setup.examples["train"]), cfg.batch_size, cfg.grad_accum)
        # the twin trains only while its losses can still move the centre: scored online, on the first pass, and not
        # at all when that pass ends within the held rounds (no round after the hold reads a lead: p* is p_init)
        self.twin_steps = math.inf
        if self.twin is not None and cfg.probe_loss == "online":
            self.twin_steps = self.fresh_steps if self.fresh_steps > cfg.round_every * cfg.hold_rounds else 0

    def round_slice(self) -> LossProbe:
        """This round's probe_examples micro-dev examples: round k scores on places k*n .. k*n + n - 1 of a sequence
        of passes over the set, each pass a fresh permutation drawn from (controller_seed, pass), so every example
        is scored once a pass, runs of different seeds see independent slices, and a resumed run the same ones."""
        examples, k, n = self.setup.examples["micro_dev"], self.controller.state.rounds, self.cfg.probe_examples
        if self._slice is None or self._slice[0] != k:
            order = lambda q: np.random.default_rng([self.cfg.controller_seed, q]).permutation(len(examples))
            chosen = [examples[order(t // len(examples))[t % len(examples)]] for t in range(k * n, k * n + n)]
            self._slice = k, LossProbe(chosen, self.setup.tok.pad_token_id, self.setup.device, self.cfg.eval_batch_size)
        return self._slice[1]

    def round_scores(self) -> dict[str, torch.Tensor]:
        if self._scores is None or self.cfg.importance_refresh == "every_round":
            self._scores = self.scores()
        return self._scores

    def probe(self, ratios: list[float]) -> list[float]:
        if self.twin is not None:  # the members as they trained, each at its own ratio (the round's two candidates)
            if self.cfg.probe_loss == "online":  # progressive validation: the round's examples, unseen when scored
                run, twin, n = self._online
                self._online = [0.0, 0.0, 0]
                return [run / n, twin / n] if n else [math.nan, math.nan]
            return [self.loss_fn(), self.twin.run(self.loss_fn)]
        if self.set_up_probes:
            return [self.lookahead(self.probe_setup, r)[self.cfg.probe_loss] for r in ratios]
        return probe(self.setup.model, self.round_scores(), ratios, self.cfg.scope, self.loss_fn)

    def estimate(self, ratios: list[float]) -> list[list[float]]:
        return [self.moments.estimate(prune.masks_for_ratio(self.round_scores(), r, self.cfg.scope)) for r in ratios]

    def before_step(self, step):
        if self.moments is not None:  # its time is the method's: counted with the probes'
            start = time.time()
            self.moments.add_step()
            self.probe_seconds += time.time() - start
        super().before_step(step)

    def trace(self, ratios: list[float]) -> dict:
        """The micro-dev loss at fixed ratios, instant on this round's weights (`trace`; not with probe_from start,
        whose probes never see them), with look-ahead after it (`trace_lookahead`), and with probe taylor the
        estimated change against the committed mask (`trace_estimate`)."""
        out = {}
        if self.start is None:
            instant = probe(self.setup.model, self.round_scores(), ratios, self.cfg.scope, self.full_loss)
            out["trace"] = [list(x) for x in zip(ratios, instant)]
        if self.moments is not None:
            out["trace_estimate"] = [list(x) for x in zip(ratios, self.estimate(ratios))]
        if self.set_up_probes:  # micro-dev after the steps, online during them
            both = [self.lookahead(self.probe_setup, r, micro_dev=self.full_loss) for r in ratios]
            out["trace_lookahead"] = [[r, b["micro_dev"]] for r, b in zip(ratios, both)]
            if self.cfg.lookahead_steps:
                out["trace_online"] = [[r, b["online"]] for r, b in zip(ratios, both)]
        return out

    def base_loss(self) -> float:
        if self.set_up_probes:  # the reference as the candidates, at the committed p
            return self.lookahead((lambda _: None) if self.start is None else self.probe_setup,
                                  self.controller.state.p)[self.cfg.probe_loss]
        return self.loss_fn()

    def probe_setup(self, ratio: float) -> None:
        """Set up a look-ahead probe of `ratio`: from this round's weights (probe_from current), or from the
        starting weights pruned by their own importance, fresh optimizer moments and the peak learning rate."""
        if self.start is None:
            self.prune_to_scores(ratio)
            return
        params, masks, stashes, scores = self.start
        with torch.no_grad():
            for p, v in zip(trainable(self.setup), params):
                p.copy_(v)
        prune.set_masks(self.setup.model, masks)
        prune.set_stashes(self.setup.model, stashes)
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
        self.commit(prune.masks_for_ratio(scores, ratio, self.cfg.scope))

    def lookahead(self, apply: Callable[[float], object], ratio: float,
                  micro_dev: Callable[[], float] | None = None) -> dict:
        """`lookahead_steps` optimizer steps under `ratio`'s mask (set up by `apply`), on training examples drawn by
        the round (the same for every candidate); then everything -- weights, optimizer moments, masks, stashes,
        the RNG of dropout -- is restored exactly. Returns the micro-dev loss after the steps (`micro_dev`; NaN when
        not asked: it costs a pass over the micro-dev set; `micro_dev` measures it, by default the probes' loss when
        probe_loss asks for it) and the online loss (`online`; NaN without steps): the
        mean loss of each step's examples before that step trains on them, a held-out measure that costs nothing
        extra."""
        if micro_dev is None and self.cfg.probe_loss == "micro_dev":
            micro_dev = self.loss_fn
        model, cfg, opt = self.setup.model, self.cfg, self.optimizer
        params = trainable(self.setup)
        saved = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()), prune.current_masks(model),
                 prune.stashes(model), rng_state())
        train = self.setup.examples["train"]
        pick = np.random.default_rng([cfg.seed, self.controller.state.rounds])
        per_step = cfg.lookahead_batch or cfg.batch_size * cfg.grad_accum
        online = 0.0
        try:
            apply(ratio)
            for _ in range(cfg.lookahead_steps):
                chosen = [train[i] for i in pick.choice(len(train), min(per_step, len(train)), replace=False)]
                for s in range(0, len(chosen), cfg.batch_size):
                    batch = collate(chosen[s:s + cfg.batch_size], self.setup.tok.pad_token_id, self.setup.device)
                    loss = example_nll(model, batch).sum() / len(chosen)
                    loss.backward()
                    online += loss.item() / cfg.lookahead_steps
                opt.step()
                opt.zero_grad(set_to_none=True)
            return {"micro_dev": micro_dev() if micro_dev else math.nan,
                    "online": online if cfg.lookahead_steps else math.nan}
        finally:
            with torch.no_grad():
                for p, v in zip(params, saved[0]):
                    p.copy_(v)
            opt.load_state_dict(saved[1])
            prune.set_masks(model, saved[2])
            prune.set_stashes(model, saved[3])
            set_rng_state(saved[4])

    def prune_to_scores(self, ratio: float) -> int:
        """Commit a ratio's mask by this round's importance (the scores its candidates were probed with); with a
        twin, `ratio` is the centre and each member takes its side of it."""
        return self.commit_ratio(self.round_scores(), ratio)

    def start_at(self, ratio: float) -> int:
        """The run's first masks, at p_init, by the starting weights' importance."""
        return self.commit_ratio(self.scores(), ratio)

    def commit_ratio(self, scores: dict[str, torch.Tensor], ratio: float) -> int:
        if self.twin is None:
            return self.commit(prune.masks_for_ratio(scores, ratio, self.cfg.scope))
        lo, hi = pair_ratios(ratio, self.cfg)
        # re-scored every round, each member by its own importance: its weights trained under its own mask, as a
        # grid run's re-pruning reads them (scored once, both take the starting weights' order)
        own = self.twin.run(self.scores) if self.cfg.importance_refresh == "every_round" else scores
        self.twin.commit(prune.masks_for_ratio(own, hi, self.cfg.scope), self.cfg.reset, self.initial)
        return self.commit(prune.masks_for_ratio(scores, lo, self.cfg.scope))

    def on_examples(self, group):
        self._group = group

    def after_step(self, step, loss):
        if self.twin is not None and step <= self.twin_steps:
            start = time.time()  # the twin's step on the same examples: the method's cost, counted as the probes'
            twin_loss = self.twin.step(self._group, self.setup.tok.pad_token_id, self.setup.device,
                                       self.optimizer.param_groups[0]["lr"])
            self.probe_seconds += time.time() - start
            if step <= self.fresh_steps:
                self._online = [self._online[0] + loss, self._online[1] + twin_loss, self._online[2] + 1]
        if step % self.every == 0:
            self.controller_round(step)
        st = self.controller.state
        return {"p": st.p, "mu": st.mu, "sigma": st.sigma}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "controller": self.controller.state_dict(), "probe_seconds": self.probe_seconds,
                "scores": self._scores, **({"moments": self.moments.state_dict()} if self.moments else {}),
                **({"twin": self.twin.state_dict(), "online": self._online} if self.twin else {})}

    def load_state_dict(self, state: dict, step: int) -> None:
        super().load_state_dict(state, step)
        self.controller.load_state_dict(state["controller"])
        self.probe_seconds = state["probe_seconds"]
        self._scores = state["scores"] if "scores" in state else state["controller"].get("scores")  # older runs
        if self.moments is not None:
            self.moments.load_state_dict(state["moments"])
        if self.twin is not None:
            self.twin.load_state_dict(state["twin"])
            self._online = state.get("online", [0.0, 0.0, 0])  # a checkpoint from before the online signal
        if distributed.is_main():
            rounds = truncate_jsonl(self.history, lambda r: r["step"] <= step)
            check_log_length(self.history, rounds, self.controller.state.rounds, "controller rounds")

    def controller_round(self, step: int) -> None:
        """Rank 0 probes and decides; every other rank takes its masks and state."""
        if self.controller.state.converged_at is not None:
            return  # settled: a plain run at p* from here (every rank knows: the state is broadcast)
        if distributed.is_main():
            record = self.controller.round(step)
            record["kept_fraction"] = prune.kept_fraction(prune.current_masks(self.setup.model))
            self.probe_seconds += record["seconds"]
            append_jsonl(self.history, record)
            rewards = [r for r in record["rewards"] if r is not None and math.isfinite(r)]
            if rewards:
                self.tracker.log({"controller/reward_mean": sum(rewards) / len(rewards),
                                  "controller/reward_best": max(rewards)}, step)
        if self.moments is not None:
            self.moments.reset()  # the next round estimates from its own steps
        if distributed.active():
            masks = prune.current_masks(self.setup.model)
            distributed.broadcast_tensors(masks)
            state = distributed.broadcast_object(asdict(self.controller.state))
            if not distributed.is_main():
                self.commit(masks)
                self.controller.state = ControllerState(**state)


def search(cfg: SearchConfig) -> tuple[dict, torch.nn.Module]:
    """The controller run: learn the prune ratio online; writes history.jsonl and ratio.json (and, in one-run mode,
    OUT/adapter). Returns ratio.json's content and the trained, masked model."""
    setup = setup_merged(cfg, ("train", "val", "micro_dev"))
    desc = f"search {cfg.task}/{cfg.lang}"
    with run_folder(setup, cfg, desc) as (work, tracker):
        hooks = SearchHooks(setup, cfg, work, tracker)
        hooks.start_at(cfg.p_init)
        params = trainable(setup)
        best = work / "best.pt"  # one-run mode: the best-val weights with their masks and stashes
        summary = train(setup.model, params, setup.examples["train"], setup.examples["val"], cfg, work,
                        setup.tok.pad_token_id, setup.device, hooks=hooks, desc=desc, tracker=tracker,
                        save_best=lambda: save_weights(best, params, hooks) if cfg.export_adapter else None)
        result = {**hooks.controller.result(), "steps": summary["steps"], "seconds": summary["seconds"],
                  "probe_seconds": hooks.probe_seconds, "best_val_loss": summary["best_val_loss"]}
        if hooks.twin is not None and cfg.probe_loss == "online" and summary["steps"] > hooks.fresh_steps:
            result["online_steps"] = hooks.fresh_steps  # the rounds after it read nothing and held the centre
        if hooks.twin_steps < summary["steps"]:
            result["twin_steps"] = hooks.twin_steps  # the second member's training stopped there (0: never began)
        if cfg.export_adapter and distributed.is_main():
            export_one_run(setup, cfg, hooks, params, best, result, work / "adapter")
            result["adapter"] = str(setup.out / "adapter")
        if distributed.is_main():
            write_json(work / "ratio.json", result)
    return result, setup.model


def save_weights(path: Path, params: list[torch.nn.Parameter], hooks: PruneHooks) -> None:
    if distributed.is_main():
        with atomic_path(path) as tmp:
            torch.save({"params": [p.detach().cpu() for p in params],
                        "prune": PruneHooks.state_dict(hooks)}, tmp)


@torch.no_grad()
def export_one_run(setup: MergedSetup, cfg: SearchConfig, hooks: SearchHooks, params: list[torch.nn.Parameter],
                   best: Path, result: dict, out: Path) -> None:
    """One-run mode: back to the best-val weights (their masks and stashed values), pruned at p* with the run's
    criterion, exported as ONE standard PEFT adapter."""
    state = torch.load(best, map_location="cpu", weights_only=True)
    for p, saved in zip(params, state["params"]):
        p.copy_(saved.to(p.device))
    prune.set_masks(setup.model, state["prune"]["masks"])
    prune.set_stashes(setup.model, state["prune"]["stashes"])
    hooks.prune_to(result["prune_ratio"])
    export_peft(setup.layers, out, setup.base_id, setup.dropout)
    write_model_card(out, setup.base_id, cfg.task, [cfg.lang], "GRASP LoRA, one run (grasp-lora search "
                     "--export-adapter)", {
                         "Merged adapters": ", ".join(f"`{a}`" for a in cfg.adapters), "Merge form": cfg.merge_form,
                         "Prune ratio": f"{result['prune_ratio']:.4f} (drop rate; PEFT density "
                                        f"{1 - result['prune_ratio']:.4f}), learned by the controller ({result['rule']}"
                                        f" rule, {result['rounds']} rounds), {cfg.criterion} criterion",
                         "Kept fraction": f"{prune.kept_fraction(prune.current_masks(setup.model)):.4f}",
                         "Best val loss": f"{result['best_val_loss']:.4f} (before re-pruning at p*)"})
