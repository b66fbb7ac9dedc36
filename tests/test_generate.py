import json

import pytest
import torch

from conftest import cli
from grasp_lora.data.prompts import get_prompt
from grasp_lora.data.splits import load_split
from grasp_lora.files import read_jsonl, write_jsonl
from grasp_lora.data.tokenize import fit_prompt
from grasp_lora.generate import PROMPT_BUDGET, clean, generate_texts, max_new_tokens_for


def test_paper_budgets_and_cleaning():
    assert max_new_tokens_for("summarization", "ar") == 128
    assert max_new_tokens_for("summarization", "zh") == max_new_tokens_for("summarization", "en") == 96
    assert max_new_tokens_for("qa", "zh") == 64
    assert clean("  Cairo\nis big\r\n ") == "Cairo is big"


def test_batched_kv_cache_equals_one_at_a_time_without_cache(tiny_model, demo_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    records = load_split(demo_data["ar"], "test", "qa")
    prompt = get_prompt("qa", "ar")
    assert len({len(r["context"]) for r in records}) > 1  # left padding really happens
    batched = generate_texts(model, tok, prompt, records, 12, batch_size=8)
    single = generate_texts(model, tok, prompt, records, 12, batch_size=1, use_cache=False)
    assert batched == single
    assert any(batched)


def test_every_stop_token_of_the_generation_config_stops(tiny_model, demo_data):
    """A second stop id in generation_config (as Llama-3-Instruct's 128001 and 128009) ends the prediction there;
    the tokenizer's EOS does not override the list."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    records, prompt = load_split(demo_data["ar"], "test", "qa")[:1], get_prompt("qa", "ar")
    ids = fit_prompt(tok, prompt, records[0], PROMPT_BUDGET - 8)
    free = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # a token first written at step k
    model.generation_config.eos_token_id = [tok.eos_token_id, free[k]]
    cut = generate_texts(model, tok, prompt, records, 8)[0]
    assert cut == clean(tok.decode(free[:k], skip_special_tokens=True))
    assert cut != clean(tok.decode(free, skip_special_tokens=True))


def test_generate_command_base_and_adapter(tmp_path, tiny_model, tiny_adapters, demo_data):
    for name, extra in (("zero", []), ("adapter", ["--adapter", tiny_adapters["ar"]])):
        out = tmp_path / f"{name}.jsonl"
        assert cli("generate", "--model", tiny_model, "--data", demo_data["ar"], "--task", "qa", "--lang", "ar",
                   "--out", out, "--max-new-tokens", 8, *extra) == 0
        rows = read_jsonl(out)
        test = load_split(demo_data["ar"], "test", "qa")
        assert [r["index"] for r in rows] == list(range(len(test)))
        assert all(r["references"] == t["answers"] and r["question"] == t["question"] for r, t in zip(rows, test))
        assert all(isinstance(r["prediction"], str) and "\n" not in r["prediction"] for r in rows)
    zero = [r["prediction"] for r in read_jsonl(tmp_path / "zero.jsonl")]
    adapted = [r["prediction"] for r in read_jsonl(tmp_path / "adapter.jsonl")]
    assert zero != adapted
    # the generated file scores as its rows say: the first k answered with a gold answer, the rest with nonsense
    rows, k = read_jsonl(tmp_path / "adapter.jsonl"), 3
    for i, r in enumerate(rows):
        r["prediction"] = r["references"][-1] if i < k else "zzqx"
    write_jsonl(tmp_path / "graded.jsonl", rows)
    assert cli("evaluate", "--predictions", tmp_path / "graded.jsonl", "--task", "qa", "--lang", "ar",
               "--data", demo_data["ar"], "--out", tmp_path / "m.json", "--bertscore-model", "none") == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == len(adapted) and m["exact_match"] == pytest.approx(100 * k / len(rows))
