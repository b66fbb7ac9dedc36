"""GPU readiness at the paper's scale, measured side by side in one run on a randomly initialised model built from
the Llama-3-8B config (hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads, vocab 128256; no
download), bf16 weights on one CUDA GPU, LoRA factors in fp32 (as PEFT):

  - a training step (forward, backward, AdamW) at SEQ tokens: one adapter in PEFT; our merged two-adapter layer;
    PEFT's own two-adapter step (`set_adapter([...])`): tokens/s and peak memory, and our ratios to PEFT's;
  - one controller round of the default `sliced` (G = 3 candidate ratios probed on 2 micro-dev examples, then
    the policy update) and of `reinforce` (on 16, and the committed ratio's), against PEFT's training step;
  - batched greedy generation (8 prompts, 64 new tokens, KV cache): new tokens/s.

    python benchmarks/bench_gpu.py                 # the paper's scale: one GPU with about 40 GB free
    python benchmarks/bench_gpu.py --tiny          # a cut-down config on CPU: proves the script, not the figures
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from grasp_lora import prune
from grasp_lora.adapter_io import load_adapter, put_on, write_peft_adapter
from grasp_lora.config import ControllerOptions
from grasp_lora.controller import Controller, needs_reference, probe as probe_ratios
from grasp_lora.merge import merged_layers
from grasp_lora.train import LossProbe

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=2048, max_position_embeddings=2048)
TARGETS = ("q_proj", "v_proj")
RANK = 8


def build_model(config: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).to(dtype)
    model.requires_grad_(False)
    model.name_or_path = "random-llama3-8b-config"
    return model


def random_adapter(model, out: Path, seed: int) -> str:
    """A PEFT adapter folder with random A and B (B nonzero, so the adapter changes the output)."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            factors[name] = (torch.randn(module.out_features, RANK, generator=g) * 0.01,
                             torch.randn(RANK, module.in_features, generator=g) * 0.01)
    write_peft_adapter(out, factors, lora_alpha=2 * RANK, dropout=0.0, base_id=model.name_or_path)
    return str(out)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: torch.device, iters: int) -> tuple[float, float]:
    """(seconds per call after one warm-up call, peak memory in GiB during the timed calls)."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def train_step(model, params, batch):
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a cut-down config on CPU (proves the script)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per training step (default 2048; --tiny 256)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # PEFT's call
    if not args.tiny and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: run with --tiny to prove the script on CPU")
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    config, seq = (TINY, args.seq or 256) if args.tiny else (LLAMA3_8B, args.seq or 2048)
    from peft import PeftModel

    start = time.time()
    model = build_model(config, device, dtype)
    print(f"{'cut-down config on CPU (the script, not the figures)' if args.tiny else 'Llama-3-8B config, bf16'}: "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:,.0f} M parameters, built in {time.time() - start:.0f} s; "
          f"{seq} tokens per step, LoRA r={RANK} on {', '.join(TARGETS)}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    model.config.use_cache = False  # training steps first; generation turns the cache back on
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config["vocab_size"], (1, seq), generator=g).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        en, ar = random_adapter(model, Path(tmp) / "en", 1), random_adapter(model, Path(tmp) / "ar", 2)

        peft = PeftModel.from_pretrained(model, en, adapter_name="en", is_trainable=True)
        params = [p for p in peft.parameters() if p.requires_grad]
        rows.append(("PEFT, one adapter", *measure(train_step(peft, params, batch), device, args.iters)))
        peft.load_adapter(ar, adapter_name="ar", is_trainable=True)
        peft.base_model.set_adapter(["en", "ar"])
        params = [p for p in peft.parameters() if p.requires_grad]
        rows.append(("PEFT, two adapters (set_adapter)", *measure(train_step(peft, params, batch), device, args.iters)))
        model = peft.unload()  # the plain model back, for ours

        layers = put_on(model, [load_adapter(en), load_adapter(ar)], "sum")
        params = [p for layer in layers.values() for p in (*layer.lora_A, *layer.lora_B)]
        for p in params:
            p.requires_grad_(True)
        rows.append(("ours, two adapters merged", *measure(train_step(model, params, batch), device, args.iters)))
        lora_dtypes = {p.dtype for p in params}

    print(f"\n| training step ({seq} tokens) | tokens/s | peak memory (GiB) |\n|---|---:|---:|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seq / seconds:,.0f} | {peak:.1f} |")
    ours, peft_two, peft_one = rows[2][1], rows[1][1], rows[0][1]
    print(f"\nours / PEFT two adapters, time per step: {ours / peft_two:.3f} (below 1: ours faster); "
          f"ours / PEFT one adapter: {ours / peft_one:.3f}; LoRA factor dtypes {sorted(map(str, lora_dtypes))}")

    micro = [{"input_ids": t, "labels": t} for t in
             torch.randint(0, config["vocab_size"], (16, min(seq, 512)), generator=g).tolist()]
    scores = prune.CRITERIA["magnitude"](model, lambda: iter(())).scores()
    model.train()
    for name in ("sliced", "reinforce"):  # the default's round, and the authors' (every example, and the reference)
        s = ControllerOptions(controller=name)
        examples = micro[:s.probe_examples] if s.probe_examples else micro
        probe = LossProbe(examples, 0, device, batch_size=8)
        controller = Controller(s, lambda ratios: probe_ratios(model, scores, ratios, "per_tensor",
                                                               lambda: probe(model)),
                                lambda ratio: prune.commit_masks(model, prune.masks_for_ratio(scores, ratio)),
                                lambda: probe(model))
        seconds, peak = measure(lambda: controller.round(10), device, 1)
        reference = ", and the committed ratio's" if needs_reference(s) else ""
        print(f"one `{name}` controller round (G = {s.group_size} candidates on {len(examples)} micro-dev examples of "
              f"{min(seq, 512)} tokens{reference}): {seconds:.2f} s = {seconds / peft_one:.2f} PEFT one-adapter "
              f"training steps (a round every K = 10 steps: probe s / training s about {seconds / peft_one / 10:.2f}), "
              f"peak {peak:.1f} GiB")

    model.eval()
    model.config.use_cache = True
    prompts = torch.randint(0, config["vocab_size"], (8, min(seq, 512)), generator=g).to(device)
    with torch.inference_mode():
        seconds, peak = measure(lambda: model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                                                       max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                                       pad_token_id=0), device, 1)
    print(f"batched generation (8 prompts of {prompts.shape[1]} tokens, 64 new each, KV cache): "
          f"{8 * 64 / seconds:,.0f} new tokens/s, peak {peak:.1f} GiB")
    print(f"merged layers: {len(merged_layers(model))}; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
