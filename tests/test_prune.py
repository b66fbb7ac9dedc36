"""Masks: exact counts, deterministic ties, gradient masking, optimizer moments, the input-weighted criterion."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from grasp_lora import prune
from grasp_lora.merge import inject, load_adapter


def test_exact_count_per_tensor_and_ties_by_position():
    scores = {"a": torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 2.0]]), "b": torch.arange(10.0)}
    masks = prune.masks_for_ratio(scores, 0.5)
    assert (~masks["a"]).sum() == math.floor(0.5 * 6) == 3
    # lowest 0.5 first, then the earliest of the tied 1.0s
    assert masks["a"].tolist() == [[False, False, True], [True, False, True]]
    assert masks["b"].tolist() == [False] * 5 + [True] * 5
    for p in (0.0, 0.1, 0.33, 0.8, 0.99):
        m = prune.masks_for_ratio({"x": torch.rand(7, 13)}, p)
        assert int((~m["x"]).sum()) == math.floor(p * 91)


def test_global_scope_one_threshold():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.1, 0.2, 10.0, 20.0])}
    masks = prune.masks_for_ratio(scores, 0.5, "global")
    assert masks["a"].tolist() == [False, False, True, True]
    assert masks["b"].tolist() == [False, False, True, True]
    masks = prune.masks_for_ratio(scores, 0.25, "global")
    assert masks["b"].tolist() == [False, False, True, True] and masks["a"].all()


def test_input_weighted_matches_analytic_gradient():
    torch.manual_seed(0)
    A, B, n = torch.randn(2, 3), torch.randn(4, 2), torch.rand(3) + 0.1
    gA, gB = prune.input_weighted_importance(A, B, n)
    # S = sum_{o,j} |(BA)_{oj}| n_j  =>  dS/dA_{kj} = sum_o sign((BA)_{oj}) n_j B_{ok};  dS/dB_{ok} = sum_j sign((BA)_{oj}) n_j A_{kj}
    sign = torch.sign(B @ A)
    expected_A = (B.T @ (sign * n)).abs()
    expected_B = ((sign * n) @ A.T).abs()
    assert torch.allclose(gA, expected_A, atol=1e-6) and torch.allclose(gB, expected_B, atol=1e-6)


def merged_model(tiny_model, tiny_adapters):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    for p in model.parameters():
        p.requires_grad_(False)
    inject(model, [load_adapter(tiny_adapters["en"]), load_adapter(tiny_adapters["ar"])], "sum", 0.0)
    return model


def test_masked_entries_stay_zero_and_only_new_ones_lose_moments(tiny_model, tiny_adapters):
    model = merged_model(tiny_model, tiny_adapters)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.randint(3, 500, (2, 12))

    def step():
        model(input_ids=ids).logits.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.3), "zero", opt)
    step()
    step()
    before = {n: l.mask(s).clone() for n, l, s in prune.tensors(model)}
    moments_before = {n: opt.state[l.param(s)]["exp_avg"].clone() for n, l, s in prune.tensors(model)}
    newly = prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.6), "zero", opt)
    assert newly > 0
    for name, layer, slot in prune.tensors(model):
        p, mask = layer.param(slot), layer.mask(slot)
        new = before[name] & ~mask
        st = opt.state[p]
        assert (st["exp_avg"][new] == 0).all() and (st["exp_avg_sq"][new] == 0).all()
        kept = mask
        assert torch.equal(st["exp_avg"][kept], moments_before[name][kept])  # the others keep theirs
    for _ in range(3):
        step()
        for name, layer, slot in prune.tensors(model):
            p, mask = layer.param(slot), layer.mask(slot)
            assert (p[~mask] == 0).all()
            assert int((~mask).sum()) == math.floor(0.6 * p.numel())


def test_trial_masks_revert_bit_exactly(tiny_model, tiny_adapters):
    model = merged_model(tiny_model, tiny_adapters).eval()
    ids = torch.randint(3, 500, (1, 10))
    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.4))
    before_logits = model(input_ids=ids).logits
    weights = {n: l.param(s).detach().clone() for n, l, s in prune.tensors(model)}
    committed = prune.current_masks(model)
    prune.set_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.7))
    assert not torch.equal(model(input_ids=ids).logits, before_logits)
    prune.set_masks(model, committed)
    assert torch.equal(model(input_ids=ids).logits, before_logits)
    assert all(torch.equal(weights[n], l.param(s)) for n, l, s in prune.tensors(model))


def test_init_reset_restores_loaded_values(tiny_model, tiny_adapters):
    model = merged_model(tiny_model, tiny_adapters)
    initial = prune.initial_values(model)
    with torch.no_grad():
        for _, layer, slot in prune.tensors(model):
            layer.param(slot).add_(1.0)
    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.5), "init", None, initial)
    for name, layer, slot in prune.tensors(model):
        pruned = ~layer.mask(slot)
        assert torch.equal(layer.param(slot)[pruned], initial[name][pruned])


def test_sensitivity_scores_after_gradients(tiny_model, tiny_adapters):
    model = merged_model(tiny_model, tiny_adapters)
    tracker = prune.SensitivityTracker()
    model(input_ids=torch.randint(3, 500, (1, 8))).logits.pow(2).mean().backward()
    tracker.update(model)
    scores = tracker.scores(model)
    assert set(scores) == {n for n, _, _ in prune.tensors(model)}
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in scores.values())
    assert any(s.sum() > 0 for s in scores.values())


def test_input_feature_norms_cover_every_layer(tiny_model, tiny_adapters, demo_data):
    from grasp_lora.data.prompts import get_prompt
    from grasp_lora.data.splits import load_split
    from grasp_lora.data.tokenize import encode_split
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = encode_split(tok, get_prompt("qa", "ar"), load_split(demo_data["ar"], "train", "qa"), 512)
    model = merged_model(tiny_model, tiny_adapters)
    norms = prune.input_feature_norms(model, ex, tok.pad_token_id, torch.device("cpu"), batch_size=4)
    n_tokens = sum(len(e["input_ids"]) for e in ex)
    for n in norms.values():
        # each token is RMS-normalised, so the squared norms over features sum to d * tokens
        assert torch.isclose(n.double().pow(2).sum(), torch.tensor(32.0 * n_tokens, dtype=torch.float64), rtol=1e-3)
    scores = prune.input_weighted_scores(model, norms)
    assert len(scores) == 16
