"""Fuzzing the data readers (hypothesis, bounded): any bytes give records of the right schema or our
one-line UserError, never another exception."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grasp_lora.data.readers import read_file
from grasp_lora.data.records import FIELDS
from grasp_lora.errors import UserError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)
squad_like = st.fixed_dictionaries({"data": st.lists(st.fixed_dictionaries({"paragraphs": st.lists(
    st.fixed_dictionaries({"context": json_values | st.text(max_size=30),
                           "qas": st.lists(st.dictionaries(st.sampled_from(["id", "question", "answers"]),
                                                           json_values, max_size=3), max_size=3)}), max_size=3)}),
    max_size=3)})


def check(path, task):
    try:
        records = read_file(path, task)
    except UserError as e:
        assert str(path.name) in str(e) and "\n" not in str(e)
        return
    assert records
    for r in records:
        assert set(FIELDS[task]) <= set(r) and isinstance(r["id"], str)
        if task == "qa":
            assert r["answers"] and all(isinstance(a, str) and a.strip() for a in r["answers"])
        else:
            assert isinstance(r["article"], str) and isinstance(r["summary"], str)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".jsonl", ".csv"]),
       task=st.sampled_from(["qa", "summarization"]))
def test_random_bytes(tmp_path, data, suffix, task):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    check(path, task)


@FUZZ
@given(doc=squad_like | json_values)
def test_squad_shaped_json(tmp_path, doc):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    check(path, "qa")


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["id", "text", "article", "summary", "context", "question",
                                                      "answers", "title"]), json_values, max_size=6), max_size=5),
       task=st.sampled_from(["qa", "summarization"]))
def test_jsonl_rows(tmp_path, rows, task):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    check(path, task)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list('ab,|"\n x')), max_size=120), task=st.sampled_from(["qa", "summarization"]),
       header=st.sampled_from(["context,question,answers_text\n", "article,summary\n", ""]))
def test_csv_text(tmp_path, text, task, header):
    path = tmp_path / "rows.csv"
    path.write_text(header + text, encoding="utf-8")
    check(path, task)
