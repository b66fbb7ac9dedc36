"""Every bad input: one line naming the file or option and the fix, exit code 2, no traceback, no output folder."""

import shutil

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
    data = tmp_path / "data"  # prepared by other means: no splits.json saying the language
    shutil.copytree(demo_data["ar"], data, ignore=shutil.ignore_patterns("splits.json"))
    rc = cli("train-adapter", "--model", tiny_model, "--data", data, "--lang", "fr", "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "--lang fr", "--prompts")


def test_unknown_target_module(tmp_path, capsys, tiny_model, demo_data):
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", tmp_path / "out",
             "--target-modules", "nonexistent_proj")
    check(rc, capsys, tmp_path, "--target-modules nonexistent_proj")


def test_yaml_unknown_key_and_bad_value(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lang: ar\nlearning_rat: 1\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "c.yaml", "unknown key 'learning_rat'",
          "did you mean 'learning_rate'?")
    cfg.write_text("lang: ar\nmax_steps: many\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "max_steps", "not a valid int")
    cfg.write_text("lang: [ar\n")
    check(cli("train-adapter", "--config", cfg, "--out", tmp_path / "out"), capsys, tmp_path, "c.yaml", "not valid YAML")


def test_bad_flag_value(tmp_path, capsys):
    check(cli("train-adapter", "--max-steps", "3.5", "--out", tmp_path / "out"), capsys, tmp_path, "--max-steps", "not a valid int")


SQUAD = '{"data":[{"paragraphs":[{"context":"The cat sat.","qas":[{"id":"%s","question":"q%s","answers":[{"text":"%s","answer_start":%s}]}]}]}]}'

CASES.update({
    "squad_answer_not_in_context": ("a.json", SQUAD % ("1", "1", "dog", 4), "mlqa",
                                    ["a.json", "1 answers do not occur in their context", "qas[0].answers[0]"]),
    "squad_deep_nesting": ("deep.json", "[" * 200_000 + "]" * 200_000, "mlqa", ["deep.json", "cannot be read as JSON"]),
    "squad_huge_integer": ("big.json", '{"data": ' + "9" * 5000 + "}", "mlqa", ["big.json", "cannot be read as JSON"]),
})


def test_squad_answer_start_out_of_range_is_repaired_from_the_text(tmp_path, caplog):
    from grasp_lora.data.readers import read_squad_json

    f = tmp_path / "s.json"
    f.write_text(SQUAD % ("1", "1", "cat", 99))
    assert [r["answers"] for r in read_squad_json(f)] == [["cat"]]
    assert "1 answer_start values did not point at their answer" in caplog.text


# every option is checked where the config is built: (command line, what the one-line error names)
SEARCH = ["search", "--data", "d", "--lang", "ar", "--adapters", "a", "b", "--out"]
GENERATE = ["generate", "--data", "d", "--lang", "ar", "--out"]
OPTION_CASES = {
    "lr_nan": (SEARCH, ["--lr", "nan"], "--lr nan: must be a number > 0"),
    "lr_negative": (SEARCH, ["--lr", "-1"], "--lr -1.0: must be a number > 0"),
    "weight_decay_negative": (SEARCH, ["--weight-decay", "-1"], "--weight-decay -1.0: must be a number >= 0"),
    "batch_size_zero": (SEARCH, ["--batch-size", "0"], "--batch-size 0: must be a number >= 1"),
    "grad_accum_zero": (SEARCH, ["--grad-accum", "0"], "--grad-accum 0: must be a number >= 1"),
    "eval_batch_size_zero": (SEARCH, ["--eval-batch-size", "0"], "--eval-batch-size 0: must be a number >= 1"),
    "epochs_zero": (SEARCH, ["--epochs", "0"], "--epochs 0: must be a number >= 1"),
    "max_steps_negative": (SEARCH, ["--max-steps", "-1"], "--max-steps -1: must be a number >= 0"),
    "sigma_init_nan": (SEARCH, ["--sigma-init", "nan"], "--sigma-init nan: must be a number > 0"),
    "policy_lr_nan": (SEARCH, ["--policy-lr", "nan"], "--policy-lr nan: must be a number >= 0"),
    "kl_coef_inf": (SEARCH, ["--kl-coef", "inf"], "--kl-coef inf: must be a number >= 0"),
    "max_ratio_step_negative": (SEARCH, ["--max-ratio-step", "-1"], "--max-ratio-step -1.0: must be a number > 0"),
    "group_size_zero": (SEARCH, ["--group-size", "0"], "--group-size 0: must be a number >= 1"),
    "round_every_zero": (SEARCH, ["--round-every", "0"], "--round-every 0: must be a number >= 1"),
    "p_range": (SEARCH, ["--p-min", "0.5"], "--p-min 0.5 --p-init 0.4 --p-max 0.8: need 0 <= p_min"),
    "p_max_one": (SEARCH, ["--p-max", "1"], "need 0 <= p_min <= p_init <= p_max < 1"),
    "dropout_one": (SEARCH, ["--dropout", "1"], "--dropout 1.0: must be in [0, 1)"),
    "generate_batch_negative": (GENERATE, ["--batch-size", "-3"], "--batch-size -3: must be a number >= 1"),
    "generate_limit_negative": (GENERATE, ["--limit", "-1"], "--limit -1: must be a number >= 0"),
    "prune_ratio_one": (["finetune-merged", "--data", "d", "--lang", "ar", "--adapters", "a", "--prune-ratio", "1",
                         "--out"], [], "--prune-ratio 1.0: must be in [0, 1)"),
    "ties_one_adapter": (["ties", "--adapters", "a", "--out"], [], "--adapters needs two or more"),
    "ties_weights_count": (["ties", "--adapters", "a", "b", "--weights", "1", "--out"], [], "one weight per adapter"),
    "ties_density_zero": (["ties", "--adapters", "a", "b", "--density", "0", "--out"], [], "--density 0.0: must be in (0, 1]"),
    "missing_required": (["search", "--lang", "ar", "--adapters", "a", "--out"], [], "--data is required"),
    "empty_required": (["train-adapter", "--data", "", "--lang", "ar", "--out"], [], "--data is required"),
    "lorahub_bound": (["lorahub", "--data", "d", "--lang", "ar", "--adapters", "a", "b", "--bound", "-1", "--out"], [],
                      "--bound -1.0: must be a number > 0"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option_values(tmp_path, capsys, case):
    head, extra, needle = OPTION_CASES[case]
    check(cli(*head, tmp_path / "out", *extra), capsys, tmp_path, needle)


EXPERIMENT = ["run", "--source-input", "s.json", "--target-input", "t.json", "--out"]
YAML_CASES = {
    "bool_for_int": ("seed: true\n", "seed: True is not a valid int"),
    "mapping_for_path": ("model: {dir: x}\n", "model: {'dir': 'x'} is not a valid str"),
    "duplicate_key": ("lr: 1.0e-4\nlr: 2.0e-4\n", "duplicate key 'lr'"),
    "null_methods": ("methods: ~\n", "methods is null"),
    "null_out": ("out: ~\n", "out is null"),
    "empty_seeds": ("seeds: []\n", "--seeds needs at least one value"),
    "empty_grid": ("grid: []\n", "--grid needs at least one value"),
    "grid_ratio_one": ("grid: [0.5, 1.0]\n", "prune ratios must be in [0, 1)"),
    "unknown_method": ("methods: [grasp, magic]\n", "--methods magic: choose one of"),
    "huge_integer": ("seed: " + "9" * 5000 + "\n", "a value cannot be read"),
    "list_at_top": ("- lr\n- seed\n", "expected a mapping"),
    "unknown_key": ("learnin_rate: 0.1\n", "unknown key 'learnin_rate'"),
    "string_for_float": ("lr: fast\n", "lr: 'fast' is not a valid float"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_yaml_values(tmp_path, capsys, case):
    text, needle = YAML_CASES[case]
    (tmp_path / "exp.yaml").write_text(text)
    check(cli(*EXPERIMENT, tmp_path / "out", "--config", tmp_path / "exp.yaml"), capsys, tmp_path, needle)


ADAPTER_CONFIGS = {
    "rank_text": ({"r": "abc"}, "r = 'abc'"),
    "rank_null": ({"r": None}, "r = None"),
    "rank_zero": ({"r": 0}, "r = 0"),
    "alpha_text": ({"lora_alpha": "x"}, "lora_alpha = 'x'"),
    "targets_number": ({"target_modules": 5}, "target_modules = 5"),
    "dropout_two": ({"lora_dropout": 2}, "lora_dropout = 2"),
    "config_is_list": ([1, 2], "expected a JSON object"),
    "config_is_null": (None, "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(ADAPTER_CONFIGS))
def test_bad_adapter_config(tmp_path, capsys, tiny_model, tiny_adapters, demo_data, case):
    import json

    change, needle = ADAPTER_CONFIGS[case]
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters["ar"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg = {**cfg, **change} if isinstance(change, dict) else change
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    rc = cli("search", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar",
             "--adapters", tiny_adapters["en"], bad, "--out", tmp_path / "out")
    check(rc, capsys, tmp_path, "adapter_config.json", needle)


def test_planted_pickle_checkpoint_is_refused_and_never_run(tmp_path, capsys, tiny_model, demo_data):
    """A checkpoint.pt whose pickle would run a shell command on load: `--resume` refuses it (exit 2) and the
    command never runs (checkpoints are read with torch.load(weights_only=True))."""
    import os

    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    out = tmp_path / "a"
    out.mkdir()
    torch.save({"params": [Payload()]}, out / "checkpoint.pt")
    rc = cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", out,
             "--max-steps", 1, "--resume")
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint.pt: cannot read the checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
