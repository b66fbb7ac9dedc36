"""Languages: MLQA's official EM/F1 in all seven of its languages, and any other language by one YAML entry."""

import json
import random
import re
import string
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA, cli, needs_shared

from grasp_lora.data.prompts import get_prompt
from grasp_lora.languages import BUILTIN, get_language
from grasp_lora.metrics.bleu import bleu_tokenizer
from grasp_lora.metrics.qa import exact_match, f1, qa_scores
from grasp_lora.metrics.rouge import rouge_l
from grasp_lora.metrics.text import normalize

MLQA_LANGS = ("ar", "de", "en", "es", "hi", "vi", "zh")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "languages"

# ---- a reference written from the rules of MLQA's official evaluation (mlqa_evaluation_v1.py), independent of
# the package: lowercase, drop Unicode punctuation, drop the language's articles, tokenize (whitespace; zh: each
# character of U+4E00..U+9FA5 and each punctuation mark alone), join with single spaces.
REF_PUNCT = {chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")}
REF_PUNCT |= set(string.punctuation)
REF_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": "\\sال^|ال",
}


def ref_tokens(text, lang):
    if lang != "zh":
        return text.split()
    out, buf = [], ""
    for ch in text:
        if re.search(r"[\u4e00-\u9fa5]", ch) or ch in REF_PUNCT:
            out += buf.split()
            buf = ""
            out.append(ch)
        else:
            buf += ch
    return out + buf.split()


def ref_normalize(s, lang):
    s = "".join(ch for ch in s.lower() if ch not in REF_PUNCT)
    if lang in REF_ARTICLES:
        s = re.sub(REF_ARTICLES[lang], " ", s)
    return " ".join(t for t in ref_tokens(s, lang) if t.strip() != "")


def ref_f1(pred, gold, lang):
    p, g = ref_normalize(pred, lang).split(), ref_normalize(gold, lang).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def ref_scores(preds, golds, lang):
    em = sum(max(float(ref_normalize(p, lang) == ref_normalize(g, lang)) for g in gs) for p, gs in zip(preds, golds))
    f = sum(max(ref_f1(p, g, lang) for g in gs) for p, gs in zip(preds, golds))
    return {"exact_match": 100 * em / len(preds), "f1": 100 * f / len(preds)}


ARTICLE_WORDS = {"en": ["The", "a"], "es": ["El", "las"], "de": ["Die", "einem"], "vi": ["Những", "của"],
                 "ar": ["ال"], "hi": ["एक"], "zh": ["这个"]}


def perturb(answer: str, lang: str, rng: random.Random) -> str:
    """What a generator writes instead of the gold: other case, punctuation, an article, a cut, nothing."""
    kind = rng.randrange(6)
    if kind == 0:
        return answer.upper()
    if kind == 1:
        return f"«{answer}»." if rng.random() < 0.5 else f"{answer}!?"
    if kind == 2:
        return f"{rng.choice(ARTICLE_WORDS[lang])} {answer}"
    if kind == 3:
        words = answer.split()
        return " ".join(words[:-1]) if len(words) > 1 else answer[: max(len(answer) // 2, 1)]
    if kind == 4:
        return ""
    return f"{answer} {answer.split()[0]}"


def mlqa_answers(lang: str) -> list[list[str]]:
    doc = json.loads((SHARED_DATA / "mlqa-v1-dev" / f"dev-context-{lang}-question-{lang}.json").read_text("utf-8"))
    return [[a["text"] for a in qa["answers"]] for art in doc["data"] for p in art["paragraphs"] for qa in p["qas"]]


@needs_shared
@pytest.mark.parametrize("lang", MLQA_LANGS)
def test_normalisation_equals_the_official_rules_on_every_gold_answer(lang):
    golds = mlqa_answers(lang)
    answers = sorted({a for gs in golds for a in gs})
    assert len(golds) >= 500  # MLQA v1 dev: 500 (es) to 1148 (en) questions
    wrong = [a for a in answers if normalize(a, lang) != ref_normalize(a, lang)]
    assert not wrong, wrong[:5]
    rng = random.Random(lang)
    sample = rng.sample(golds, 400)
    preds = [perturb(rng.choice(gs), lang, rng) for gs in sample]
    ours, ref = qa_scores(preds, sample, lang), ref_scores(preds, sample, lang)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert 10 < ours["exact_match"] < 95  # the perturbations are neither all forgiven nor all punished
    for p, gs in zip(preds[:200], sample):
        assert f1(p, gs[0], lang) == pytest.approx(ref_f1(p, gs[0], lang))


def test_articles_of_each_mlqa_language():
    assert exact_match("Los Angeles", "Angeles", "es") == 1.0  # MLQA drops "los" even inside a name
    assert exact_match("Die Katze", "katze", "de") == 1.0 and exact_match("Die Katze", "katze", "en") == 0.0
    assert exact_match("những cái bàn", "bàn", "vi") == 1.0
    assert normalize("एक किताब।", "hi") == "एक किताब"  # no articles in Hindi; the danda is punctuation
    assert normalize("北京大学,很好", "zh") == "北 京 大 学 很 好"
    assert set(BUILTIN) == set(MLQA_LANGS)
    for lang in MLQA_LANGS:
        for task in ("qa", "summarization"):
            p = get_prompt(task, lang)
            assert p.template.rstrip().endswith(":") and p.target_prefix == ("" if lang == "zh" else " ")


def test_per_language_bleu_and_rouge_tokens(tmp_path):
    assert [bleu_tokenizer(code) for code in ("en", "de", "ar", "hi", "zh")] == ["13a", "13a", "intl", "intl", "zh"]
    f = tmp_path / "langs.yaml"
    f.write_text((EXAMPLE / "languages.yaml").read_text("utf-8"), encoding="utf-8")
    th = get_language("th", str(f))
    assert bleu_tokenizer(th) == "char" and bleu_tokenizer(get_language("sw", str(f))) == "intl"
    # Thai written without spaces: per-character tokens give partial credit where whitespace tokens give none
    assert rouge_l(["กรุงเทพมหานคร"], ["กรุงเทพ"], th)["rouge_l"] > 60
    assert f1("กรุงเทพมหานคร", "กรุงเทพ", th) > 0.6 and f1("กรุงเทพมหานคร", "กรุงเทพ", "en") == 0
    de = rouge_l(["die Katzen laufen"], ["die Katze läuft"], "de", "xlsum")
    assert de["rouge_stemming"].startswith("snowball german")


def test_yaml_entry_gives_a_language_and_changes_a_builtin_one(tmp_path):
    f = tmp_path / "langs.yaml"
    f.write_text('xx:\n  qa: "Q {context} {question}\\nA:"\n  articles: [le, la]\n'
                 'es:\n  articles: [el]\n'
                 'qa:\n  fr: "Réponds.\\nContexte:{context}\\nQuestion:{question}\\nRéponse:"\n', encoding="utf-8")
    assert exact_match("le chat", "chat", get_language("xx", str(f))) == 1.0
    es = get_language("es", str(f))
    assert exact_match("la casa", "casa", es) == 0.0 and exact_match("el perro", "perro", es) == 1.0
    assert get_prompt("qa", "es", str(f)).template == get_prompt("qa", "es").template  # templates kept
    assert get_prompt("qa", "fr", str(f)).render({"context": "C", "question": "Q"}).endswith("Réponse:")
    for text, needle in (("xx:\n  tokenize: words\n", "xx.tokenize"), ("xx:\n  sumarization: x\n", "sumarization"),
                         ("xx:\n  articles: the\n", "xx.articles"), ("xx:\n  bleu_tokenize: flores200\n", "bleu")):
        f.write_text(text, encoding="utf-8")
        with pytest.raises(Exception, match=needle):
            get_language("xx", str(f))


def test_unknown_language_names_the_yaml_to_write(tmp_path, capsys):
    rc = cli("data", "prepare", "--lang", "sw", "--input", EXAMPLE / "sw-qa.jsonl", "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--lang sw" in err[0] and "--prompts" in err[0] and "sw: {qa:" in err[0]
    assert not (tmp_path / "out").exists()
    rc = cli("data", "prepare", "--lang", "sw", "--input", EXAMPLE / "sw-qa.jsonl", "--out", tmp_path / "out",
             "--prompts", EXAMPLE / "languages.yaml", "--sizes", "6,2,2,2")
    assert rc == 0
    qa_only = tmp_path / "qa_only.yaml"
    qa_only.write_text('sw:\n  qa: "Maandishi:{context}\\nSwali:{question}\\nJibu:"\n', encoding="utf-8")
    capsys.readouterr()
    rc = cli("train-adapter", "--model", "m", "--data", tmp_path / "out", "--task", "summarization", "--lang", "sw",
             "--prompts", qa_only, "--out", tmp_path / "a")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no summarization prompt" in err[0] and "qa_only.yaml" in err[0]


def test_xlsum_files_found_by_the_languages_xlsum_name(tmp_path):
    from grasp_lora.data.readers import read_local

    row = {"id": "1", "url": "u", "title": "t", "summary": "Muhtasari.", "text": "Habari ndefu."}
    for split in ("test", "train", "val"):
        (tmp_path / f"swahili_{split}.jsonl").write_text(json.dumps({**row, "id": split}) + "\n", encoding="utf-8")
    (tmp_path / "swahili_notes.jsonl").write_text("not a split\n", encoding="utf-8")
    records, files = read_local(str(tmp_path), "xlsum", get_language("sw", str(EXAMPLE / "languages.yaml")))
    assert [r["id"] for r in records] == ["train", "val", "test"] and len(files) == 3


def test_a_language_outside_mlqa_from_data_to_evaluation(tmp_path, tiny_model):
    """The README's worked example: Swahili, by configuration alone, through the real commands."""
    langs, data = EXAMPLE / "languages.yaml", tmp_path / "sw"
    assert cli("data", "prepare", "--dataset", "mlqa", "--lang", "sw", "--input", EXAMPLE / "sw-qa.jsonl",
               "--out", data, "--sizes", "6,2,2,2", "--prompts", langs) == 0
    assert cli("train-adapter", "--model", tiny_model, "--data", data, "--lang", "sw", "--prompts", langs,
               "--out", tmp_path / "adapter", "--max-steps", 2, "--grad-accum", 2) == 0
    assert cli("generate", "--model", tiny_model, "--adapter", tmp_path / "adapter", "--data", data, "--lang", "sw",
               "--prompts", langs, "--out", tmp_path / "pred.jsonl", "--max-new-tokens", 4) == 0
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text("utf-8").splitlines()]
    rows[0]["prediction"] = rows[0]["references"][0] + "."  # one right answer: EM counts it after normalisation
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert cli("evaluate", "--predictions", tmp_path / "pred.jsonl", "--lang", "sw", "--prompts", langs,
               "--data", data, "--out", tmp_path / "metrics.json", "--bertscore-model", "none") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["lang"] == "sw" and metrics["n"] == 2 and metrics["exact_match"] >= 50
    assert "whitespace tokens" in metrics["qa_normalization"]
