"""Every bad input: one line naming the file or option and the fix, exit code 2, no traceback, no output folder."""

import pytest

from conftest import cli, run_cli
from grasp_lora.demo import corpus_file


def prepare(tmp_path, input_path, *extra, dataset="mlqa", lang="ar"):
    return cli("data", "prepare", "--dataset", dataset, "--lang", lang, "--input", input_path,
               "--out", tmp_path / "out", *extra)


def check(rc, capsys, tmp_path, *needles):
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grasp-lora: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "out").exists()


CASES = {
    "malformed_json": ("bad.json", '{"data": [ {"paragraphs": ', "mlqa", ["bad.json", "not valid JSON", "line 1"]),
    "squad_not_squad": ("x.json", '{"version": "1"}', "mlqa", ["x.json", "'data' list"]),
    "missing_question": ("m.json", '{"data":[{"paragraphs":[{"context":"c","qas":[{"id":"1","answers":[{"text":"c"}]}]}]}]}',
                         "mlqa", ["m.json", "no 'question' field", "qas[0]"]),
    "malformed_jsonl": ("bad.jsonl", '{"text": "a", "summary": "b"}\n{"text": "a", \n', "xlsum", ["bad.jsonl", "line 2", "not valid JSON"]),
    "jsonl_missing_summary": ("s.jsonl", '{"id": "1", "text": "an article"}\n', "xlsum", ["s.jsonl", "line 1", "'summary'"]),
    "empty_file": ("empty.jsonl", "", "xlsum", ["empty.jsonl", "empty file"]),
    "csv_missing_column": ("q.csv", "context,question\nc,q\n", "mlqa", ["q.csv", "answers_text"]),
    "csv_ragged_row": ("r.csv", 'context,question,answers_text\nc,q,a,extra\n', "mlqa", ["r.csv", "line 2", "4 fields"]),
    "not_utf8": ("latin.jsonl", b"\xff\xfe\x00bad", "xlsum", ["latin.jsonl", "UTF-8"]),
    "unknown_suffix": ("data.txt", "hello", "mlqa", ["data.txt", "unknown file type"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_files(tmp_path, capsys, case):
    name, content, dataset, needles = CASES[case]
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    check(prepare(tmp_path, path, "--scale-down", dataset=dataset), capsys, tmp_path, *needles)


def test_unknown_language(tmp_path, capsys):
    check(prepare(tmp_path, corpus_file("qa", "ar"), lang="xx"), capsys, tmp_path, "--lang xx", "unknown language")


def test_unknown_task_and_dataset(tmp_path):
    r = run_cli("train-adapter", "--task", "translation", "--out", tmp_path / "out")
    assert r.returncode == 2 and "invalid choice: 'translation'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("data", "prepare", "--dataset", "squad2", "--out", tmp_path / "out")
    assert r.returncode == 2 and "--dataset" in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("sizes", ["50,50,16", "a,b,c,d", "1,2,3,-4", "1.5,2,3,4"])
def test_bad_sizes(tmp_path, capsys, sizes):
    check(prepare(tmp_path, corpus_file("qa", "ar"), "--sizes", sizes), capsys, tmp_path, f"--sizes {sizes!r}", "TRAIN,VAL,MICRO,TEST")


def test_source_too_small(tmp_path, capsys):
    check(prepare(tmp_path, corpus_file("qa", "ar"), "--sizes", "200,50,16,100"), capsys, tmp_path,
          "240 records", "366", "--scale-down")


def test_missing_input(tmp_path, capsys):
    check(prepare(tmp_path, tmp_path / "nope.json"), capsys, tmp_path, "nope.json", "no such file")


def test_folder_without_language_files(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    check(prepare(tmp_path, tmp_path / "in"), capsys, tmp_path, "no mlqa file for language 'ar'")


def test_model_path_does_not_exist(tmp_path, capsys, demo_data):
    rc = cli("train-adapter", "--model", tmp_path / "no-such-model", "--data", demo_data["ar"], "--lang", "ar",
             "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "no-such-model", "path does not exist")


def test_model_folder_without_config(tmp_path, capsys, demo_data):
    (tmp_path / "m").mkdir()
    rc = cli("train-adapter", "--model", tmp_path / "m", "--data", demo_data["ar"], "--lang", "ar", "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "no config.json")


def test_data_folder_not_prepared(tmp_path, capsys, tiny_model):
    (tmp_path / "d").mkdir()
    rc = cli("train-adapter", "--model", tiny_model, "--data", tmp_path / "d", "--lang", "ar", "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "train.jsonl", "missing", "data prepare")


def test_no_prompt_for_language(tmp_path, capsys, tiny_model, demo_data):
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "fr", "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "--lang fr", "--prompts")


def test_unknown_target_module(tmp_path, capsys, tiny_model, demo_data):
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", tmp_path / "out",
             "--target-modules", "nonexistent_proj")
    check(rc, capsys, tmp_path, "--target-modules nonexistent_proj")


def test_yaml_unknown_key_and_bad_value(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lang: ar\nlearning_rate: 1\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "c.yaml", "unknown key 'learning_rate'")
    cfg.write_text("lang: ar\nmax_steps: many\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "max_steps", "not a valid int")
    cfg.write_text("lang: [ar\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "c.yaml", "not valid YAML")


def test_bad_flag_value(tmp_path, capsys):
    check(cli("train-adapter", "--max-steps", "3.5", "--out", tmp_path / "out"), capsys, tmp_path, "--max-steps", "not a valid int")
