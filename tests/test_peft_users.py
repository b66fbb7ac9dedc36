"""What PEFT and Hugging Face users expect: their option names, a did-you-mean, honest help, the learned ratio by
file, global flags anywhere."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import cli, run_cli
from grasp_lora.cli import make_parser
from grasp_lora.files import read_jsonl, write_jsonl


def test_peft_and_hf_names_in_yaml_and_as_flags(tmp_path, tiny_model, demo_data):
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(yaml.safe_dump({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                                   "learning_rate": 1e-3, "gradient_accumulation_steps": 2, "num_train_epochs": 1,
                                   "per_device_train_batch_size": 2}))
    out = tmp_path / "yaml"
    assert cli("train-adapter", "--config", cfg, "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar",
               "--out", out, "--max-steps", 1) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert (written["rank"], written["alpha"], written["dropout"], written["lr"], written["grad_accum"],
            written["epochs"], written["batch_size"]) == (4, 8.0, 0.0, 1e-3, 2, 1, 2)
    adapter = json.loads((out / "adapter_config.json").read_text())
    # all-linear: every projection of the tiny Llama, not the output head
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and {m.rsplit(".", 1)[-1] for m in adapter[
        "target_modules"]} == {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"}
    flags = tmp_path / "flags"
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", flags,
               "--r", 4, "--lora-alpha", 8, "--lora-dropout", 0, "--target-modules", "all-linear", "--learning-rate",
               1e-3, "--gradient-accumulation-steps", 2, "--num-train-epochs", 1, "--per-device-train-batch-size", 2,
               "--max-steps", 1, "-v") == 0  # -v after the subcommand too
    assert yaml.safe_load((flags / "config.yaml").read_text()) == {**written, "out": str(flags)}
    assert (flags / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("where, typo, suggestion", [
    ("yaml", "lerning_rate", "did you mean 'learning_rate'?"),
    ("yaml", "grad_acum", "did you mean 'grad_accum'?"),
    ("flag", "--lerning-rate", "did you mean --learning-rate?"),
    ("flag", "--max-stpes", "did you mean --max-steps?"),
])
def test_unknown_names_get_a_did_you_mean(tmp_path, capsys, where, typo, suggestion):
    args = ["train-adapter", "--data", "d", "--lang", "ar", "--out", tmp_path / "o"]
    if where == "yaml":
        (tmp_path / "c.yaml").write_text(f"{typo}: 1\n")
        args += ["--config", tmp_path / "c.yaml"]
    else:
        args += [typo, "1"]
    rc = exit_code(*args)
    err = capsys.readouterr().err
    assert rc == 2 and suggestion in err and len(err.strip().splitlines()) == 1, err


def exit_code(*args) -> int:
    """The CLI's exit code, argparse's own errors (SystemExit) included."""
    try:
        return cli(*args)
    except SystemExit as e:
        return e.code


def test_help_says_required_and_each_default_once():
    sub = {a.dest: a for a in make_parser()._subparsers._group_actions[0].choices["finetune-merged"]._actions}
    assert sub["prune_ratio"].help.endswith("(required)") and sub["data"].help.endswith("(required)")
    assert sub["dropout"].help.count("default") == 1  # said by the text itself, not repeated as "(default: None)"
    assert all("(default: None)" not in (a.help or "") for a in sub.values())
    assert "(default: q_proj v_proj)" in {a.dest: a for a in make_parser()._subparsers._group_actions[0].choices[
        "train-adapter"]._actions}["target_modules"].help


def test_prune_ratio_is_required_and_read_from_ratio_json(tmp_path, capsys, tiny_model, tiny_adapters, demo_data):
    base = ["finetune-merged", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
            "--data", demo_data["ar"], "--lang", "ar", "--max-steps", 1, "--grad-accum", 1]
    assert cli(*base, "--out", tmp_path / "none") == 2
    assert "--prune-ratio is required" in capsys.readouterr().err
    search = tmp_path / "search"
    search.mkdir()
    (search / "ratio.json").write_text(json.dumps({"prune_ratio": 0.37, "rule": "policy_mean"}))
    for given in (search / "ratio.json", search):  # the file or its folder
        out = tmp_path / f"from_{given.name}"
        assert cli(*base, "--prune-ratio", given, "--out", out) == 0
        assert json.loads((out / "train_summary.json").read_text())["prune_ratio"] == 0.37
        assert yaml.safe_load((out / "config.yaml").read_text())["prune_ratio"] == 0.37
    (search / "ratio.json").write_text("{}")
    capsys.readouterr()
    assert cli(*base, "--prune-ratio", search, "--out", tmp_path / "bad") == 2
    err = capsys.readouterr().err
    assert "ratio.json: field 'prune_ratio' must be a number" in err and len(err.strip().splitlines()) == 1
    assert cli(*base, "--prune-ratio", tmp_path / "missing.json", "--out", tmp_path / "bad") == 2
    assert "is neither a number nor a ratio.json file" in capsys.readouterr().err
    assert len(read_jsonl(tmp_path / "from_ratio.json" / "train_log.jsonl")) == 1


def test_surprises_get_a_clear_message(tmp_path, capsys, tiny_model, tiny_adapters, demo_data):
    data = demo_data["ar"]
    cases = [  # (argv, what the one error line says)
        (["train-adapter", "--model", tiny_model, "--data", data, "--lang", "en", "--out", tmp_path / "a"],
         "splits.json says the data is 'ar'; pass --lang ar"),
        (["search", "--model", tiny_model, "--data", data, "--lang", "ar", "--adapters", tiny_adapters["ar"],
          "--out", tmp_path / "s"], "--adapters needs two or more PEFT adapter folders"),
    ]
    for argv, needle in cases:
        assert cli(*argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
        assert not argv[-1].exists()


def test_evaluate_knows_what_the_predictions_were_made_for(tmp_path, capsys, tiny_model, demo_data):
    preds = tmp_path / "p.jsonl"
    assert cli("generate", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", preds,
               "--limit", 3, "--max-new-tokens", 4) == 0
    rows = read_jsonl(preds)
    assert len(rows) == 3 and {(r["task"], r["lang"]) for r in rows} == {("qa", "ar")}
    # generate --limit N, then evaluate against the data: the first N records, said in metrics.json
    assert cli("evaluate", "--predictions", preds, "--lang", "ar", "--data", demo_data["ar"], "--out",
               tmp_path / "m.json", "--bertscore-model", "none") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 3 and metrics["subset"] == "the first 3 of the 8 records of test.jsonl"
    capsys.readouterr()
    for flags, needle in ((["--task", "summarization", "--lang", "ar"], "generated for task 'qa' (line 1); pass --task qa"),
                          (["--lang", "zh"], "generated for lang 'ar' (line 1); pass --lang ar")):
        assert cli("evaluate", "--predictions", preds, *flags, "--out", tmp_path / "x.json",
                   "--bertscore-model", "none") == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    # an older predictions file (no task field) is known by its record fields
    write_jsonl(preds, [{k: v for k, v in r.items() if k not in ("task", "lang")} for r in rows])
    assert cli("evaluate", "--predictions", preds, "--task", "summarization", "--lang", "ar", "--out",
               tmp_path / "x.json", "--bertscore-model", "none") == 2
    assert "generated for task 'qa'" in capsys.readouterr().err


@pytest.mark.parametrize("template", [True, False])
def test_generate_one_prompt(tmp_path, capsys, tiny_model, tiny_adapters, template):
    """`generate --prompt` prints the greedy completion, in the tokenizer's chat template unless told not to;
    checked against transformers' own generate on the same ids, with the adapter put on by PEFT."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}[U] {{ m['content'] }}{% endfor %}[A]"
    tok.save_pretrained(model)
    flags = [] if template else ["--no-chat-template"]
    assert cli("generate", "--model", model, "--adapter", tiny_adapters["ar"], "--prompt", "hello there",
               "--max-new-tokens", 6, *flags) == 0
    printed = capsys.readouterr().out.strip()
    ids = tok("[U] hello there[A]", add_special_tokens=False)["input_ids"] if template else tok("hello there")[
        "input_ids"]
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), tiny_adapters["ar"]).eval()
    out = lm.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert printed == tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    assert printed  # a random tiny model still writes some tokens


def test_generate_needs_data_or_a_prompt(tmp_path, capsys, tiny_model, demo_data):
    assert cli("generate", "--model", tiny_model, "--lang", "ar", "--out", tmp_path / "p.jsonl") == 2
    assert "--data is required (or give --prompt for one completion)" in capsys.readouterr().err
    assert cli("generate", "--model", tiny_model, "--prompt", "x", "--data", demo_data["ar"]) == 2
    assert "give --prompt or --data, not both" in capsys.readouterr().err


def test_one_base_model_by_any_name(tmp_path, capsys, monkeypatch, tiny_model, tiny_qwen, tiny_adapters, demo_data):
    """The base an adapter records is recognised by relative path, symlink or a copy elsewhere; a real mismatch is
    one line naming both (exit 2), and --allow-other-base lets it through."""
    import shutil

    link, copy = tmp_path / "link", tmp_path / "copy"
    link.symlink_to(tiny_model, target_is_directory=True)
    shutil.copytree(tiny_model, copy)
    monkeypatch.chdir(tiny_model.parent)
    common = ["--adapter", tiny_adapters["ar"], "--data", demo_data["ar"], "--lang", "ar", "--limit", 1,
              "--max-new-tokens", 2]
    for i, model in enumerate((tiny_model.name, link, copy)):  # all three are the base the adapter records
        assert cli("generate", "--model", model, *common, "--out", tmp_path / f"p{i}.jsonl") == 0, model
    capsys.readouterr()
    assert cli("generate", "--model", tiny_qwen, *common, "--out", tmp_path / "q.jsonl") == 2
    err = capsys.readouterr().err
    assert f"--model {tiny_qwen}: is not the base model {tiny_adapters['ar']} was made for ({tiny_model})" in err
    assert "--allow-other-base" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "q.jsonl").exists()
    # a finetune-merged on the copy passes; on another model it needs the override (then fails on the shapes)
    assert cli("finetune-merged", "--model", copy, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data",
               demo_data["ar"], "--lang", "ar", "--prune-ratio", 0, "--max-steps", 1, "--out", tmp_path / "ft") == 0



def hub_cache_copy(cache: Path, repo_id: str, model: Path) -> Path:
    """`model` laid out as huggingface_hub caches a download of `repo_id`: content-addressed blobs, a snapshot
    folder of links to them, refs/main naming the snapshot. Returns the snapshot folder."""
    import hashlib
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in model.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_id_and_its_local_cache_are_one_base(tmp_path, capsys, caplog, monkeypatch, tiny_model, tiny_qwen,
                                                   tiny_adapters, demo_data):
    """An adapter made for a hub id is used with the local copy the Hugging Face cache holds of it (and the
    reverse) without a refusal or a network call; another model is still refused, naming both."""
    import shutil

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = hub_cache_copy(tmp_path / "hub", "someorg/tiny-llama", tiny_model)
    by_id, by_path = tmp_path / "by-id", tmp_path / "by-path"
    for folder, base in ((by_id, "someorg/tiny-llama"), (by_path, str(snapshot))):
        shutil.copytree(tiny_adapters["ar"], folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    common = ["--data", demo_data["ar"], "--lang", "ar", "--limit", 1, "--max-new-tokens", 2]
    # the hub id's cached copy, the original folder it was copied from, and (reverse) the hub id for a path
    assert cli("generate", "--model", snapshot, "--adapter", by_id, *common, "--out", tmp_path / "a.jsonl") == 0
    assert cli("generate", "--model", tiny_model, "--adapter", by_id, *common, "--out", tmp_path / "b.jsonl") == 0
    # the reverse: an adapter that records the cached folder, used with the hub id (loaded from the cache, offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert cli("generate", "--model", "someorg/tiny-llama", "--adapter", by_path, *common,
               "--out", tmp_path / "r.jsonl") == 0
    assert [r["prediction"] for r in read_jsonl(tmp_path / "r.jsonl")] == \
        [r["prediction"] for r in read_jsonl(tmp_path / "b.jsonl")]
    assert "cannot check offline" not in caplog.text  # each was checked, not waved through
    capsys.readouterr()
    assert cli("generate", "--model", tiny_qwen, "--adapter", by_id, *common, "--out", tmp_path / "q.jsonl") == 2
    err = capsys.readouterr().err
    assert f"is not the base model {by_id} was made for (someorg/tiny-llama)" in err and len(err.strip().splitlines()) == 1
    # a hub id that is not in the cache cannot be checked offline: a warning, not a refusal
    shutil.rmtree(tmp_path / "hub")
    assert cli("generate", "--model", tiny_model, "--adapter", by_id, *common, "--out", tmp_path / "c.jsonl") == 0
    assert "cannot check offline that someorg/tiny-llama" in caplog.text

def test_the_adapters_base_is_the_default_model(tmp_path, capsys, tiny_model, tiny_adapters, demo_data):
    """No --model: the base the adapter records is loaded (not the packaged default), as PEFT does."""
    preds = tmp_path / "p.jsonl"
    assert cli("generate", "--adapter", tiny_adapters["ar"], "--data", demo_data["ar"], "--lang", "ar", "--limit", 2,
               "--max-new-tokens", 2, "--out", preds) == 0
    assert yaml.safe_load((tmp_path / "p.config.yaml").read_text())["model"] == str(tiny_model.resolve())
    out = tmp_path / "ft"
    assert cli("finetune-merged", "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data", demo_data["ar"],
               "--lang", "ar", "--prune-ratio", 0.3, "--max-steps", 1, "--out", out) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(tiny_model.resolve())


def test_every_adapter_folder_has_a_model_card_peft_loads_from(tmp_path, tiny_model, tiny_adapters, demo_data):
    """train-adapter and finetune-merged write README.md (base model, task, languages, method, prune ratio) and a
    base_model_name_or_path that AutoPeftModelForCausalLM loads on this machine."""
    from peft import AutoPeftModelForCausalLM

    single, merged = tmp_path / "single", tmp_path / "merged"
    assert cli("train-adapter", "--model", tiny_model, "--data", demo_data["ar"], "--lang", "ar", "--out", single,
               "--max-steps", 1) == 0
    assert cli("finetune-merged", "--model", tiny_model, "--adapters", tiny_adapters["en"], single, "--data",
               demo_data["ar"], "--lang", "ar", "--prune-ratio", 0.25, "--max-steps", 1, "--out", merged) == 0
    for folder, needles in ((single, ["LoRA adapter (grasp-lora train-adapter)", "**Languages**: ar"]),
                            (merged / "adapter", ["GRASP LoRA merged adapter", "**Prune ratio**: 0.2500 (drop rate; "
                                                  "PEFT density 0.7500), input_weighted criterion"])):
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nbase_model: ") and "library_name: peft" in card and "**Task**: qa" in card
        assert all(n in card for n in needles), card
        assert AutoPeftModelForCausalLM.from_pretrained(folder) is not None


def test_report_to_tensorboard_and_wandb(tmp_path, monkeypatch, tiny_model, tiny_adapters, demo_data):
    """--report-to as transformers': TensorBoard event files read back with TensorBoard's own reader hold the
    logged losses, learning rates, val losses and the controller's p, mu, sigma and rewards; W&B runs offline."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "search"
    assert cli("search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data",
               demo_data["ar"], "--lang", "ar", "--max-steps", 4, "--round-every", 2, "--out", out,
               "--report-to", "tensorboard", "wandb", "--controller", "sliced") == 0  # a probing controller's rewards
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    log, val = read_jsonl(out / "train_log.jsonl"), read_jsonl(out / "val_log.jsonl")
    history = read_jsonl(out / "history.jsonl")
    assert scalars["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]
    assert scalars["train/lr"] == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in log]
    assert scalars["val/loss"] == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in val]
    for key in ("p", "mu", "sigma"):
        assert scalars[f"train/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in log]
    assert scalars["controller/reward_best"] == [(h["step"], pytest.approx(max(h["rewards"]), rel=1e-6))
                                                 for h in history]
    (run_file,) = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = [h for h in wandb_history(run_file) if "train/loss" in h]
    assert [(h["_step"], h["train/loss"]) for h in logged] == [(r["step"], pytest.approx(r["loss"], rel=1e-6))
                                                               for r in log]


def wandb_history(path) -> list[dict]:
    """The history rows of an offline W&B run file: LevelDB-style log blocks of protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, records, buf = path.read_bytes(), 7, 32768, [], b""  # 7: the ':W&B' header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(buf)
            buf = b""
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_python_api_search_matches_the_cli(tmp_path, tiny_model, tiny_adapters, demo_data):
    import grasp_lora
    from grasp_lora.errors import OptionError

    options = dict(model=str(tiny_model), adapters=[str(tiny_adapters["en"]), str(tiny_adapters["ar"])],
                   data=str(demo_data["ar"]), lang="ar", max_steps=4, round_every=2)
    found = grasp_lora.search(**options)
    assert cli("search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data",
               demo_data["ar"], "--lang", "ar", "--max-steps", 4, "--round-every", 2, "--out", tmp_path / "cli") == 0
    by_cli = json.loads((tmp_path / "cli" / "ratio.json").read_text())
    assert found["prune_ratio"] == by_cli["prune_ratio"] and len(found["history"]) == 2
    assert [h["candidates"] for h in found["history"]] == [h["candidates"] for h in
                                                           read_jsonl(tmp_path / "cli" / "history.jsonl")]
    final = grasp_lora.finetune_merged(adapters=options["adapters"], data=options["data"], lang="ar", max_steps=1,
                                       prune_ratio=str(Path(found["out"]) / "ratio.json"))
    assert final["prune_ratio"] == found["prune_ratio"] and (Path(final["adapter"]) / "adapter_config.json").is_file()
    with pytest.raises(OptionError, match="data"):
        grasp_lora.search(lang="ar", adapters=options["adapters"])


def test_python_api_merge_adapters_onto_a_loaded_model(tmp_path, tiny_model, tiny_adapters):
    """merge_adapters puts the adapters, merged and pruned, on a transformers model: the base frozen, the LoRA
    factors trainable, generation works, and its export loads in PEFT with the same outputs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import grasp_lora
    from grasp_lora import prune

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    grasp_lora.merge_adapters(model, [tiny_adapters["en"], tiny_adapters["ar"]], prune_ratio=0.3)
    assert prune.kept_fraction(prune.current_masks(model)) == pytest.approx(0.7, abs=0.01)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # ready to train: gradients reach the factors only
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 8)
    grasp_lora.export_adapter(model, str(tmp_path / "exported"), base_model=str(tiny_model))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "exported")
        assert torch.allclose(peft(input_ids=ids).logits, ours, atol=1e-5)


def test_one_run_mode_exports_the_controller_runs_best_weights(tmp_path, tiny_model, tiny_adapters, demo_data):
    """search --export-adapter: ONE standard PEFT adapter from the controller run, its best-val weights pruned at
    p* with the run's criterion; report puts it on its own row, timed as one run."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "search"
    assert cli("search", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"], "--data",
               demo_data["ar"], "--lang", "ar", "--max-steps", 6, "--round-every", 2, "--export-adapter",
               "--out", out) == 0
    ratio = json.loads((out / "ratio.json").read_text())
    assert ratio["adapter"] == str(out / "adapter") and (out / "best.pt").is_file()
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    # the sum form exports A = [A_en; A_ar] per module: each adapter's block pruned at p* (per tensor)
    blocks = [w[i * 8:(i + 1) * 8] for k, w in weights.items() if k.endswith("lora_A.weight") for i in range(2)]
    kept = [float((b != 0).float().mean()) for b in blocks]
    assert all(k == pytest.approx(1 - ratio["prune_ratio"], abs=1 / b.numel() + 1e-6) for k, b in zip(kept, blocks))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")
    assert model(input_ids=torch.tensor([[1, 5, 9]])).logits.isfinite().all()
    assert "learned by the controller" in (out / "adapter" / "README.md").read_text()
    assert cli("generate", "--adapter", out / "adapter", "--data", demo_data["ar"], "--lang", "ar",
               "--max-new-tokens", 2, "--out", tmp_path / "p.jsonl") == 0
    assert cli("evaluate", "--predictions", tmp_path / "p.jsonl", "--lang", "ar", "--out", tmp_path / "m.json",
               "--bertscore-model", "none") == 0
    assert cli("report", tmp_path, "--out", tmp_path / "report") == 0
    assert "| GRASP LoRA (one run) | 1 |" in (tmp_path / "report" / "results.md").read_text()
    runtime = (tmp_path / "report" / "runtime.md").read_text()
    assert "| GRASP LoRA (one run: the controller run's export) | qa | ar | 1 |" in runtime


def test_report_to_ray_needs_a_tune_trial(tmp_path, tiny_model, tiny_adapters, demo_data):
    """Outside a Ray Tune trial `--report-to ray` has nowhere to report: one line saying so, exit 2."""
    r = run_cli("finetune-merged", "--model", tiny_model, "--adapters", tiny_adapters["en"], tiny_adapters["ar"],
                "--data", demo_data["ar"], "--lang", "ar", "--prune-ratio", 0.3, "--max-steps", 1,
                "--out", tmp_path / "out", "--report-to", "ray")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "--report-to ray" in r.stderr and "not in one" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_report_to_ray_drives_asha(tmp_path, tiny_model, tiny_adapters, demo_data):
    """Inside Ray Tune trials, `report_to: ray` reports each epoch's val loss (the run's own val_log), which is what
    ASHA stops trials on: no trial reports more epochs than it trained, the first runs them all."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from grasp_lora.config import FinetuneMergedConfig
    from grasp_lora.files import RUN_NAME
    from grasp_lora.final_run import finetune_merged

    epochs, ratios = 3, [0.1, 0.5, 0.8]

    def trainable(config):
        finetune_merged(FinetuneMergedConfig(
            model=str(tiny_model), adapters=[str(tiny_adapters["en"]), str(tiny_adapters["ar"])],
            data=str(demo_data["ar"]), lang="ar", prune_ratio=config["p"], epochs=epochs, patience=0,
            out=str(tmp_path / f"p{config['p']}"), report_to=["ray"], device="cpu"))

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        results = tune.Tuner(
            trainable, param_space={"p": tune.grid_search(ratios)},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", max_concurrent_trials=1,
                                        scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0)).fit()
    finally:
        ray.shutdown()
    reported = {r.config["p"]: list(r.metrics_dataframe["val_loss"]) for r in results}
    assert not any(r.error for r in results)
    assert len(reported[ratios[0]]) == epochs  # alone at every rung: never stopped
    for p, values in reported.items():
        run = tmp_path / f"p{p}"
        log = read_jsonl((run if (run / "val_log.jsonl").is_file() else run / RUN_NAME) / "val_log.jsonl")
        assert 1 <= len(values) <= epochs
        assert values == pytest.approx([r["val_loss"] for r in log][:len(values)], rel=1e-9)
