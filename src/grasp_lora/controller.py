"""The GRPO-style controller that learns the prune ratio online (SPEC §1.6).

Pure functions hold the math (sampling, advantages, the policy update, the commit rule, the ratio rules)
so a test can replay `history.jsonl` through them; `Controller` runs one round on a model. The controller
has its own RNG (numpy PCG64), separate from data shuffling and torch.

The learned ratio p* is read off the run by a *ratio rule*, registered by name in RATIO_RULES: a rule is
one function of the controller's state; `ratio.json` records what every rule gives.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from . import prune

if TYPE_CHECKING:  # the settings are the command's config: any object with ControllerOptions' fields
    from .config import ControllerOptions


ADVANTAGES = ("none", "std")  # r - mean(r) (the paper), or also divided by std(r)
COMMIT_MASKS = ("bounded", "candidate")  # the mask of the bounded committed p, or of the best candidate (the authors' code)
IMPORTANCE_REFRESH = ("once", "every_round")


def initial_sigma(s: ControllerOptions) -> float:
    return s.sigma_init if s.sigma_init is not None else (s.p_max - s.p_min) / 6


def clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def sample_candidates(rng: np.random.Generator, mu: float, sigma: float, g: int, p_min: float, p_max: float) -> list[float]:
    return [clamp(float(z), p_min, p_max) for z in rng.normal(mu, sigma, size=g)]


def advantages(rewards: list[float], mode: str = "none") -> list[float]:
    r = np.asarray(rewards, dtype=np.float64)
    a = r - r.mean()
    if mode == "std":
        a = a / (r.std() + 1e-8)
    return a.tolist()


def policy_update(mu: float, sigma: float, p: float, candidates: list[float], adv: list[float],
                  s: ControllerOptions) -> tuple[float, float]:
    """One Gaussian-policy step: REINFORCE on mu and sigma, a pull of mu toward p, an entropy bonus."""
    rho, a = np.asarray(candidates), np.asarray(adv)
    d = max(sigma ** 2, 1e-4)
    g_mu = float(np.mean(a * (rho - mu) / d))
    g_sigma = float(np.mean(a * ((rho - mu) ** 2 / d - 1.0)))
    mu_next = clamp(mu + s.policy_lr * (g_mu - s.kl_coef * (mu - p)), s.p_min, s.p_max)
    sigma_next = max(1e-3, sigma + s.policy_lr * g_sigma + s.entropy_bonus)
    return mu_next, sigma_next


def commit_rule(p: float, candidates: list[float], rewards: list[float], s: ControllerOptions) -> tuple[float, float | None, float | None]:
    """(p_next, committed ratio or None, ratio whose mask is applied or None).

    Commit when the best reward is >= 0: p moves toward the best candidate by at most max_step.
    `bounded` applies the mask of that p; `candidate` (the authors' code) the best candidate's mask.
    A NaN reward never wins."""
    finite = [(r, c) for r, c in zip(rewards, candidates) if math.isfinite(r)]
    if not finite:
        return p, None, None
    best_r, best_c = max(finite, key=lambda rc: rc[0])
    if best_r < 0:
        return p, None, None
    p_next = clamp(p + clamp(best_c - p, -s.max_ratio_step, s.max_ratio_step), s.p_min, s.p_max)
    return p_next, p_next, (p_next if s.commit_mask == "bounded" else best_c)


@dataclass
class ControllerState:
    p: float
    mu: float
    sigma: float
    best_reward: float = -math.inf
    best_candidate: float | None = None
    rounds: int = 0
    # every probe so far, one [p, base_loss, candidates, losses] per round (what pooled rules read)
    trials: list = field(default_factory=list)

    def observe(self, base_loss: float, candidates: list[float], losses: list, rewards: list) -> None:
        """Record one round's probes (at the current p): the best single trial so far, and every probe.
        A NaN (or null, as history.jsonl writes it) loss or reward is left out."""
        finite = lambda x: x is not None and math.isfinite(x)
        for r, c in zip(rewards, candidates):
            if finite(r) and r > self.best_reward:
                self.best_reward, self.best_candidate = r, c
        self.trials.append([self.p, base_loss, candidates, [l if finite(l) else None for l in losses]])

    @classmethod
    def from_history(cls, history: list[dict]) -> "ControllerState":
        """The state after the last round of `history.jsonl`: any ratio rule, new ones included, can be read
        off a finished run without running it again."""
        st = cls(p=0.0, mu=0.0, sigma=0.0)
        for rec in history:
            st.p = rec["p"]
            st.observe(rec["base_loss"], rec["candidates"], rec["losses"], rec["rewards"])
        last = history[-1]
        st.p, st.mu, st.sigma, st.rounds = last["p_next"], last["mu_next"], last["sigma_next"], len(history)
        return st


# ------------------------------------------------------------------ ratio rules: the learned ratio p*

RatioRule = Callable[[ControllerState, "ControllerOptions"], "float | None"]
RATIO_RULES: dict[str, RatioRule] = {}


def ratio_rule(name: str) -> Callable[[RatioRule], RatioRule]:
    """Register a rule that reads p* off the controller's state (None: it cannot tell yet)."""
    def register(fn: RatioRule) -> RatioRule:
        RATIO_RULES[name] = fn
        return fn
    return register


@ratio_rule("best_trial")
def best_trial(st: ControllerState, s: ControllerOptions) -> float | None:
    """The single candidate with the largest reward over the run (the authors)."""
    return st.best_candidate


@ratio_rule("committed")
def committed_ratio(st: ControllerState, s: ControllerOptions) -> float | None:
    return st.p


@ratio_rule("policy_mean")
def policy_mean(st: ControllerState, s: ControllerOptions) -> float | None:
    return st.mu


def pooled_fit(trials: list, p_min: float, p_max: float) -> tuple[float, np.ndarray] | None:
    """Least-squares fit of every probe's loss, L = c_round + a*rho + b*rho^2: one offset per round (the
    model moves between rounds), one curve shared by all. Each round's base loss is a probe at its
    committed p. Returns (argmin of the curve on [p_min, p_max], [a, b]) or None with < 3 distinct ratios."""
    rows, ys = [], []
    finite_rounds = []
    for p, base, cands, losses in trials:
        pts = [(p, base)] + [(c, l) for c, l in zip(cands, losses) if l is not None and math.isfinite(l)]
        if math.isfinite(base) and len(pts) > 1:
            finite_rounds.append(pts)
    ratios = {round(r, 9) for pts in finite_rounds for r, _ in pts}
    if len(ratios) < 3:
        return None
    n_rounds = len(finite_rounds)
    for k, pts in enumerate(finite_rounds):
        for r, loss in pts:
            onehot = [0.0] * n_rounds
            onehot[k] = 1.0
            rows.append(onehot + [r, r * r])
            ys.append(loss)
    coef = np.linalg.lstsq(np.asarray(rows), np.asarray(ys), rcond=None)[0]
    a, b = coef[-2:]
    grid = np.linspace(p_min, p_max, 701)
    return float(grid[np.argmin(a * grid + b * grid ** 2)]), np.asarray([a, b])


@ratio_rule("pooled")
def pooled(st: ControllerState, s: ControllerOptions) -> float | None:
    """The minimum of one loss-vs-ratio curve fitted to every probe of the run (rewards pooled over rounds)."""
    fit = pooled_fit(st.trials, s.p_min, s.p_max)
    return None if fit is None else fit[0]


def ratios_by_rule(st: ControllerState, s: ControllerOptions) -> dict[str, float]:
    """p* by every registered rule; a rule that cannot tell (None) gives the committed ratio."""
    return {name: st.p if (ratio := fn(st, s)) is None else ratio for name, fn in RATIO_RULES.items()}


class Controller:
    """Runs rounds on a model with merged, masked adapters. `loss_fn()` is the micro-dev loss."""

    def __init__(self, settings: ControllerOptions, loss_fn: Callable[[], float],
                 score_fn: Callable[[], dict[str, torch.Tensor]], commit_fn: Callable[[prune.Masks], int],
                 scope: str = "per_tensor"):
        self.s = settings
        self.loss_fn, self.score_fn, self.scope = loss_fn, score_fn, scope
        self.commit_fn = commit_fn
        self.rng = np.random.Generator(np.random.PCG64(settings.controller_seed))
        self.state = ControllerState(p=settings.p_init, mu=settings.p_init, sigma=initial_sigma(settings))
        self._scores: dict[str, torch.Tensor] | None = None

    def scores(self) -> dict[str, torch.Tensor]:
        if self._scores is None or self.s.importance_refresh == "every_round":
            self._scores = self.score_fn()
        return self._scores

    def round(self, model, step: int) -> dict:
        """One round: probe G candidate ratios as trial masks, update the policy, maybe commit."""
        start = time.time()
        st, s = self.state, self.s
        base_loss = self.loss_fn()
        scores = self.scores()
        candidates = sample_candidates(self.rng, st.mu, st.sigma, s.group_size, s.p_min, s.p_max)
        losses = []
        for rho in candidates:
            with prune.trial(model, prune.masks_for_ratio(scores, rho, self.scope)):
                losses.append(self.loss_fn())
        rewards = [base_loss - l if math.isfinite(l) else float("nan") for l in losses]
        finite = [r if math.isfinite(r) else min((x for x in rewards if math.isfinite(x)), default=0.0) for r in rewards]
        adv = advantages(finite, s.advantage)
        mu_next, sigma_next = policy_update(st.mu, st.sigma, st.p, candidates, adv, s)
        p_next, committed, applied = commit_rule(st.p, candidates, rewards, s)
        if applied is not None:
            self.commit_fn(prune.masks_for_ratio(scores, applied, self.scope))
        st.observe(base_loss, candidates, losses, rewards)
        record = {
            "step": step, "p": st.p, "mu": st.mu, "sigma": st.sigma, "candidates": candidates,
            "base_loss": base_loss, "losses": losses, "rewards": rewards, "advantages": adv,
            "committed": committed, "applied": applied, "p_next": p_next, "mu_next": mu_next,
            "sigma_next": sigma_next, "kept_fraction": prune.kept_fraction(prune.current_masks(model)),
            "seconds": time.time() - start,
        }
        st.p, st.mu, st.sigma = p_next, mu_next, sigma_next
        st.rounds += 1
        return record

    def result(self) -> dict:
        """ratio.json: p* by the asked rule (the committed ratio when that rule cannot tell, e.g. no
        finite trial; `rule` says which was used) and what every registered rule gives."""
        st = self.state
        by_rule = {name: fn(st, self.s) for name, fn in RATIO_RULES.items()}
        rule = self.s.ratio_rule if by_rule[self.s.ratio_rule] is not None else "committed"
        return {"prune_ratio": by_rule[rule], "rule": rule, "asked_rule": self.s.ratio_rule,
                "by_rule": by_rule, "trials": sum(len(t[2]) for t in st.trials),
                "best_reward": st.best_reward if math.isfinite(st.best_reward) else None,
                "best_candidate": st.best_candidate,
                "rounds": st.rounds, "final_p": st.p, "final_mu": st.mu, "final_sigma": st.sigma}

    def state_dict(self) -> dict:
        return {"state": asdict(self.state), "rng": self.rng.bit_generator.state,
                "scores": self._scores}

    def load_state_dict(self, sd: dict) -> None:
        self.state = ControllerState(**sd["state"])
        self.rng.bit_generator.state = sd["rng"]
        self._scores = sd["scores"]
