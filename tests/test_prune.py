"""Masks: exact counts, deterministic ties, gradient masking, optimizer moments, the input-weighted criterion."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from grasp_lora import prune
from grasp_lora.adapter_io import load_adapter
from grasp_lora.data.batching import batches
from grasp_lora.merge import inject


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


def test_input_weighted_closed_form_equals_autograd_in_float64():
    torch.manual_seed(0)
    A, B, n = torch.randn(3, 40), torch.randn(50, 3), torch.rand(40) + 0.1
    # the formula, directly: S = sum_{o,j} |(BA)_{oj}| n_j, differentiated by autograd in float64
    A64, B64 = A.double().requires_grad_(True), B.double().requires_grad_(True)
    S = ((B64 @ A64).abs() * n.double()).sum()
    dA, dB = torch.autograd.grad(S, (A64, B64))
    for rows in (1024, 7):  # whole, and in chunks of output rows that do not divide 50
        gA, gB = prune.input_weighted_importance(A, B, n, rows=rows)
        assert gA.dtype == torch.float32 and gB.dtype == torch.float32  # the working dtype, not float64
        assert torch.allclose(gA.double(), dA.abs(), rtol=1e-5, atol=1e-5)
        assert torch.allclose(gB.double(), dB.abs(), rtol=1e-5, atol=1e-5)


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


def trained_then_pruned(tiny_model, tiny_adapters, reset, ratio=0.5):
    """A merged model whose weights moved away from their loaded values, then pruned at `ratio`."""
    model = merged_model(tiny_model, tiny_adapters).eval()
    initial = prune.initial_values(model)
    with torch.no_grad():
        for _, layer, slot in prune.tensors(model):
            layer.param(slot).add_(0.5)
    before = {n: l.param(s).detach().clone() for n, l, s in prune.tensors(model)}
    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), ratio), reset, None, initial)
    return model, initial, before


def snapshot(model):
    return [(l.param(s).detach().clone(), l.mask(s).clone(), l.stash(s).clone()) for _, l, s in prune.tensors(model)]


def test_trial_revives_stashed_values_and_reverts_bit_exactly(tiny_model, tiny_adapters):
    model, _, before = trained_then_pruned(tiny_model, tiny_adapters, "keep", 0.6)
    ids = torch.randint(3, 500, (1, 10))
    base_logits, base_state = model(input_ids=ids).logits, snapshot(model)
    for name, layer, slot in prune.tensors(model):
        pruned = ~layer.mask(slot)
        assert (layer.param(slot)[pruned] == 0).all()  # masked entries are 0 in the weights ...
        assert torch.equal(layer.stash(slot)[pruned], before[name][pruned])  # ... and kept in the stash
    lower = prune.masks_for_ratio(prune.magnitude_scores(model), 0.3)
    with prune.trial(model, lower):
        for name, layer, slot in prune.tensors(model):
            keep = lower[name]
            assert torch.equal(layer.masked(slot)[keep], before[name][keep])  # revived at their true values
        assert not torch.equal(model(input_ids=ids).logits, base_logits)  # a lower ratio is a real change
    after = snapshot(model)
    assert all(torch.equal(x, y) for a, b in zip(base_state, after) for x, y in zip(a, b))
    assert torch.equal(model(input_ids=ids).logits, base_logits)


@pytest.mark.parametrize("reset", ["keep", "zero", "init"])
def test_commit_that_unprunes_restores_the_reset_value(tiny_model, tiny_adapters, reset):
    model, initial, before = trained_then_pruned(tiny_model, tiny_adapters, reset)
    pruned = {n: ~l.mask(s) for n, l, s in prune.tensors(model)}
    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.0), reset)
    for name, layer, slot in prune.tensors(model):
        revived = layer.masked(slot)[pruned[name]]  # what the forward pass uses
        expected = {"keep": before[name], "zero": torch.zeros_like(before[name]), "init": initial[name]}[reset]
        assert torch.equal(revived, expected[pruned[name]])


@pytest.mark.parametrize("reset", ["keep", "zero", "init"])
def test_masked_entries_are_ranked_by_their_revival_value(tiny_model, tiny_adapters, reset):
    model, initial, before = trained_then_pruned(tiny_model, tiny_adapters, reset)
    scores = prune.magnitude_scores(model)
    for name, layer, slot in prune.tensors(model):
        pruned = ~layer.mask(slot)
        expected = {"keep": before[name], "zero": torch.zeros_like(before[name]), "init": initial[name]}[reset]
        assert torch.equal(scores[name][pruned], expected[pruned].abs())


def test_reset_train_keeps_masked_entries_training_on_the_straight_through_gradient(tiny_model, tiny_adapters):
    """`--reset train`: the forward sees w * mask exactly, masked entries still get their gradient and move, a trial
    revives them at their current (trained) value and reverts bit-exactly; a commit only swaps masks."""
    model = merged_model(tiny_model, tiny_adapters)
    with pytest.raises(ValueError, match="straight_through"):
        prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.5), "train")
    prune.straight_through(model)
    prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), 0.5), "train")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 500, (2, 12))
    before = {n: l.param(s).detach().clone() for n, l, s in prune.tensors(model)}
    model(input_ids=ids).logits.pow(2).mean().backward()
    for name, layer, slot in prune.tensors(model):
        pruned = ~layer.mask(slot)
        assert torch.equal(layer.masked(slot), layer.param(slot) * layer.mask(slot))  # the forward's value
        assert (layer.param(slot).grad[pruned] != 0).any()  # ... and a gradient where masked
    opt.step()
    for name, layer, slot in prune.tensors(model):
        pruned = ~layer.mask(slot)
        assert not torch.equal(layer.param(slot)[pruned], before[name][pruned])  # masked entries trained
    model.eval()
    base_logits, base_state = model(input_ids=ids).logits, snapshot(model)
    lower = prune.masks_for_ratio(prune.magnitude_scores(model), 0.2)
    with prune.trial(model, lower):
        for name, layer, slot in prune.tensors(model):
            assert torch.equal(layer.masked(slot)[lower[name]], layer.param(slot)[lower[name]])  # current values
        assert not torch.equal(model(input_ids=ids).logits, base_logits)
    assert all(torch.equal(x, y) for a, b in zip(base_state, snapshot(model)) for x, y in zip(a, b))
    trained = {n: l.param(s).detach().clone() for n, l, s in prune.tensors(model)}
    assert prune.commit_masks(model, lower, "train") == 0  # un-pruning only: no value changes
    assert all(torch.equal(l.param(s), trained[n]) for n, l, s in prune.tensors(model))
    # what is exported (factors) holds 0 at masked entries, the trained values elsewhere
    layer = next(iter(prune.merged_layers(model).values()))
    A = layer.factors()[1]
    assert torch.equal(A, torch.cat([layer.param(f"A{i}") * layer.mask(f"A{i}") for i in range(2)]))
    assert (A == 0).sum() >= (~torch.cat([layer.mask(f"A{i}") for i in range(2)])).sum() > 0


def test_sensitivity_scores_after_gradients(tiny_model, tiny_adapters):
    model = merged_model(tiny_model, tiny_adapters)
    tracker = prune.CRITERIA["sensitivity"](model, batches=lambda: [])
    model(input_ids=torch.randint(3, 500, (1, 8))).logits.pow(2).mean().backward()
    tracker.after_backward()
    scores = tracker.scores()
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
    norms = prune.input_feature_norms(model, batches(ex, tok.pad_token_id, torch.device("cpu"), 4))
    n_tokens = sum(len(e["input_ids"]) for e in ex)
    for n in norms.values():
        # each token is RMS-normalised (eps 1e-6), so the squared norms over features sum to about d * tokens
        assert torch.isclose(n.double().pow(2).sum(), torch.tensor(32.0 * n_tokens, dtype=torch.float64), rtol=1e-2)
    scores = prune.input_weighted_scores(model, norms)
    assert len(scores) == 16


def test_input_norms_are_the_residual_stream_under_unit_rmsnorm(tiny_model, tiny_adapters, demo_data):
    """With random non-unit layernorm gains, q/v norms equal the decoder layer's input hidden state under a
    unit-weight RMSNorm, computed directly from output_hidden_states."""
    from transformers import AutoTokenizer

    from grasp_lora.data.prompts import get_prompt
    from grasp_lora.data.splits import load_split
    from grasp_lora.data.tokenize import encode_split
    from grasp_lora.data.batching import collate

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = encode_split(tok, get_prompt("qa", "ar"), load_split(demo_data["ar"], "train", "qa"), 512)
    model = merged_model(tiny_model, tiny_adapters)
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(torch.rand(32) * 3 + 0.1)
            layer.post_attention_layernorm.weight.copy_(torch.rand(32) * 3 + 0.1)
    norms = prune.input_feature_norms(model, batches(ex, tok.pad_token_id, torch.device("cpu"), 4))
    expected = [torch.zeros(32, dtype=torch.float64) for _ in model.model.layers]
    with torch.no_grad():
        for s in range(0, len(ex), 3):
            batch = collate(ex[s:s + 3], tok.pad_token_id, torch.device("cpu"))
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states
            m = batch["attention_mask"].bool()
            for i in range(len(expected)):
                h = hidden[i][m].double()
                h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
                expected[i] += h.pow(2).sum(0)
    for i, e in enumerate(expected):
        for proj in ("q_proj", "v_proj"):
            got = norms[f"model.layers.{i}.self_attn.{proj}"].double()
            assert torch.allclose(got, e.sqrt(), rtol=1e-4), (i, proj)
