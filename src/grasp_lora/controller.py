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


ADVANTAGES = ("none", "std", "rank")  # r - mean(r) (the paper), also divided by std(r), or NES rank utilities
COMMIT_MASKS = ("bounded", "candidate")  # the mask of the bounded committed p, or of the best candidate (the authors' code)
COMMIT_TOWARD = ("best_candidate", "policy_mean")  # p moves toward a round's winner (the authors), or follows mu
IMPORTANCE_REFRESH = ("once", "every_round")
PROBE_FROM = ("current", "start")  # a look-ahead probe trains from the run's weights, or from its starting weights
PROBE_LOSSES = ("micro_dev", "online")  # a look-ahead probe's loss: micro-dev after its steps, or online during them
PAIR_MOVES = ("rprop", "sequential")  # pair: the centre steps on each round's lead, or on a test of the leads gathered
PAIR_ENDS = ("clamp", "centred")  # pair: the members near an end of the range
PAIR_SCATTERS = ("all", "at_centre")  # pair, sequential: the lead's changes its scatter is taken from
PROBES = ("forward", "taylor")  # a candidate's loss change: measured by a micro-dev pass, or estimated (taylor.py)


def initial_sigma(s: ControllerOptions) -> float:
    return s.sigma_init if s.sigma_init is not None else (s.p_max - s.p_min) / 6


def clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def sample_candidates(rng: np.random.Generator, mu: float, sigma: float, g: int, p_min: float, p_max: float) -> list[float]:
    return [clamp(float(z), p_min, p_max) for z in rng.normal(mu, sigma, size=g)]


def rank_utilities(g: int) -> np.ndarray:
    """NES fitness shaping (Wierstra et al. 2014): weights by rank, best first, summing to 0. Scale-free: a
    round's step does not depend on how large its loss differences are, only on their order."""
    u = np.maximum(0.0, math.log(g / 2 + 1) - np.log(np.arange(1, g + 1)))
    return u / u.sum() - 1.0 / g


def advantages(rewards: list[float], mode: str = "none") -> list[float]:
    r = np.asarray(rewards, dtype=np.float64)
    if mode == "rank":
        a = np.empty_like(r)
        a[np.argsort(-r, kind="stable")] = rank_utilities(len(r))
        return a.tolist()
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
    mu_next = policy_step(mu, s.policy_lr * (g_mu - s.kl_coef * (mu - p)), s)
    sigma_next = max(s.sigma_floor, sigma + s.policy_lr * g_sigma + s.entropy_bonus)
    return mu_next, sigma_next


def policy_step(mu: float, step: float, s: ControllerOptions) -> float:
    """mu moved by `step`, at most max_policy_step (when set), inside [p_min, p_max]."""
    if s.max_policy_step:
        step = clamp(step, -s.max_policy_step, s.max_policy_step)
    return clamp(mu + step, s.p_min, s.p_max)


def nes_update(mu: float, sigma: float, candidates: list[float], adv: list[float],
               s: ControllerOptions) -> tuple[float, float]:
    """Separable NES (Schaul et al. 2011): natural-gradient steps in units of sigma. With eps_g = (rho_g - mu)/sigma,
    mu += policy_lr * sigma * sum(a_g eps_g); sigma *= exp(sigma_lr / 2 * sum(a_g (eps_g^2 - 1))), so sigma shrinks
    when the best candidates lie near mu (the rounds agree) and grows when they lie far out."""
    eps, a = (np.asarray(candidates) - mu) / sigma, np.asarray(adv)
    mu_next = policy_step(mu, s.policy_lr * sigma * float(np.sum(a * eps)), s)
    sigma_next = clamp(sigma * math.exp(s.sigma_lr / 2 * float(np.sum(a * (eps ** 2 - 1)))),
                       s.sigma_floor, (s.p_max - s.p_min) / 2)
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
    p_next = move_toward(p, best_c, s)
    return p_next, p_next, (p_next if s.commit_mask == "bounded" else best_c)


def move_toward(p: float, target: float, s: ControllerOptions) -> float:
    """p moved toward `target` by at most max_ratio_step, inside [p_min, p_max]."""
    return clamp(p + clamp(target - p, -s.max_ratio_step, s.max_ratio_step), s.p_min, s.p_max)


@dataclass
class ControllerState:
    p: float
    mu: float
    sigma: float
    best_reward: float = -math.inf
    best_candidate: float | None = None
    rounds: int = 0
    min_sigma: float = math.inf  # the smallest sigma the policy has had
    converged_at: int | None = None  # the step after which it stopped probing (converge_sigma)
    # every probe so far, one [p, base_loss, candidates, losses] per round (what pooled rules read)
    trials: list = field(default_factory=list)
    # probe taylor: [first, second, measured] of every candidate probed both ways (calibrate)
    calibration: list = field(default_factory=list)

    def observe(self, base_loss: float | None, candidates: list[float], losses: list, rewards: list) -> None:
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
        st.min_sigma = min(min(r["sigma"], r["sigma_next"]) for r in history)
        st.converged_at = last["step"] if last.get("converged") else None
        return st


REACH = 1.5  # estimates are trusted up to this many times the largest calibrated one
MIN_FIT = 0.5  # the share of the measured changes' sum of squares a calibration must explain to be used


@dataclass(frozen=True)
class Calibration:
    """Measured loss change ~= a * first + b * second for an estimate's first- and second-order terms (taylor.py),
    trusted for terms up to `reach` (each); `fit`: 1 - residual / measured sum of squares."""
    a: float
    b: float
    reach: tuple[float, float]
    fit: float

    def __call__(self, terms: list[float]) -> float:
        return self.a * terms[0] + self.b * terms[1]

    def covers(self, terms: list[float]) -> bool:
        return all(abs(t) <= r for t, r in zip(terms, self.reach))


def calibrate(pairs: list) -> Calibration | None:
    """Least squares with a, b >= 0 (a first-order term that points the wrong way, or a negative curvature, is noise,
    not a scale) over every [first, second, measured] triple of the candidates probed both ways; None with fewer than
    3, or when the fit explains less than MIN_FIT of the measured changes' sum of squares (the rounds then keep probing
    by forward)."""
    if len(pairs) < 3:
        return None
    data = np.asarray(pairs, dtype=np.float64)
    x, m = data[:, :2], data[:, 2]
    if not np.any(m):
        return None
    best = None
    for cols in ([0, 1], [0], [1]):  # a two-variable NNLS: the feasible least-squares fit on each set of columns
        if not np.any(x[:, cols]):
            continue
        coef = np.zeros(2)
        coef[cols] = np.linalg.lstsq(x[:, cols], m, rcond=None)[0]
        sse = float(np.sum((m - x @ coef) ** 2))
        if np.all(coef >= 0) and (best is None or sse < best[1]):
            best = coef, sse
    share = None if best is None else 1.0 - best[1] / float(np.sum(m ** 2))
    if share is None or share < MIN_FIT:
        return None
    reach = tuple(REACH * float(v) for v in np.max(np.abs(x), axis=0))
    return Calibration(float(best[0][0]), float(best[0][1]), reach, share)


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


def _round_points(trials: list) -> list[tuple[float, list[tuple[float, float]]]]:
    """(committed p, [(ratio, loss), ...]) per round with at least one finite probe; a finite base loss is a probe
    at p (a round that did not measure it has none)."""
    rounds = []
    for p, base, cands, losses in trials:
        pts = [(c, l) for c, l in zip(cands, losses) if l is not None and math.isfinite(l)]
        if pts:
            rounds.append((p, ([(p, base)] if base is not None and math.isfinite(base) else []) + pts))
    return rounds


def pooled_fit(trials: list, p_min: float, p_max: float) -> tuple[float, np.ndarray] | None:
    """Least-squares fit of every probe's loss, L = c_round + a*rho + b*rho^2: one offset per round (the
    model moves between rounds), one curve shared by all. Each round's base loss is a probe at its
    committed p. Returns (argmin of the curve on [p_min, p_max], [a, b]) or None with < 3 distinct ratios."""
    rounds = _round_points(trials)
    if len({round(r, 9) for _, pts in rounds for r, _ in pts}) < 3:
        return None
    rows, ys = [], []
    for k, (_, pts) in enumerate(rounds):
        for r, loss in pts:
            rows.append([float(k == j) for j in range(len(rounds))] + [r, r * r])
            ys.append(loss)
    a, b = np.linalg.lstsq(np.asarray(rows), np.asarray(ys), rcond=None)[0][-2:]
    grid = np.linspace(p_min, p_max, 701)
    return float(grid[np.argmin(a * grid + b * grid ** 2)]), np.asarray([a, b])


@dataclass
class CurveFit:
    """The `fit` controller's model of the micro-dev loss of every probe of the run:
        L = c_round + a*rho + b*rho^2 + v*|rho - p_round|
    one offset per round (training moves the model between rounds), one curve f(rho) = a*rho + b*rho^2 shared by
    all rounds, and a penalty v for a trial's distance from the mask the model trained under (a probe far from the
    committed p revives stale stashed values or removes trained ones: the cost of leaving p, not of the ratio).
    argmin is f's minimum on [p_min, p_max]; sd the spread of that minimum over curves drawn from the fit's
    uncertainty (a concave or flat draw puts its minimum at an end: the data do not place it yet)."""
    argmin: float
    sd: float
    coef: np.ndarray  # a, b, v
    noise: float  # residual standard deviation


def curve_fit(trials: list, p_min: float, p_max: float, min_dof: int = 2, anchored: bool = True) -> CurveFit | None:
    """Least squares over every probe; None until the fit has `min_dof` residual degrees of freedom and 3 distinct
    ratios. `anchored=False` (probes from the starting weights, which do not depend on p) leaves v out."""
    rounds = _round_points(trials)
    n_pts = sum(len(pts) for _, pts in rounds)
    if len({round(r, 9) for _, pts in rounds for r, _ in pts}) < 3 or n_pts - len(rounds) - 3 < min_dof:
        return None
    rows, ys = [], []
    for k, (p, pts) in enumerate(rounds):
        for r, loss in pts:
            rows.append([float(k == j) for j in range(len(rounds))] + [r, r * r] + [abs(r - p)] * anchored)
            ys.append(loss)
    x, y = np.asarray(rows), np.asarray(ys)
    if anchored and np.linalg.matrix_rank(x) < x.shape[1]:  # every probe on one side of its p: v is a's twin
        x = x[:, :-1]
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - x.shape[1]
    if dof < min_dof:
        return None
    noise2 = max(float(np.sum((y - x @ coef) ** 2)) / dof, 1e-12)
    cov = noise2 * np.linalg.inv(x.T @ x)
    a, b = coef[len(rounds):len(rounds) + 2]
    v = coef[-1] if x.shape[1] == len(rounds) + 3 else 0.0
    grid = np.linspace(p_min, p_max, 701)
    argmin = float(grid[np.argmin(a * grid + b * grid ** 2)])
    # the minima of 256 curves drawn from the fit's uncertainty (Student-t widened for few residual degrees of
    # freedom; a fixed draw, so the controller's own RNG and the run's history do not depend on it)
    widen = dof / (dof - 2) if dof > 2 else 3.0
    ab = slice(len(rounds), len(rounds) + 2)
    draws = np.random.default_rng(0).multivariate_normal([a, b], cov[ab, ab] * widen, size=256, method="eigh")
    minima = grid[np.argmin(draws[:, :1] * grid + draws[:, 1:] * grid ** 2, axis=1)]
    return CurveFit(argmin, float(np.std(minima)), np.asarray([a, b, v]), math.sqrt(noise2))


def run_fit(st: ControllerState, s: ControllerOptions) -> CurveFit | None:
    """The `fit` controller's curve of a run (no anchoring term when its probes start from the starting weights)."""
    return curve_fit(st.trials, s.p_min, s.p_max, anchored=s.probe_from == "current")


@ratio_rule("pooled")
def pooled(st: ControllerState, s: ControllerOptions) -> float | None:
    """The minimum of one loss-vs-ratio curve fitted to every probe of the run (rewards pooled over rounds)."""
    fit = pooled_fit(st.trials, s.p_min, s.p_max)
    return None if fit is None else fit[0]


@ratio_rule("fit")
def fitted(st: ControllerState, s: ControllerOptions) -> float | None:
    """The minimum of the `fit` controller's curve (CurveFit: every probe, round offsets, the distance-from-p
    penalty factored out)."""
    fit = run_fit(st, s)
    return None if fit is None else fit.argmin


def ratios_by_rule(st: ControllerState, s: ControllerOptions) -> dict[str, float]:
    """p* by every registered rule; a rule that cannot tell (None) gives the committed ratio."""
    return {name: st.p if (ratio := fn(st, s)) is None else ratio for name, fn in RATIO_RULES.items()}


# ------------------------------------------------------------------ controllers: how a round moves the policy

MIN_SIGMA = 0.02  # the least exploration sliced, nes and fit keep: below it a round's probes differ by noise only


def paper_round(st: ControllerState, candidates: list[float], rewards: list[float], s: ControllerOptions) -> dict:
    """The authors' round (SPEC §1.6): REINFORCE on raw advantages, entropy bonus, pull toward p; commit toward
    the best candidate when its reward is >= 0 (or, with commit_toward policy_mean, p follows mu)."""
    finite = [r if math.isfinite(r) else min((x for x in rewards if math.isfinite(x)), default=0.0) for r in rewards]
    adv = advantages(finite, s.advantage)
    mu_next, sigma_next = policy_update(st.mu, st.sigma, st.p, candidates, adv, s)
    return {"advantages": adv, "mu_next": mu_next, "sigma_next": sigma_next,
            **commit(st.p, mu_next, candidates, rewards, s)}


def nes_round(st: ControllerState, candidates: list[float], rewards: list[float], s: ControllerOptions) -> dict:
    """Scale-free: rank utilities, NES steps in units of sigma; p follows mu (bounded by max_ratio_step) by default."""
    finite = [r if math.isfinite(r) else -math.inf for r in rewards]  # a NaN trial ranks last
    adv = advantages(finite, "rank")
    mu_next, sigma_next = nes_update(st.mu, st.sigma, candidates, adv, s)
    return {"advantages": adv, "mu_next": mu_next, "sigma_next": sigma_next,
            **commit(st.p, mu_next, candidates, rewards, s)}


def fit_round(st: ControllerState, candidates: list[float], rewards: list[float], s: ControllerOptions) -> dict:
    """Model-based: mu is the minimum of the curve fitted to every probe so far (CurveFit), sigma its uncertainty
    (between sigma_floor and the prior sigma). Call after `observe`."""
    fit = run_fit(st, s)
    if fit is None:
        mu_next, sigma_next = st.mu, st.sigma
    else:
        mu_next, sigma_next = fit.argmin, clamp(fit.sd, s.sigma_floor, initial_sigma(s))
    return {"advantages": advantages([r if math.isfinite(r) else 0.0 for r in rewards]), "mu_next": mu_next,
            "sigma_next": sigma_next, **commit(st.p, mu_next, candidates, rewards, s)}


def pair_ratios(centre: float, s: ControllerOptions) -> list[float]:
    """The ratios of a paired run's two members: pair_gap either side of the centre, inside [p_min, p_max]. Near an
    end, pair_ends clamp cuts the gap on that side only, so the members' midpoint leaves the centre and their lead
    reads the slope there instead: with members 0.2 out, a centre 0.2 sits at 0.1 / 0.4 and steps to the end even on
    a curve whose optimum is 0.2 (tests/test_controller.py); centred narrows both sides alike. At an end itself the
    members keep one side's gap: the centre can only move inward, and the lead says whether to."""
    gap = s.pair_gap
    room = min(centre - s.p_min, s.p_max - centre)
    if s.pair_ends == "centred" and room > 1e-9:
        gap = min(gap, room)
    return [clamp(centre - gap, s.p_min, s.p_max), clamp(centre + gap, s.p_min, s.p_max)]


def pair_difference(losses: list) -> float:
    """The less pruned member's lead: loss of the more pruned one minus the other's (NaN when either is missing)."""
    lo, hi = (math.nan if l is None else l for l in losses)
    return hi - lo


def pair_lead(trials: list, s: ControllerOptions) -> tuple[float, float]:
    """This round's and the last round's lead of the less pruned member: the raw difference, or with pair_smoothing
    beta its exponential moving average over the rounds from hold_rounds on (one round's difference scatters by about
    0.1 nats where the trained curve's is 0.02-0.06: benchmarks/RESULTS.md); a held round's lead stays raw."""
    leads, smooth = [], math.nan
    for k, trial in enumerate(trials):
        d = pair_difference(trial[3])
        if s.pair_smoothing and k >= s.hold_rounds and math.isfinite(d):
            smooth = d if not math.isfinite(smooth) else s.pair_smoothing * smooth + (1 - s.pair_smoothing) * d
            d = smooth
        leads.append(d)
    return leads[-1], (leads[-2] if len(leads) > 1 else math.nan)


PAIR_MIN_ROUNDS = 2  # the sequential test's least rounds at a centre: one outlying round cannot move it


def pair_evidence(trials: list, s: ControllerOptions) -> float:
    """The sequential test's statistic: the leads measured at the current centre since it last moved (rounds from
    hold_rounds on, at least PAIR_MIN_ROUNDS of them, else 0), summed and divided by their scatter times sqrt(their
    count) -- a z score, positive when the less pruned member is ahead. The scatter is the rms round-to-round change
    of the lead over sqrt(2), from round hold_rounds // 2 on (changes, not deviations from a mean: the lead drifts as
    the members train, slowly against its noise); with pair_scatter at_centre only the changes between rounds at the
    same centre count (a move changes the pair, and the lead's jump across it is not noise: on es300 it held the
    centre 4 rounds longer, benchmarks/RESULTS.md)."""
    leads = [pair_difference(t[3]) for t in trials]
    centres = [t[0] for t in trials]
    since = len(trials) - 1
    while since > s.hold_rounds and centres[since - 1] == centres[-1]:
        since -= 1
    now = [d for d in leads[since:] if math.isfinite(d)]
    changes = [leads[k] - leads[k - 1] for k in range(max(1, s.hold_rounds // 2 + 1), len(leads))
               if math.isfinite(leads[k] - leads[k - 1]) and (s.pair_scatter == "all" or centres[k] == centres[k - 1])]
    if len(now) < PAIR_MIN_ROUNDS or sum(now) == 0:
        return 0.0
    scatter = math.sqrt(np.mean(np.square(changes)) / 2) if changes else 0.0
    return sum(now) / (scatter * math.sqrt(len(now))) if scatter > 0 else math.copysign(math.inf, sum(now))


def last_move(trials: list) -> float:
    """The sign of the centre's last move (0.0 before the first)."""
    centres = [t[0] for t in trials]
    moves = [b - a for a, b in zip(centres, centres[1:]) if b != a]
    return math.copysign(1.0, moves[-1]) if moves else 0.0


def pair_round(st: ControllerState, candidates: list[float], rewards: list[float], s: ControllerOptions) -> dict:
    """Two members train at the centre -/+ pair_gap on the same examples (twin.py) and are scored at the ratios they
    train under. After hold_rounds rounds (the ratios' order forms only after some training: benchmarks/RESULTS.md),
    the centre moves toward the member that is ahead by a step sigma (scale-free, as the loss differences' size varies
    by case and by round), when and how pair_move says:

    - rprop (Riedmiller & Braun 1993): every round, on that round's lead; sigma grows by 1.2 (up to max_policy_step)
      when a round agrees in sign with the one before and halves (down to sigma_floor) when it does not, so the
      steps shrink where the members take turns, at the optimum or in noise;
    - sequential: only when the leads gathered at the centre since it last moved differ from zero by pair_z times
      their standard error (pair_evidence), so a persistent small lead moves it and one noisy round does not; sigma
      halves (down to sigma_floor) when a move reverses the one before, a bisection of the optimum.

    Call after `observe`."""
    mu_next, sigma_next = st.mu, st.sigma
    if s.pair_move == "sequential":
        z = pair_evidence(st.trials, s) if st.rounds >= s.hold_rounds else 0.0
        if abs(z) >= s.pair_z:
            direction = -math.copysign(1.0, z)
            if last_move(st.trials) == -direction:
                sigma_next = max(st.sigma / 2, s.sigma_floor)
            mu_next = clamp(st.mu + direction * sigma_next, s.p_min, s.p_max)
            if math.isclose(mu_next, st.mu, abs_tol=1e-9):  # at an end of the range: no move, the evidence gathers on
                mu_next, sigma_next = st.mu, st.sigma
    else:
        d, before = pair_lead(st.trials, s)
        if st.rounds >= s.hold_rounds and math.isfinite(d) and d != 0:
            sign = math.copysign(1.0, d)
            if math.isfinite(before) and before != 0:
                agree = math.copysign(1.0, before) == sign
                sigma_next = min(st.sigma * 1.2, s.max_policy_step or s.p_max - s.p_min) if agree \
                    else max(st.sigma / 2, s.sigma_floor)
            mu_next = clamp(st.mu - sign * sigma_next, s.p_min, s.p_max)
    return {"advantages": advantages([r if math.isfinite(r) else 0.0 for r in rewards]), "mu_next": mu_next,
            "sigma_next": sigma_next, **commit(st.p, mu_next, candidates, rewards, s)}


def commit(p: float, mu_next: float, candidates: list[float], rewards: list[float], s: ControllerOptions) -> dict:
    """Where the committed ratio goes: toward the round's best candidate (commit_rule), or after the policy mean by
    at most max_ratio_step, every round (the probes, anchored to the mask the model trains under, then start
    where mu is rather than where the run began)."""
    if s.commit_toward == "policy_mean":
        p_next = move_toward(p, mu_next, s)
        return {"p_next": p_next, "committed": p_next, "applied": p_next}
    p_next, committed, applied = commit_rule(p, candidates, rewards, s)
    return {"p_next": p_next, "committed": committed, "applied": applied}


def needs_reference(s: ControllerOptions) -> bool:
    """Whether a round must measure the committed ratio's loss (the base loss): the commit rule compares candidates
    with it, `fit` fits it as a probe at p, a taylor calibration measures changes against it. The other updates read
    only the differences among a round's candidates, so a reward against the round's mean loss moves them the same."""
    return s.commit_toward == "best_candidate" or s.controller == "fit" or s.probe == "taylor"


# name -> (the round's update, what its options default to); the options a user sets win over these
WHOLE_SET = dict(probe_examples=0, max_policy_step=0.0)  # every micro-dev example every round, mu's step unbounded
REINFORCE = dict(ratio_rule="policy_mean", advantage="none", policy_lr=0.05, kl_coef=0.05, entropy_bonus=0.01,
                 sigma_lr=0.0, sigma_floor=1e-3, commit_toward="best_candidate",
                 **WHOLE_SET)  # the authors' update (SPEC §1.6)
PAIR = dict(ratio_rule="policy_mean", advantage="none", policy_lr=0.0, kl_coef=0.0, entropy_bonus=0.0, sigma_lr=0.0,
            sigma_init=0.05, sigma_floor=0.01, commit_toward="policy_mean", probe_examples=0, max_policy_step=0.10)
CONTROLLERS: dict[str, tuple[Callable, dict]] = {
    "paper": (paper_round, {**REINFORCE, "ratio_rule": "best_trial"}),
    "reinforce": (paper_round, REINFORCE),
    # the default until pair-online: the same update on a tenth of the probes' cost (benchmarks/RESULTS.md,
    # "Probes on 2 examples"): 2 examples a round, no reference pass (p follows mu), and mu's step bounded so that
    # one round's 2 examples cannot carry it far, where the probes (anchored to the committed mask) would then hold
    # it; and sigma kept at MIN_SIGMA or above: the raw-advantage sigma step grows with a round's loss differences,
    # and one round of two examples with a far candidate losing by a nat drove it to the paper's floor, 1e-3 (MLQA de)
    "sliced": (paper_round, {**REINFORCE, "commit_toward": "policy_mean", "probe_examples": 2,
                             "max_policy_step": 0.05, "sigma_floor": MIN_SIGMA}),
    "nes": (nes_round, dict(ratio_rule="policy_mean", advantage="rank", policy_lr=1.0, kl_coef=0.0,
                            entropy_bonus=0.0, sigma_lr=0.6, sigma_floor=MIN_SIGMA, commit_toward="policy_mean",
                            **WHOLE_SET)),
    "fit": (fit_round, dict(ratio_rule="fit", advantage="none", policy_lr=0.0, kl_coef=0.0, entropy_bonus=0.0,
                            sigma_lr=0.0, sigma_floor=MIN_SIGMA, commit_toward="policy_mean", **WHOLE_SET)),
    # sigma is the centre's step: 0.05 to start, 0.01 to 0.10; both members scored on the whole micro-dev set
    "pair": (pair_round, PAIR),
    # the default: pair as measured best on MLQA es and de at 300 examples, where it met issue 23's targets from
    # every start (benchmarks/RESULTS.md, `pair-seq-on-g2c`): members 0.2 either side, kept centred near an end,
    # scored on their own first-pass training losses (no micro-dev pass), a round every 2 steps, the centre moved by
    # a sequential test after 6 rounds, in steps of 0.1; each member pruned by its own importance every round (an
    # experiment and `search` also train them as a final run trains: MEMBERS_TRAIN_AS_FINAL_RUN)
    "pair-online": (pair_round, {**PAIR, "sigma_init": 0.1, "pair_gap": 0.2, "pair_ends": "centred",
                                 "pair_move": "sequential", "hold_rounds": 6, "round_every": 2, "probe_loss": "online",
                                 "importance_refresh": "every_round"}),
}
# what an option left unset takes when its controller's preset does not name it
SHARED_DEFAULTS = dict(round_every=10, importance_refresh="once", probe_loss="micro_dev", pair_gap=0.10,
                       pair_ends="clamp", hold_rounds=10, pair_move="rprop")
# whose members train with a final run's batching and criterion (in an experiment, and in `search` by default)
MEMBERS_TRAIN_AS_FINAL_RUN = ("pair-online",)


def trains_pair(controller: str) -> bool:
    """Whether the controller trains two members side by side (pair_round) instead of probing trial masks."""
    return CONTROLLERS[controller][0] is pair_round


def probe(model, scores: dict[str, torch.Tensor], ratios: list[float], scope: str,
          loss_fn: Callable[[], float]) -> list[float]:
    """The micro-dev loss with each ratio's mask applied as a trial (reverted exactly after each)."""
    losses = []
    for rho in ratios:
        with prune.trial(model, prune.masks_for_ratio(scores, rho, scope)):
            losses.append(loss_fn())
    return losses


def from_prior(p_star: float, st: ControllerState, s: ControllerOptions) -> bool:
    """p* ended within 0.05 of p_init while sigma never fell below its start: the prior, not a finding."""
    return abs(p_star - s.p_init) <= 0.05 and min(st.min_sigma, st.sigma) >= initial_sigma(s) - 1e-12


def offline(settings: ControllerOptions, loss_at: Callable[[int, float, float], float], rounds: int,
            estimate_at: Callable[[int, float, float], list[float]] | None = None) -> "Controller":
    """The controller run on a loss surface instead of a model: `loss_at(round, committed p, ratio)` is the micro-dev
    loss a probe would measure (a synthetic curve in tests, a recorded trace in benchmarks/replay_controller.py);
    `estimate_at` the same for the [first, second]-order terms of the loss change a `taylor` probe would estimate."""
    k, p = [0], [settings.p_init]
    estimate = None if estimate_at is None else (lambda ratios: [estimate_at(k[0], p[0], r) for r in ratios])
    ctrl = Controller(settings, lambda ratios: [loss_at(k[0], p[0], r) for r in ratios],
                      lambda ratio: p.__setitem__(0, ratio), lambda: loss_at(k[0], p[0], p[0]),
                      estimate_fn=estimate)
    for k[0] in range(rounds):
        record = ctrl.round(k[0])
        if record is None:
            break
        ctrl.history.append(record)
    return ctrl


class Controller:
    """Runs rounds: `probe(ratios)` gives the micro-dev loss under each ratio's trial mask, `base()` the committed
    ratio's, `commit(ratio)` applies a ratio's mask for training, and with probe `taylor`, `estimate(ratios)` the
    [first, second]-order terms of each ratio's estimated loss change against the committed mask. The model is reached only through these,
    so the same controller runs on a model, a recorded trace or a synthetic curve."""

    def __init__(self, settings: ControllerOptions, probe_fn: Callable[[list[float]], list[float]],
                 commit_fn: Callable[[float], object], base_fn: Callable[[], float],
                 trace_fn: Callable[[list[float]], dict] | None = None,
                 estimate_fn: Callable[[list[float]], list[list[float]]] | None = None):
        self.s = settings
        if settings.probe == "taylor" and estimate_fn is None:
            raise ValueError("probe taylor needs an estimate_fn")
        self.probe_fn, self.commit_fn, self.base_fn, self.estimate_fn = probe_fn, commit_fn, base_fn, estimate_fn
        # what a round records for `trace_ratios` (default: {"trace": [[ratio, probe loss], ...]})
        self.trace_fn = trace_fn or (lambda ratios: {"trace": [list(x) for x in zip(ratios, probe_fn(ratios))]})
        self.update = CONTROLLERS[settings.controller][0]
        self.rng = np.random.Generator(np.random.PCG64(settings.controller_seed))
        self.state = ControllerState(p=settings.p_init, mu=settings.p_init, sigma=initial_sigma(settings))
        self.history: list[dict] = []  # the rounds' records, kept by offline runs (a model run appends history.jsonl)

    def round(self, step: int) -> dict | None:
        """One round: probe G candidate ratios as trial masks, update the policy, maybe commit. None once the
        policy has converged (sigma <= converge_sigma): the run then trains at p* without probes."""
        start = time.time()
        st, s = self.state, self.s
        if st.converged_at is not None:
            return None
        taylor = s.probe == "taylor"
        cal = calibrate(st.calibration) if taylor else None
        candidates = pair_ratios(st.p, s) if trains_pair(s.controller) else \
            sample_candidates(self.rng, st.mu, st.sigma, s.group_size, s.p_min, s.p_max)
        estimates = self.estimate_fn(candidates) if taylor else None
        # measure: always by forward; by taylor until calibrated, every calibrate_every rounds, and where an estimate
        # lies beyond the calibrated reach (it is refitted on them)
        measured = cal is None or bool(s.calibrate_every and st.rounds % s.calibrate_every == 0) \
            or not all(cal.covers(e) for e in estimates)
        # estimated rounds: changes against the committed mask; a rule that needs no reference gets none (None)
        base_loss = (self.base_fn() if needs_reference(s) else None) if measured else 0.0
        if measured:
            losses = self.probe_fn(candidates)
            if taylor:
                st.calibration += [[*e, l - base_loss] for e, l in zip(estimates, losses) if math.isfinite(l)]
        else:
            losses = [cal(e) for e in estimates]
        finite = [l for l in losses if math.isfinite(l)]
        reference = base_loss if base_loss is not None else (float(np.mean(finite)) if finite else math.nan)
        rewards = [reference - l if math.isfinite(l) else float("nan") for l in losses]
        record = {"step": step, "p": st.p, "mu": st.mu, "sigma": st.sigma, "candidates": candidates,
                  "base_loss": base_loss, "losses": losses, "rewards": rewards}
        if taylor:
            record.update(estimates=estimates, measured=measured, calibration=None if cal is None else asdict(cal))
        trace_seconds = 0.0
        if s.trace_ratios:  # diagnosis: the loss at fixed ratios on this round's weights, unseen by the policy
            t0 = time.time()
            record.update(self.trace_fn(list(s.trace_ratios)))
            record["trace_seconds"] = trace_seconds = time.time() - t0
        st.observe(base_loss, candidates, losses, rewards)
        decision = self.update(st, candidates, rewards, s)
        if decision["applied"] is not None:
            self.commit_fn(decision["applied"])
        st.min_sigma = min(st.min_sigma, st.sigma, decision["sigma_next"])
        st.p, st.mu, st.sigma = decision["p_next"], decision["mu_next"], decision["sigma_next"]
        st.rounds += 1
        if s.converge_sigma and st.sigma <= s.converge_sigma:  # settled: train at p* from here on
            st.converged_at = step
            st.p = decision["p_next"] = self.result()["prune_ratio"]
            self.commit_fn(st.p)
        return {**record, **decision, "converged": st.converged_at is not None,
                "seconds": time.time() - start - trace_seconds}

    def result(self) -> dict:
        """ratio.json: p* by the asked rule (the committed ratio when that rule cannot tell, e.g. no
        finite trial; `rule` says which was used) and what every registered rule gives. `from_prior`: p* ended
        within 0.05 of p_init while sigma never fell below its start -- the ratio is then the prior, not a
        finding."""
        st = self.state
        by_rule = {name: fn(st, self.s) for name, fn in RATIO_RULES.items()}
        rule = self.s.ratio_rule if by_rule[self.s.ratio_rule] is not None else "committed"
        return {"prune_ratio": by_rule[rule], "rule": rule, "asked_rule": self.s.ratio_rule,
                "controller": self.s.controller, "by_rule": by_rule, "trials": sum(len(t[2]) for t in st.trials),
                "best_reward": st.best_reward if math.isfinite(st.best_reward) else None,
                "best_candidate": st.best_candidate, "from_prior": self.from_prior(by_rule[rule]),
                "rounds": st.rounds, "final_p": st.p, "final_mu": st.mu, "final_sigma": st.sigma,
                "min_sigma": min(st.min_sigma, st.sigma), "converged_at": st.converged_at}

    def from_prior(self, p_star: float) -> bool:
        return from_prior(p_star, self.state, self.s)

    def state_dict(self) -> dict:
        return {"state": asdict(self.state), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, sd: dict) -> None:
        self.state = ControllerState(**sd["state"])
        self.rng.bit_generator.state = sd["rng"]
