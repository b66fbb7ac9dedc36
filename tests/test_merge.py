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


class _DenseWatch(torch.utils._python_dispatch.TorchDispatchMode):
    """Every tensor an op makes while it is on: the shapes of those with d_out x d_in entries or more that are not
    views of the allowed tensors (the frozen base weight, the embedding)."""

    def __init__(self, limit: int, allowed: list[torch.Tensor]):
        super().__init__()
        self.limit, self.seen = limit, []
        self.allowed = {t.untyped_storage().data_ptr() for t in allowed}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.numel() >= self.limit and \
                    t.untyped_storage().data_ptr() not in self.allowed:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("criterion", ["magnitude", "input_weighted", "sensitivity"])
def test_no_dense_state_at_llama3_8b_width(criterion):
    """At Llama-3-8B's width (4096 x 4096), no tensor of d_out x d_in entries exists but the frozen base weight:
    not in the forward, the backward, the importance scores, the masks and stashes, an optimizer step, a commit,
    nor in any state a checkpoint saves, the gradient moments of `--probe taylor` and their estimate included (the
    `sum` form; the `paper` form's (sum B)(sum A) is its documented cost)."""
    from grasp_lora import prune
    from grasp_lora.merge import MergedLoraLinear
    from grasp_lora.taylor import GradientMoments

    d, rank, vocab = 4096, 8, 16
    torch.manual_seed(0)

    class OneLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, d)
            base = torch.nn.Linear(d, d, bias=False).requires_grad_(False)
            self.proj = MergedLoraLinear(base, [torch.randn(rank, d) * 0.01] * 2, [torch.randn(d, rank) * 0.01] * 2,
                                         [2.0, 2.0], "sum", [0.0, 0.0])

        def forward(self, input_ids, attention_mask=None):
            return self.proj(self.embed(input_ids))

    model = OneLayer()
    model.embed.requires_grad_(False)
    batch = {"input_ids": torch.randint(0, vocab, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    crit = prune.CRITERIA[criterion](model, lambda: [batch])
    moments = GradientMoments(model, per_step=2)
    watch = _DenseWatch(d * d, [model.proj.base.weight, model.embed.weight])
    with watch:
        for ratio in (0.3, 0.6):
            model(**batch).pow(2).mean().backward()
            moments.add_step()
            crit.after_backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            scores = crit.scores()
            moments.estimate(prune.masks_for_ratio(scores, 0.5))
            prune.commit_masks(model, prune.masks_for_ratio(scores, ratio), "keep", opt)
    assert watch.seen == [], watch.seen  # nothing d_out x d_in was ever made
    state = [scores, prune.current_masks(model), prune.stashes(model), crit.state_dict(), opt.state_dict()["state"],
             moments.state_dict(),
             dict(model.named_buffers()), {n: p for n, p in model.named_parameters() if p is not model.proj.base.weight}]

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
    dense = [tuple(t.shape) for t in tensors(state) if t.numel() >= d * d and t is not model.embed.weight]
    assert dense == [] and prune.kept_fraction(prune.current_masks(model)) == pytest.approx(0.4, abs=0.01)
