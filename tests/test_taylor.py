"""Probes without a forward (`--probe taylor`): the estimate's math, its gradients at masked entries on a real
model, the calibration, and a search run that trains exactly as one that probes by forward."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import cli
from grasp_lora import prune
from grasp_lora.config import ControllerOptions, SearchConfig, build
from grasp_lora.controller import MIN_FIT, REACH, calibrate, offline
from grasp_lora.files import read_jsonl
from grasp_lora.merged_run import setup_merged
from grasp_lora.taylor import GradientMoments, loss_change
from grasp_lora.data.batching import collate
from grasp_lora.train import example_nll
from test_controller import search_args, synthetic


def test_loss_change_is_exact_on_a_quadratic():
    """On L(w) = c.w + 1/2 sum(h w^2) the second-order estimate from the gradient and curvature at `now` is exact."""
    gen = torch.Generator().manual_seed(0)
    c, h, now, new = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(4))
    h = h.abs()
    loss = lambda w: float((c * w).sum() + 0.5 * (h * w * w).sum())
    assert sum(loss_change(c + h * now, h, now, new)) == pytest.approx(loss(new) - loss(now), rel=1e-9)


def test_calibration():
    """a * first + b * second (a, b >= 0) fitted to the measured changes from 3 candidates on, trusted up to REACH
    times the largest calibrated terms; none while it explains less than MIN_FIT of them."""
    assert calibrate([]) is None and calibrate([[1.0, 0.1, 2.0]] * 2) is None
    exact = calibrate([[f, s, 0.7 * f + 40 * s] for f, s in ((-2.0, 0.01), (-0.5, 0.002), (0.3, 0.004), (1.0, 0.0))])
    assert (exact.a, exact.b, exact.fit) == (pytest.approx(0.7), pytest.approx(40.0), pytest.approx(1.0))
    assert exact.reach == pytest.approx((2.0 * REACH, 0.01 * REACH)) and exact([-1.0, 0.005]) == pytest.approx(-0.5)
    assert exact.covers([2.9, 0.0]) and not exact.covers([3.1, 0.0])
    first_only = calibrate([[f, 0.0, 2 * f] for f in (1.0, -2.0, 0.5)])
    assert (first_only.a, first_only.b) == (pytest.approx(2.0), 0.0)
    noise = np.random.default_rng(0).normal(size=12)
    assert calibrate([[f, 0.0, m] for f, m in zip(np.linspace(-1, 1, 12), noise)]) is None  # fit < MIN_FIT
    assert calibrate([[f, 0.0, -f] for f in (1.0, -2.0, 0.5)]) is None  # the first-order term points the wrong way
    curved = calibrate([[f, s, 40 * s] for f, s in ((1.0, 0.01), (-2.0, 0.02), (0.5, 0.001))])  # curvature alone
    assert (curved.a, curved.b) == (0.0, pytest.approx(40.0))


def test_estimates_calibrated_once_steer_as_the_measurements():
    """Estimates proportional to the measured changes (any positive factor) are calibrated on the first rounds and
    then steer the policy exactly as the measurements would; a round measures again only when an estimate lies
    beyond the calibrated reach."""
    curve = synthetic(0.7, 0.0, 0)
    forward = offline(ControllerOptions(controller="sliced", p_init=0.2), curve, 15)
    est = offline(ControllerOptions(controller="sliced", p_init=0.2, probe="taylor"), curve, 15,
                  estimate_at=lambda k, p, r: [0.3 * (curve(k, p, r) - curve(k, p, p)), 0.0])
    measured = [r["measured"] for r in est.history]
    assert measured[0] and sum(measured) <= 3
    for rec in est.history:
        cal = rec["calibration"]
        assert rec["measured"] if cal is None else (cal["a"], cal["b"]) == (pytest.approx(1 / 0.3), 0.0)
        assert rec["measured"] or all(cal is not None and abs(t) <= r for e in rec["estimates"] for t, r in zip(e, cal["reach"]))
    for a, b in zip(forward.history, est.history):  # rewards against another reference: the same advantages
        assert np.allclose(a["candidates"], b["candidates"], atol=1e-12)
        assert np.allclose(a["advantages"], b["advantages"], atol=1e-9)
    assert est.result()["prune_ratio"] == pytest.approx(forward.result()["prune_ratio"], abs=1e-9)
    every = offline(ControllerOptions(controller="sliced", p_init=0.2, probe="taylor", calibrate_every=3), curve, 8,
                    estimate_at=lambda k, p, r: [curve(k, p, r) - curve(k, p, p), 0.0])
    assert all(r["measured"] for r in every.history[::3])


def test_estimate_predicts_a_measured_mask_change(tiny_model, tiny_adapters, demo_data):
    """On a real merged model pruned at 0.4, the gradients of one backward (masked entries included) predict the loss
    change of reviving one stashed entry or pruning one more, measured on the same batch, in every tensor. (Whole
    ratios apart, a tiny random model is too curved for a local estimate; SmolLM2's real adapters are not:
    benchmarks/RESULTS.md.)"""
    cfg = build(SearchConfig, overrides=dict(model=str(tiny_model), adapters=[str(tiny_adapters["en"]),
                                                                             str(tiny_adapters["ar"])],
                                             data=str(demo_data["ar"]), lang="ar", out="unused", dropout=0.0))
    model = (setup := setup_merged(cfg, ("train",))).model
    prune.commit_masks(model, prune.masks_for_ratio(prune.CRITERIA["magnitude"](model, None).scores(), 0.4))
    batch = collate(setup.examples["train"][:4], setup.tok.pad_token_id, setup.device)
    moments = GradientMoments(model, per_step=4)
    model.train()
    example_nll(model, batch).mean().backward()
    moments.add_step()
    assert all(not layer.param(slot).grad[~layer.mask(slot)].any() for _, layer, slot in prune.tensors(model))
    model.eval()
    loss = lambda: float(example_nll(model, batch).mean())
    with torch.no_grad():
        base = loss()
    now = prune.current_masks(model)
    pairs = []
    for name, layer, slot in prune.tensors(model):
        full = layer.full(slot).abs()
        for revive in (True, False):  # the largest stashed entry, the smallest kept one
            pick = torch.where(now[name] != revive, full, torch.tensor(-1.0 if revive else math.inf))
            masks = {k: v.clone() for k, v in now.items()}
            masks[name].view(-1)[int(pick.argmax() if revive else pick.argmin())] = revive
            estimated = sum(moments.estimate(masks))
            with torch.no_grad(), prune.trial(model, masks):
                pairs.append((revive, estimated, loss() - base))
    for kind in (True, False):  # reviving needs the masked entries' gradients
        est, meas = np.asarray([p[1:] for p in pairs if p[0] == kind and abs(p[2]) > 1e-5]).T
        assert len(est) >= 5 and np.corrcoef(est, meas)[0, 1] > 0.9
        assert np.median(np.abs(est - meas) / np.abs(meas)) < 0.2


def test_search_with_taylor_probes_trains_as_forward_probes(tmp_path, tiny_model, tiny_adapters, demo_data):
    """Reading every entry's gradient changes nothing in training: a taylor run that measures every round
    (--calibrate-every 1) has the forward run's training losses, candidates and rewards to the bit. By default it
    measures until its estimates are calibrated, then estimates; ratio.json and the costs are as for any search."""
    runs = {}
    for name, extra in (("forward", []), ("every", ["--probe", "taylor", "--calibrate-every", 1]),
                        ("taylor", ["--probe", "taylor", "--max-steps", 12, "--trace-ratios", 0.3, 0.5])):
        out = tmp_path / name
        assert cli(*search_args(tiny_model, tiny_adapters, demo_data, out, *extra)) == 0
        runs[name] = ([r["loss"] for r in read_jsonl(out / "train_log.jsonl")], read_jsonl(out / "history.jsonl"),
                      json.loads((out / "ratio.json").read_text()))
    assert runs["forward"][0] == runs["every"][0]
    for a, b in zip(runs["forward"][1], runs["every"][1]):
        assert (a["candidates"], a["p_next"]) == (b["candidates"], b["p_next"])
        assert np.allclose(a["advantages"], b["advantages"], atol=1e-9)
        assert b["measured"] and len(b["estimates"]) == 3 and all(map(math.isfinite, np.ravel(b["estimates"])))
    _, hist, ratio = runs["taylor"]
    assert len(hist) == 6 and hist[0]["measured"] and hist[0]["calibration"] is None
    estimated = [r for r in hist if not r["measured"]]
    assert estimated
    for rec in estimated:  # changes against the committed mask through the calibration, within its reach
        cal = rec["calibration"]
        assert rec["base_loss"] == 0.0 and cal["fit"] >= MIN_FIT
        assert all(abs(t) <= r for e in rec["estimates"] for t, r in zip(e, cal["reach"]))
        assert rec["losses"] == pytest.approx([cal["a"] * f + cal["b"] * s for f, s in rec["estimates"]])
    assert ratio["probe_seconds"] > 0 and 0.1 <= ratio["prune_ratio"] <= 0.8
    # a trace records, beside the forward probes, the estimates at the same ratios
    assert all([r for r, _ in rec["trace_estimate"]] == [0.3, 0.5] and all(map(math.isfinite, np.ravel(
        [e for _, e in rec["trace_estimate"]]))) for rec in hist)


def test_taylor_needs_instant_probes_from_the_current_weights(tmp_path, tiny_model, tiny_adapters, demo_data, capsys):
    assert cli(*search_args(tiny_model, tiny_adapters, demo_data, tmp_path / "x", "--probe", "taylor",
                            "--lookahead-steps", 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lookahead-steps" in err[0] and "Traceback" not in err[0]
