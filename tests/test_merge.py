"""The merged layer and its export: the in-memory model and PEFT's reload of the export agree."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_adapter
from grasp_lora import prune
from grasp_lora.adapter_io import check_compatible, export_peft, load_adapter
from grasp_lora.errors import UserError
from grasp_lora.merge import inject, merged_layers

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 61, 300, 12]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def merged(model_dir, adapter_dirs, form):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapters = [load_adapter(p) for p in adapter_dirs]
    check_compatible(adapters, form)
    return model, inject(model, adapters, form, dropout=0.0)


def peft_reload(model_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("form", ["sum", "paper"])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_export_matches_in_memory(tmp_path, request, arch, form, ratio):
    model_dir = request.getfixturevalue("tiny_model" if arch == "llama" else "tiny_qwen")
    ads = [make_adapter(model_dir, tmp_path / n, seed=s) for n, s in (("en", 1), ("ar", 2))]
    model, layers = merged(model_dir, ads, form)
    if ratio:
        prune.commit_masks(model, prune.masks_for_ratio(prune.magnitude_scores(model), ratio))
    export_peft(layers, tmp_path / "out", "base", 0.0)
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["r"] == (16 if form == "sum" else 8) and cfg["lora_alpha"] == cfg["r"]
    ours, theirs = logits(model), logits(peft_reload(model_dir, tmp_path / "out"))
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    base = logits(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    assert not torch.allclose(ours, base, atol=1e-4)


def test_sum_form_is_the_sum_of_scaled_deltas(tiny_model, tiny_adapters):
    model, layers = merged(tiny_model, [tiny_adapters["en"], tiny_adapters["ar_r4"]], "sum")
    path, layer = next(iter(layers.items()))
    en, ar = load_adapter(tiny_adapters["en"]), load_adapter(tiny_adapters["ar_r4"])
    expected = (32 / 8) * en.weights[path]["B"] @ en.weights[path]["A"] + (8 / 4) * ar.weights[path]["B"] @ ar.weights[path]["A"]
    B, A = layer.factors()
    assert torch.allclose(B @ A, expected, atol=1e-6)
    x = torch.randn(3, layer.base.in_features)
    assert torch.allclose(layer(x), layer.base(x) + x @ expected.T, atol=1e-5)


def test_paper_form_is_product_of_sums(tiny_model, tiny_adapters):
    model, layers = merged(tiny_model, [tiny_adapters["en"], tiny_adapters["ar"]], "paper")
    path, layer = next(iter(layers.items()))
    en, ar = load_adapter(tiny_adapters["en"]), load_adapter(tiny_adapters["ar"])
    expected = (en.weights[path]["B"] + ar.weights[path]["B"]) @ (en.weights[path]["A"] + ar.weights[path]["A"])
    x = torch.randn(3, layer.base.in_features)
    assert torch.allclose(layer(x), layer.base(x) + x @ expected.T, atol=1e-5)


def test_single_adapter_merge_gives_that_adapter(tiny_model, tiny_adapters):
    model, _ = merged(tiny_model, [tiny_adapters["ar"]], "sum")
    assert torch.allclose(logits(model), logits(peft_reload(tiny_model, tiny_adapters["ar"])), atol=1e-5)


def test_all_lora_tensors_trainable_and_base_frozen(tmp_path, tiny_model, tiny_adapters, demo_data):
    """As the runs load it (merged_run.setup_merged): the base is frozen, every LoRA tensor trains."""
    from grasp_lora.config import FinetuneMergedConfig
    from grasp_lora.merged_run import setup_merged, trainable

    cfg = FinetuneMergedConfig(model=str(tiny_model), data=str(demo_data["ar"]), lang="ar", device="cpu",
                               adapters=[str(tiny_adapters["en"]), str(tiny_adapters["ar"])], out=str(tmp_path / "o"),
                               prune_ratio=0.0)
    setup = setup_merged(cfg, ("train",))
    lora = {id(p) for layer in setup.layers.values() for p in (*layer.lora_A, *layer.lora_B)}
    assert len(setup.layers) == 4 and len(lora) == 16  # q and v in 2 layers, A and B of 2 adapters
    assert {id(p) for p in trainable(setup)} == lora
    assert {id(p) for p in setup.model.parameters() if p.requires_grad} == lora
    setup.model(input_ids=IDS).logits.sum().backward()
    for p in setup.model.parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) if id(p) in lora else p.grad is None


def test_incompatible_adapters_refused(tmp_path, tiny_model, tiny_qwen, tiny_adapters):
    ads = lambda *names: [load_adapter(tiny_adapters[n]) for n in names]
    with pytest.raises(UserError, match="equal ranks"):
        check_compatible(ads("en", "ar_r4"), "paper")
    check_compatible(ads("en", "ar_r4"), "sum")
    with pytest.raises(UserError, match="same modules"):
        check_compatible(ads("en", "ar_q"), "sum")
    other = load_adapter(make_adapter(tiny_qwen, tmp_path / "qwen", seed=5))
    with pytest.raises(UserError, match="different base models"):
        check_compatible([load_adapter(tiny_adapters["en"]), other], "sum")
    with pytest.raises(UserError, match="is not the base model"):
        check_compatible(ads("en"), "sum", str(tiny_qwen))
    check_compatible(ads("en"), "sum", str(tiny_qwen), allow_other_base=True)  # the override
