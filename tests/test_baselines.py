import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import cli
from grasp_lora.baselines import compose
from grasp_lora.adapter_io import load_adapter


def peft_logits(model_dir, adapter):
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 7, 42, 99, 5]])).logits


def test_ties_exports_a_loadable_adapter(tmp_path, tiny_model, tiny_adapters):
    out = tmp_path / "ties"
    assert cli("ties", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
               "--density", "0.3", "--out", out) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 8
    from safetensors.torch import load_file

    A = [v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_A" in k]
    assert len(A) == 4
    # TIES keeps about the density of each task vector: many entries are trimmed to zero
    zero = sum(int((a == 0).sum()) for a in A) / sum(a.numel() for a in A)
    assert 0.3 < zero < 0.9
    logits = peft_logits(tiny_model, out)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, peft_logits(tiny_model, tiny_adapters["en"]))


@pytest.mark.filterwarnings("error:COBYLA")  # NGOpt's inner COBYLA warning is silenced, not shown to users
def test_lorahub_weights_in_bounds_and_export_is_the_composition(tmp_path, tiny_model, tiny_adapters, demo_data):
    out = tmp_path / "hub"
    assert cli("lorahub", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
               "--data", demo_data["ar"], "--task", "qa", "--lang", "ar", "--budget", 12, "--out", out) == 0
    result = json.loads((out / "lorahub.json").read_text())
    w = result["weights"]
    assert len(w) == 2 and all(-1.5 <= x <= 1.5 for x in w)
    assert len(result["evaluations"]) == 12
    assert result["objective"] <= result["evaluations"][0]["objective"] + 1e-9  # no worse than the start (w = 0)
    adapters = [load_adapter(tiny_adapters["en"]), load_adapter(tiny_adapters["ar"])]
    exported = load_adapter(out)
    for path, (B, A) in compose(adapters, w).items():
        assert torch.allclose(exported.weights[path]["A"], A, atol=1e-6)
        assert torch.allclose(exported.weights[path]["B"], B, atol=1e-6)
    assert exported.scale == adapters[0].scale


def test_lorahub_says_when_every_weight_is_zero(tmp_path, tiny_model, tiny_adapters, demo_data, caplog):
    """An l1 term far above any loss gain keeps the start (w = 0): the exported adapter is a no-op, said once."""
    out = tmp_path / "hub"
    with caplog.at_level("WARNING"):
        assert cli("lorahub", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
                   "--data", demo_data["ar"], "--lang", "ar", "--budget", 6, "--l1", 1e6, "--out", out) == 0
    weights = json.loads((out / "lorahub.json").read_text())["weights"]
    assert weights == [0.0, 0.0] and "every weight is 0" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli("lorahub", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
                   "--data", demo_data["ar"], "--lang", "ar", "--budget", 6, "--out", tmp_path / "hub2") == 0
    assert "every weight is 0" not in caplog.text


def test_lorahub_refuses_unequal_ranks(tmp_path, tiny_model, tiny_adapters, demo_data, capsys):
    assert cli("lorahub", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar_r4"],
               "--data", demo_data["ar"], "--lang", "ar", "--out", tmp_path / "x") == 2
    assert "equal ranks" in capsys.readouterr().err
