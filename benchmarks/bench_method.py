"""Benchmark the method's costs, each measured side by side in one run (ratios, not absolute times).

1. probe overhead of the controller run: probe seconds / total seconds (K=10, G=3, 16 micro-dev
   examples, packaged SmolLM2, the bundled Arabic demo QA) -- target <= 0.15;
2. merged-adapter train step / single-adapter (PEFT) train step on the same batches -- target <= 1.10;
3. our low-rank merged forward vs a forward that materialises (sum B)(sum A) every call, at Llama-3-8B's
   projection sizes (4096x4096, 14336x4096, 4096x14336; r = 8 per adapter, fp32 and bf16): the adapter's own
   cost (the frozen base matmul, the same on both sides, left out) -- goal >= 10x -- and the whole layer's.

    python benchmarks/bench_method.py [--model packaged:smollm2-135m] [--steps 20]
    python benchmarks/bench_method.py --forward-only     # item 3 alone (about a minute)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grasp_lora.adapter_io import save_adapter
from grasp_lora.adapter_training import lora_config
from grasp_lora.config import DataPrepareConfig, SearchConfig
from grasp_lora.data.prepare import prepare_data
from grasp_lora.data.prompts import get_prompt
from grasp_lora.data.splits import load_split
from grasp_lora.data.tokenize import encode_split
from grasp_lora.demo import corpus_file
from grasp_lora.adapter_io import load_adapter
from grasp_lora.merge import MergedLoraLinear, inject
from grasp_lora.controller_run import search
from grasp_lora.models import load_model, load_tokenizer
from grasp_lora.data.batching import collate
from grasp_lora.train import example_nll


def make_adapters(model: str, root: Path) -> list[str]:
    """Two random-B adapters (as if trained) on q/v, saved as PEFT folders."""
    from peft import get_peft_model

    paths = []
    for i, name in enumerate(("en", "ar")):
        torch.manual_seed(i)
        cfg = lora_config(8, 32, 0.05, ["q_proj", "v_proj"])
        cfg.init_lora_weights = False
        peft_model = get_peft_model(load_model(model, "cpu"), cfg)
        save_adapter(peft_model, root / name, model)
        paths.append(str(root / name))
    return paths


def probe_overhead(model: str, root: Path, adapters: list[str], steps: int) -> dict:
    prepare_data(DataPrepareConfig(dataset="mlqa", lang="ar", input=str(corpus_file("qa", "ar")), out=str(root / "data")))
    result, _ = search(SearchConfig(model=model, adapters=adapters, data=str(root / "data"), lang="ar",
                                    out=str(root / "search"), max_steps=steps, device="cpu"))
    return {"probe_s": result["probe_seconds"], "total_s": result["seconds"], "rounds": result["rounds"],
            "ratio": result["probe_seconds"] / result["seconds"]}


def step_ratio(model: str, root: Path, adapters: list[str], steps: int) -> dict:
    from peft import PeftModel

    tok = load_tokenizer(model)
    ex = encode_split(tok, get_prompt("qa", "ar"), load_split(str(root / "data"), "train", "qa"), 2200)
    batches = [collate([e], tok.pad_token_id, torch.device("cpu")) for e in ex[:8]]

    single = PeftModel.from_pretrained(load_model(model, "cpu"), adapters[1], is_trainable=True)
    merged = load_model(model, "cpu")
    inject(merged, [load_adapter(p) for p in adapters], "sum", 0.05)
    models = {}
    for name, m in (("single", single), ("merged", merged)):
        params = [p for n, p in m.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        m.train()
        models[name] = (m, torch.optim.AdamW(params, lr=1e-4))

    def one_step(name):
        m, opt = models[name]
        start = time.perf_counter()
        for b in batches:
            (example_nll(m, b).sum() / len(batches)).backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    for name in models:  # warm-up
        one_step(name)
    times = {"single": [], "merged": []}
    for _ in range(steps):  # interleaved, so both see the same machine noise
        for name in models:
            times[name].append(one_step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k}_s": v for k, v in med.items()}, "ratio": med["merged"] / med["single"]}


# Llama-3-8B's projection shapes (d_out, d_in): attention q/o, the MLP's up/gate and down
SHAPES = {"q_proj": (4096, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)}


def forward_ratio(tokens: int, repeats: int, dtype: torch.dtype, shapes: dict = SHAPES) -> dict:
    """The merged layer's forward through the low-rank path against materialising (sum B)(sum A) every call: the
    adapter's own cost (what differs: the frozen base matmul is the same on both sides) and the whole layer's."""
    torch.manual_seed(0)
    out = {}
    for name, (d_out, d_in) in shapes.items():
        base = torch.nn.Linear(d_in, d_out, bias=False, dtype=dtype)
        As = [(torch.randn(8, d_in) * 0.01).to(dtype) for _ in range(2)]
        Bs = [(torch.randn(d_out, 8) * 0.01).to(dtype) for _ in range(2)]
        layer = MergedLoraLinear(base, As, Bs, [4.0, 4.0], "paper", [0.0]).eval()
        x = torch.randn(1, tokens, d_in, dtype=dtype)

        def delta_low_rank():
            B, A = layer.factors()
            return (x.float() @ A.T) @ B.T

        def delta_materialised():
            B, A = layer.factors()
            return x.float() @ (B @ A).T

        def layer_low_rank():
            return layer(x)

        def layer_materialised():
            B, A = layer.factors()
            return x @ (base.weight + (B @ A).to(dtype)).T

        sides = {"adapter": (delta_low_rank, delta_materialised), "layer": (layer_low_rank, layer_materialised)}
        with torch.no_grad():
            tol = 1e-3 if dtype == torch.float32 else 5e-2
            assert torch.allclose(delta_low_rank(), delta_materialised(), atol=tol, rtol=tol)
            for what, (ours, theirs) in sides.items():
                t = {"ours": [], "materialised": []}
                for _ in range(repeats):
                    for k, fn in (("ours", ours), ("materialised", theirs)):
                        start = time.perf_counter()
                        fn()
                        t[k].append(time.perf_counter() - start)
                med = {k: statistics.median(v) for k, v in t.items()}
                out[(name, what)] = {**{f"{k}_ms": v * 1000 for k, v in med.items()},
                                     "speedup": med["materialised"] / med["ours"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of the controller run (K=10: 2 rounds)")
    ap.add_argument("--step-repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--forward-only", action="store_true", help="only item 3, the merged forward at 8B widths")
    args = ap.parse_args()
    fwd = {dt: forward_ratio(args.tokens, 5, dtype) for dt, dtype in
           (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    if args.forward_only:
        print_forward(fwd, args.tokens)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        adapters = make_adapters(args.model, root)
        probe = probe_overhead(args.model, root, adapters, args.steps)
        step = step_ratio(args.model, root, adapters, args.step_repeats)
    print(f"\nmodel {args.model}, {torch.get_num_threads()} threads")
    print(f"1. probe overhead (K=10, G=3, 16 micro-dev): {probe['probe_s']:.1f} s of {probe['total_s']:.1f} s "
          f"over {probe['rounds']} rounds = {probe['ratio']:.3f}   (target <= 0.15)")
    print(f"2. merged / single-adapter train step: {step['merged_s']:.2f} s / {step['single_s']:.2f} s "
          f"= {step['ratio']:.3f}   (target <= 1.10)")
    print_forward(fwd, args.tokens)


def print_forward(fwd: dict, tokens: int) -> None:
    for dt, rows in fwd.items():
        for (name, what), r in rows.items():
            shape = "x".join(map(str, SHAPES[name]))
            goal = "   (goal >= 10x)" if what == "adapter" else ""
            print(f"3. {name} {shape} {dt}, {tokens} tokens, the {what}: low-rank {r['ours_ms']:.1f} ms vs "
                  f"materialised (sum B)(sum A) {r['materialised_ms']:.1f} ms = {r['speedup']:.1f}x{goal}")


if __name__ == "__main__":
    main()
