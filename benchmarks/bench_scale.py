"""The paper's model widths through the real commands, on CPU: a randomly initialised model from the Llama-3-8B
config cut to 2 layers (hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 128256; about 3 GB in
bf16, built and saved once; no download), every command in bf16:

  train-adapter (two adapters) -> search (2 rounds) -> finetune-merged (PEFT export) -> generate (2 prompts)
  -> evaluate,

each in its own process, with its wall time and peak RSS; then one training step measured side by side on the
same batches: plain PEFT with one adapter, PEFT with both (`set_adapter`), and our merged two-adapter layer, as
seconds per step and peak RSS (and peak GPU memory on a GPU, which every command then uses), and our ratios to
PEFT's (goals: memory <= 1.15x, time <= 1.3x PEFT's two-adapter step). The tokenizer is the packaged SmolLM2 one
(49152 ids of the 128256 rows are used). `benchmarks/gpu_check.sh` runs this and bench_gpu.py on a GPU in 10 min.

Every stage writes done.json under --out and is skipped when run again: an interrupted benchmark continues.

    python benchmarks/bench_scale.py [--out runs/bench-scale] [--layers 2] [--steps 4]
    python benchmarks/bench_scale.py --tiny    # a cut-down config: proves the script in a minute, not the figures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_gpu import LLAMA3_8B, TINY  # noqa: E402

from grasp_lora.demo import corpus_file  # noqa: E402
from grasp_lora.files import read_json, write_json  # noqa: E402

TARGETS = ["q_proj", "v_proj"]


def run(args: list, out: Path) -> dict:
    """One command in its own process: its wall seconds and peak RSS (GiB); its output kept in OUT/log.txt."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(map(str, args[:3]))} failed; see {out / 'log.txt'}")
    return {"seconds": time.time() - start, "peak_rss_gib": usage.ru_maxrss / 2**20}


def child(args: list) -> dict:
    """This script in a process of its own (one side of a comparison, the model build): what it prints last."""
    start = time.time()
    r = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0:
        sys.exit(f"bench_scale {' '.join(map(str, args[:2]))} failed:\n{r.stderr[-2000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": time.time() - start}


def stage(out: Path, name: str, fn) -> dict:
    done = out / name / "done.json"
    if done.is_file():
        return read_json(done)
    info = fn(out / name)
    write_json(done, info)
    print(f"  {name}: {info['seconds']:.0f} s, peak RSS {info['peak_rss_gib']:.1f} GiB", flush=True)
    return info


def build(config: dict, folder: Path) -> dict:
    """(in a process of its own: a child forked from a large parent would count the parent's pages in its peak RSS)
    The random model in bf16 and the packaged tokenizer, saved as a Hugging Face folder."""
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from grasp_lora.models import load_tokenizer

    start = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialised in bf16: no fp32 copy of the 3 GB on the way
    model = LlamaForCausalLM(LlamaConfig(**config, torch_dtype="bfloat16"))
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer("packaged:smollm2-135m").save_pretrained(folder)
    return {"seconds": time.time() - start, "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def step_side(which: str, model_dir: str, data: str, adapters: list[str], steps: int, max_length: int) -> dict:
    """(in a process of its own) `steps` training steps of one side on the first train examples: seconds per
    step after a warm-up step, and the peak RSS."""
    import resource

    import torch

    from grasp_lora.adapter_io import load_adapter, put_on
    from grasp_lora.data.batching import collate
    from grasp_lora.data.prompts import get_prompt
    from grasp_lora.data.splits import load_split
    from grasp_lora.data.tokenize import encode_split
    from grasp_lora.models import load_model, load_tokenizer
    from grasp_lora.train import example_nll

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(model_dir)
    examples = encode_split(tok, get_prompt("qa", "ar"), load_split(data, "train", "qa"), max_length)
    model = load_model(model_dir, str(device), "bfloat16")
    model.requires_grad_(False)
    if which == "ours":
        layers = put_on(model, [load_adapter(a) for a in adapters], "sum")
        params = [p for layer in layers.values() for p in (*layer.lora_A, *layer.lora_B)]
        for p in params:
            p.requires_grad_(True)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0", is_trainable=True)
        if which == "peft_two":
            model.load_adapter(adapters[1], adapter_name="a1", is_trainable=True)
            model.base_model.set_adapter(["a0", "a1"])
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for i in range(steps + 1):
        batch = collate([examples[i % len(examples)]], tok.pad_token_id, device)
        if i == 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        example_nll(model, batch).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    gpu = {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30} if device.type == "cuda" else {}
    return {"seconds_per_step": sum(times[1:]) / steps, "trainable": sum(p.numel() for p in params),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "device": str(device), **gpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-scale")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the Llama-3-8B config kept")
    ap.add_argument("--steps", type=int, default=4, help="training steps of each command and of each side")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per example")
    ap.add_argument("--tiny", action="store_true", help="a cut-down config (proves the script, not the figures)")
    ap.add_argument("--build", metavar="JSON", help=argparse.SUPPRESS)  # the child process that builds the model
    ap.add_argument("--step-side", nargs=5, metavar=("WHICH", "MODEL", "DATA", "ADAPTER1", "ADAPTER2"),
                    help=argparse.SUPPRESS)  # the child process of one side of the step comparison
    args = ap.parse_args()
    if args.build:
        print(json.dumps(build(json.loads(args.build), Path(args.out) / "model")))
        return
    if args.step_side:
        which, model_dir, data, *adapters = args.step_side
        print(json.dumps(step_side(which, model_dir, data, adapters, args.steps, args.max_length)))
        return
    config = {**(TINY if args.tiny else LLAMA3_8B), "num_hidden_layers": args.layers}
    config["vocab_size"] = max(config["vocab_size"], 49152)  # every id of the packaged tokenizer
    out = Path(args.out)
    print(f"bench_scale: {'cut-down config (the script, not the figures)' if args.tiny else 'Llama-3-8B config'} with "
          f"{args.layers} layers, bf16 on CPU, {args.steps} steps per command, {args.max_length} tokens per example; "
          f"LoRA r=8 on {' '.join(TARGETS)}; stages in {out}", flush=True)
    model = out / "model"
    info = stage(out, "model", lambda d: child(["--build", json.dumps(config), "--out", out]))
    print(f"  model: {info['parameters'] / 1e9:.2f} B parameters", flush=True)
    cli = [sys.executable, "-m", "grasp_lora.cli"]
    common = ["--model", model, "--dtype", "bfloat16", "--max-length", args.max_length, "--batch-size", 1,
              "--grad-accum", 1, "--eval-batch-size", 2]
    data = {}
    for lang in ("en", "ar"):
        stage(out, f"data/{lang}", lambda d, lang=lang: run(cli + ["data", "prepare", "--lang", lang, "--input",
                                                                   corpus_file("qa", lang), "--sizes", "8,2,4,2",
                                                                   "--out", d / "splits"], d))
        data[lang] = out / "data" / lang / "splits"
    adapters = []
    for lang in ("en", "ar"):
        stage(out, f"train-adapter/{lang}", lambda d, lang=lang: run(
            cli + ["train-adapter", *common, "--data", data[lang], "--lang", lang, "--max-steps", args.steps,
                   "--target-modules", *TARGETS, "--out", d / "adapter"], d))
        adapters.append(out / "train-adapter" / lang / "adapter")
    ar = ["--data", data["ar"], "--lang", "ar", "--adapters", *adapters]
    stage(out, "search", lambda d: run(cli + ["search", *common, *ar, "--max-steps", 2, "--round-every", 1,
                                              "--out", d / "run"], d))
    stage(out, "finetune-merged", lambda d: run(
        cli + ["finetune-merged", *common, *ar, "--max-steps", args.steps, "--prune-ratio",
               out / "search" / "run" / "ratio.json", "--out", d / "run"], d))
    stage(out, "generate", lambda d: run(
        cli + ["generate", "--model", model, "--dtype", "bfloat16", "--adapter", out / "finetune-merged" / "run" /
               "adapter", "--data", data["ar"], "--lang", "ar", "--limit", 2, "--max-new-tokens", 8,
               "--out", d / "predictions.jsonl"], d))
    stage(out, "evaluate", lambda d: run(
        cli + ["evaluate", "--predictions", out / "generate" / "predictions.jsonl", "--lang", "ar", "--data",
               data["ar"], "--bertscore-model", "none", "--out", d / "metrics.json"], d))

    sides = {which: stage(out, f"step/{which}", lambda d, which=which: child(
        ["--steps", args.steps, "--max-length", args.max_length, "--step-side", which, model, data["ar"], *adapters]))
        for which in ("peft_one", "peft_two", "ours")}

    print(f"\n| one training step ({args.max_length} tokens at most, batch 1) | s / step | peak RSS (GiB) | trainable |")
    print("|---|---:|---:|---:|")
    for which, label in (("peft_one", "PEFT, one adapter"), ("peft_two", "PEFT, two adapters (set_adapter)"),
                         ("ours", "ours, two adapters merged")):
        s = sides[which]
        print(f"| {label} | {s['seconds_per_step']:.2f} | {s['peak_rss_gib']:.2f} | {s['trainable']:,} |")
    memory = "peak_gpu_gib" if "peak_gpu_gib" in sides["ours"] else "peak_rss_gib"
    if memory == "peak_gpu_gib":
        print("\n".join(f"{which}: peak GPU memory {s['peak_gpu_gib']:.2f} GiB" for which, s in sides.items()))
    ours, two = sides["ours"], sides["peft_two"]
    print(f"\nours / PEFT two adapters: time per step {ours['seconds_per_step'] / two['seconds_per_step']:.3f} "
          f"(goal <= 1.3), {memory} {ours[memory] / two[memory]:.3f} (goal <= 1.15); "
          f"ours / PEFT one adapter: time {ours['seconds_per_step'] / sides['peft_one']['seconds_per_step']:.3f}, "
          f"{memory} {ours[memory] / sides['peft_one'][memory]:.3f}")
    print("\n| command (bf16) | wall s | peak RSS (GiB) |\n|---|---:|---:|")
    for name in ("train-adapter/en", "train-adapter/ar", "search", "finetune-merged", "generate", "evaluate"):
        info = read_json(out / name / "done.json")
        print(f"| {name} | {info['seconds']:.0f} | {info['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
    main()
