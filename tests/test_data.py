import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, cli, needs_shared
from grasp_lora.data.prompts import get_prompt
from grasp_lora.data.readers import read_file
from grasp_lora.data.splits import SPLITS, cut, scaled
from grasp_lora.data.tokenize import encode_example, fit_prompt
from grasp_lora.demo import corpus_file


def read_splits(folder: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(l) for l in (folder / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()] for s in SPLITS}


@needs_shared
@pytest.mark.parametrize("lang", ["ar", "zh"])
def test_mlqa_paper_splits(tmp_path, lang):
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert cli("data", "prepare", "--dataset", "mlqa", "--lang", lang,
                   "--input", SHARED_DATA / "mlqa-v1-dev", "--out", out) == 0
        outs.append(out)
    splits = read_splits(outs[0])
    assert {s: len(v) for s, v in splits.items()} == {"train": 50, "val": 50, "micro_dev": 16, "test": 100}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(set(ids)) == 216
    for rows in splits.values():
        for r in rows:
            assert all(a in r["context"] for a in r["answers"]), r["id"]
    for s in SPLITS:
        assert (outs[0] / f"{s}.jsonl").read_bytes() == (outs[1] / f"{s}.jsonl").read_bytes()
    summary = json.loads((outs[0] / "splits.json").read_text())
    assert summary["available"] == {"ar": 517, "zh": 504}[lang]
    assert (outs[0] / "config.yaml").is_file()


@needs_shared
def test_mlqa_english_needs_scale_down(tmp_path, capsys):
    args = ["data", "prepare", "--dataset", "mlqa", "--lang", "en", "--input", SHARED_DATA / "mlqa-v1-dev"]
    assert cli(*args, "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "1148 records" in err and "--scale-down" in err
    assert not (tmp_path / "a").exists()
    assert cli(*args, "--out", tmp_path / "b", "--scale-down") == 0
    sizes = json.loads((tmp_path / "b" / "splits.json").read_text())["sizes"]
    assert sum(sizes.values()) <= 1148 and sizes["micro_dev"] == 0 and sizes["train"] > 900


@needs_shared
@pytest.mark.parametrize("lang,name", [("ar", "arabic"), ("zh", "chinese_simplified"), ("en", "english")])
def test_xlsum_sample(tmp_path, lang, name):
    records = read_file(SHARED_DATA / "xlsum-v2-sample" / f"{name}_train.jsonl", "summarization")
    assert len(records) == 5 and all(r["article"] and r["summary"] for r in records)
    assert cli("data", "prepare", "--dataset", "xlsum", "--lang", lang, "--input", SHARED_DATA / "xlsum-v2-sample",
               "--out", tmp_path, "--sizes", "5,4,2,4") == 0
    splits = read_splits(tmp_path)
    assert [len(splits[s]) for s in SPLITS] == [5, 4, 2, 4]
    assert len({r["id"] for rows in splits.values() for r in rows}) == 15


def test_seed_csv_layout(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text('context,question,answers_text\n"Paris is in France, near the Seine.",Where is Paris?,France|in France\n'
                   'Tom has a dog.,What does Tom have?,a dog\n', encoding="utf-8")
    records = read_file(csv, "qa")
    assert records[0]["answers"] == ["France", "in France"]
    assert records[0]["context"] == "Paris is in France, near the Seine."
    csv2 = tmp_path / "sum.csv"
    csv2.write_text("article,summary\nA long article.,Short.\n", encoding="utf-8")
    assert read_file(csv2, "summarization")[0]["summary"] == "Short."


def test_demo_corpus_sizes_and_answers():
    for lang, least in (("en", 300), ("ar", 216), ("zh", 216)):
        records = read_file(corpus_file("qa", lang), "qa")
        assert len(records) >= least
        assert len({(r["context"], r["question"]) for r in records}) == len(records)
        assert all(r["answers"][0] in r["context"] for r in records)
        assert read_file(corpus_file("summarization", lang), "summarization")


def test_cut_is_disjoint_and_seeded():
    records = [{"id": str(i)} for i in range(100)]
    a, b, c = cut(records, (10, 20, 5, 30), 42), cut(records, (10, 20, 5, 30), 42), cut(records, (10, 20, 5, 30), 7)
    ids = [r["id"] for s in SPLITS for r in a[s]]
    assert len(ids) == len(set(ids)) == 65
    assert a == b and a != c
    assert scaled((3030, 315, 0, 315), 1148) == (950, 98, 0, 98)
    assert sum(scaled((50, 50, 16, 100), 20)) <= 20


class CharTok:
    """One token per character: makes the truncation arithmetic visible."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False, verbose=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("lang,keyword", [("en", "\nAnswer:"), ("ar", "\nالإجابة:"), ("zh", "\n答案:")])
def test_truncation_cuts_context_keeps_target_and_keyword(lang, keyword):
    tok, prompt = CharTok(), get_prompt("qa", lang)
    record = {"id": "x", "context": "c" * 500, "question": "q?", "answers": ["the answer"]}
    ex = encode_example(tok, prompt, record, max_length=120)
    assert len(ex["input_ids"]) == 120
    target = [i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tok.decode(target[:-1]) == prompt.target_prefix + "the answer" and target[-1] == tok.eos_token_id
    prompt_text = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l == -100][1:])
    assert prompt_text.endswith(keyword) and "c" * 10 in prompt_text
    assert ex["input_ids"][0] == tok.bos_token_id
    short = encode_example(tok, prompt, {**record, "context": "short"}, max_length=120)
    assert "short" in tok.decode(short["input_ids"])
    assert len(fit_prompt(tok, prompt, record, 80)) == 80


def test_custom_prompt_yaml_adds_a_language(tmp_path):
    f = tmp_path / "prompts.yaml"
    f.write_text("qa:\n  fr: \"Réponds.\\nContexte:{context}\\nQuestion:{question}\\nRéponse:\"\n", encoding="utf-8")
    p = get_prompt("qa", "fr", str(f))
    assert p.render({"context": "C", "question": "Q"}).endswith("Réponse:") and p.target_prefix == " "
    assert get_prompt("qa", "zh").target_prefix == ""


def test_csv_fields_keep_their_newlines(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text('article,summary\n"First paragraph.\nSecond paragraph.","A summary"\n"One line.","Another"\n')
    rows = read_file(f, "summarization")
    assert [r["article"] for r in rows] == ["First paragraph.\nSecond paragraph.", "One line."]


def test_long_texts_are_cut_without_the_tokenizers_length_warning(tiny_model, caplog):
    """We cut long contexts ourselves: the tokenizer's 'sequence length is longer than the specified maximum'
    warning would be noise on every command."""
    import logging

    from grasp_lora.data.prompts import get_prompt
    from grasp_lora.data.tokenize import encode_example
    from grasp_lora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    tok.model_max_length = 32
    record = {"id": "r", "context": "word " * 400, "question": "q?", "answers": ["a"]}
    hf_logger = logging.getLogger("transformers")  # it does not propagate to the root logger caplog watches
    hf_logger.addHandler(caplog.handler)
    try:
        ex = encode_example(tok, get_prompt("qa", "en"), record, 64)
    finally:
        hf_logger.removeHandler(caplog.handler)
    assert len(ex["input_ids"]) <= 64
    assert "longer than the specified maximum" not in caplog.text
