"""Shared fixtures: a tiny random Llama (hidden 32, 2 layers) with a byte-level BPE tokenizer trained on the
demo corpus, both made once per session in a temp dir, as PEFT and mergekit do. Nothing downloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grasp_lora.cli import main
from grasp_lora.demo import corpus_file

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (real MLQA / XL-Sum)")


def make_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for task in ("qa", "summarization"):
        for lang in ("en", "ar", "zh"):
            for line in corpus_file(task, lang).read_text(encoding="utf-8").splitlines():
                texts.extend(v for v in json.loads(line).values() if isinstance(v, str))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=4096)
    fast.save_pretrained(out)
    return fast


def make_model(out: Path, arch: str = "llama", vocab_size: int = 600):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with its tokenizer, saved as a Hugging Face folder."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tok = make_tokenizer(out)
    make_model(out, "llama", len(tok))
    return out


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("tiny-qwen2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.save_pretrained(out)
    make_model(out, "qwen2", len(tok))
    return out


def cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    """Small en and ar QA splits from the bundled corpus."""
    root = tmp_path_factory.mktemp("demo-data")
    out = {}
    for lang, sizes in (("en", "24,8,0,8"), ("ar", "16,8,6,8")):
        out[lang] = root / lang
        assert cli("data", "prepare", "--dataset", "mlqa", "--lang", lang, "--input", corpus_file("qa", lang),
                   "--out", out[lang], "--sizes", sizes) == 0
    return out


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console script in a subprocess."""
    exe = Path(sys.executable).with_name("grasp-lora")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "grasp_lora.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def make_adapter(model_dir: Path, out: Path, rank: int = 8, alpha: float = 32, seed: int = 0,
                 targets=("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA adapter with random A and B (PEFT's init_lora_weights=False), saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    model.peft_config["default"].base_model_name_or_path = str(Path(model_dir).resolve())
    model.save_pretrained(out, save_embedding_layers=False)
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"en": make_adapter(tiny_model, root / "en", seed=1), "ar": make_adapter(tiny_model, root / "ar", seed=2),
            "ar_r4": make_adapter(tiny_model, root / "ar_r4", rank=4, alpha=8, seed=3),
            "ar_q": make_adapter(tiny_model, root / "ar_q", targets=("q_proj",), seed=4)}
