"""What makes the learned ratio mean something: measured trials, the controller run's own micro-batching, a loss
that does not depend on how a step is cut, dropout per adapter, and the ratio rules."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import cli, corpus_file
from grasp_lora.config import ControllerOptions
from grasp_lora.controller import RATIO_RULES, ControllerState, pooled_fit
from grasp_lora.files import read_jsonl
from grasp_lora.adapter_io import load_adapter
from grasp_lora.merge import MergedLoraLinear, inject


@pytest.fixture(scope="session")
def trained_adapters(tmp_path_factory, tiny_model, demo_data) -> dict[str, str]:
    """en and ar adapters trained on the tiny model (PEFT's init: B = 0, so training is what moves them)."""
    root = tmp_path_factory.mktemp("trained-adapters")
    for lang in ("en", "ar"):
        assert cli("train-adapter", "--model", tiny_model, "--data", demo_data[lang], "--lang", lang,
                   "--out", root / lang, "--max-steps", 6, "--grad-accum", 2, "--lr", "2e-2") == 0
    return {lang: str(root / lang) for lang in ("en", "ar")}


@pytest.fixture(scope="session")
def ar50(tmp_path_factory) -> str:
    """Arabic QA splits with the paper's 50 training examples."""
    out = tmp_path_factory.mktemp("ar50") / "ar"
    assert cli("data", "prepare", "--dataset", "mlqa", "--lang", "ar", "--input", corpus_file("qa", "ar"),
               "--out", out, "--sizes", "50,8,8,8") == 0
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("reset", ["keep", "train"])
def test_long_search_has_no_zero_reward_ties(tmp_path, tiny_model, trained_adapters, demo_data, reset):
    """Every candidate whose mask differs from the committed one is really measured: its reward is not 0."""
    out = tmp_path / "s"
    assert cli("search", "--model", tiny_model, "--adapters", trained_adapters["en"], trained_adapters["ar"],
               "--data", demo_data["ar"], "--lang", "ar", "--out", out, "--max-steps", 12, "--round-every", 1,
               "--lr", "1e-2", "--group-size", 3, "--reset", reset) == 0
    history = read_jsonl(out / "history.jsonl")
    assert len(history) >= 10
    different = 0
    for rec in history:
        for c, r in zip(rec["candidates"], rec["rewards"]):
            if math.floor(c * 128) != math.floor(rec["p"] * 128):  # the masks of the 128-entry tensors differ
                different += 1
                assert r != 0.0, (rec["step"], c, rec["p"])
    assert different >= 20
    lower = [r for rec in history for c, r in zip(rec["candidates"], rec["rewards"]) if c < rec["p"] - 0.01]
    assert lower and all(r != 0.0 for r in lower)  # reviving pruned entries changes the loss


@pytest.mark.slow
def test_search_defaults_to_accumulation_one(tmp_path, tiny_model, tiny_adapters, ar50):
    """One epoch over 50 examples with a probing controller's defaults: 50 optimizer steps, so 5 rounds at K = 10;
    with the default pair-online, accumulation 8 as finetune-merged: 7 steps."""
    args = ["search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data", ar50,
            "--lang", "ar", "--epochs", 1]
    assert cli(*args, "--out", tmp_path / "pair") == 0
    assert len(read_jsonl(tmp_path / "pair" / "train_log.jsonl")) == 7
    out = tmp_path / "s"
    assert cli(*args, "--out", out, "--controller", "sliced") == 0
    assert len(read_jsonl(out / "train_log.jsonl")) == 50
    assert len(read_jsonl(out / "history.jsonl")) >= 4
    ratio = json.loads((out / "ratio.json").read_text())
    assert ratio["rounds"] >= 4 and set(ratio["by_rule"]) == set(RATIO_RULES)
    # every rule can be re-read from history.jsonl alone
    st = ControllerState.from_history(read_jsonl(out / "history.jsonl"))
    assert {k: fn(st, ControllerOptions(controller="sliced")) for k, fn in RATIO_RULES.items()} == ratio["by_rule"]


def test_experiment_gives_the_controller_run_its_own_batching():
    from grasp_lora.config import ExperimentConfig
    from grasp_lora.pipeline import search_batching

    inputs = dict(source_input="en.json", target_input="ar.json")
    c = ExperimentConfig(max_steps=10, batch_size=2, grad_accum=3, controller="sliced", **inputs)
    assert search_batching(c) == {"batch_size": 1, "grad_accum": 1, "max_steps": 60}  # the same 60 examples
    c = ExperimentConfig(max_steps=10, batch_size=2, grad_accum=3, **inputs)  # pair-online: the final run's
    assert search_batching(c) == {"batch_size": 2, "grad_accum": 3, "max_steps": 10}
    c = ExperimentConfig(max_steps=0, search_grad_accum=2, search_max_steps=None, **inputs)
    assert search_batching(c)["max_steps"] == 0
    c = ExperimentConfig(search_batch_size=2, search_grad_accum=4, search_max_steps=7, **inputs)
    assert search_batching(c) == {"batch_size": 2, "grad_accum": 4, "max_steps": 7}


@pytest.mark.parametrize("command", ["train-adapter", "finetune-merged"])
def test_loss_does_not_depend_on_how_a_step_is_cut(tmp_path, tiny_model, tiny_adapters, demo_data, command):
    """batch 2 x accumulation 1 and batch 1 x accumulation 2: the same adapter after 3 steps (dropout 0)."""
    weights = []
    for batch, accum in ((2, 1), (1, 2)):
        out = tmp_path / f"b{batch}a{accum}"
        args = [command, "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
                "--max-steps", 3, "--batch-size", batch, "--grad-accum", accum, "--dropout", 0, "--lr", "1e-3"]
        if command == "finetune-merged":
            args += ["--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--prune-ratio", 0]
        assert cli(*args) == 0
        adapter = out / "adapter" if command == "finetune-merged" else out
        weights.append(load_file(adapter / "adapter_model.safetensors"))
    a, b = weights
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_dropout_one_draw_per_adapter_in_the_sum_form():
    torch.manual_seed(0)
    base = nn.Linear(6, 5, bias=False)
    As, Bs = [torch.randn(2, 6), torch.randn(2, 6)], [torch.randn(5, 2), torch.randn(5, 2)]
    layer = MergedLoraLinear(base, As, Bs, [1.5, 0.5], "sum", [0.5, 0.25]).train()
    x = torch.randn(3, 6)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    d0, d1 = nn.functional.dropout(x, 0.5), nn.functional.dropout(x, 0.25)  # PEFT: each adapter its own mask
    expected = base(x) + 1.5 * (d0 @ As[0].T) @ Bs[0].T + 0.5 * (d1 @ As[1].T) @ Bs[1].T
    assert torch.allclose(y, expected, atol=1e-6)
    layer.eval()  # no dropout: the one concatenated low-rank product
    assert torch.allclose(layer(x), base(x) + 1.5 * (x @ As[0].T) @ Bs[0].T + 0.5 * (x @ As[1].T) @ Bs[1].T, atol=1e-6)


def test_dropout_rates_by_form(tiny_model, tiny_adapters):
    from transformers import AutoModelForCausalLM

    ads = [load_adapter(tiny_adapters["en"]), load_adapter(tiny_adapters["ar"])]
    ads[1].config["lora_dropout"] = 0.2
    for form, dropout, expected in (("sum", None, [0.0, 0.2]), ("paper", None, [0.0]), ("sum", 0.1, [0.1, 0.1]),
                                    ("paper", 0.3, [0.3])):
        layers = inject(AutoModelForCausalLM.from_pretrained(tiny_model), ads, form, dropout)
        for layer in layers.values():
            assert [d.p if isinstance(d, nn.Dropout) else 0.0 for d in layer.dropouts] == expected, (form, dropout)


def test_pooled_rule_recovers_a_curve_under_round_offsets():
    """Probes of L(rho) = c_round + (rho - 0.55)^2 plus noise, each round with its own offset: the pooled fit
    finds 0.55 while the single best draw is wherever the noise put it."""
    rng = np.random.default_rng(0)
    trials = []
    for k in range(6):
        p, c = 0.4, 3.0 - 0.2 * k
        cands = list(np.clip(rng.normal(0.45, 0.15, 3), 0.1, 0.8))
        loss = lambda r: c + (r - 0.55) ** 2 + rng.normal(0, 0.002)
        trials.append([p, loss(p), cands, [loss(r) for r in cands]])
    ratio, (a, b) = pooled_fit(trials, 0.1, 0.8)
    assert abs(ratio - 0.55) < 0.03 and b > 0
    assert pooled_fit(trials[:1][:1], 0.1, 0.8) is not None  # 4 distinct ratios in one round suffice
    assert pooled_fit([[0.4, 1.0, [0.4, 0.4], [1.0, 1.0]]], 0.1, 0.8) is None  # one ratio: it cannot tell
    st = ControllerState(p=0.4, mu=0.4, sigma=0.1, trials=trials)
    assert RATIO_RULES["pooled"](st, ControllerOptions()) == ratio
    # a NaN probe is left out, not fitted
    trials[0][3][0] = None
    assert abs(pooled_fit(trials, 0.1, 0.8)[0] - 0.55) < 0.03


def test_config_choices_are_the_registries():
    import dataclasses

    from grasp_lora import prune
    from grasp_lora.config import ControllerOptions, PruneOptions

    fields = {f.name: f for f in dataclasses.fields(ControllerOptions)}
    assert set(fields["ratio_rule"].metadata["choices"]) == set(RATIO_RULES)
    fields = {f.name: f for f in dataclasses.fields(PruneOptions)}
    assert set(fields["reset"].metadata["choices"]) == set(prune.RESETS)
    assert fields["reset"].default == "keep"


@pytest.mark.parametrize("command", ["train-adapter", "finetune-merged"])
def test_bf16_base_trains_fp32_lora_and_exports_what_peft_loads(tmp_path, tiny_model, tiny_adapters, demo_data,
                                                                 command):
    """The GPU path on CPU: bf16 base weights, fp32 LoRA factors (as PEFT), gradient checkpointing; the loss is
    finite and the exported adapter (fp32) loads on the bf16 base in PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / command
    args = [command, "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out, "--max-steps",
            2, "--grad-accum", 1, "--dtype", "bfloat16", "--gradient-checkpointing"]
    if command == "finetune-merged":
        args += ["--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--prune-ratio", 0.3]
    assert cli(*args) == 0
    log = read_jsonl(out / "train_log.jsonl")
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    adapter = out / "adapter" if command == "finetune-merged" else out
    assert {t.dtype for t in load_file(adapter / "adapter_model.safetensors").values()} == {torch.float32}
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, adapter)
    assert model(input_ids=torch.tensor([[1, 5, 9]])).logits.float().isfinite().all()
