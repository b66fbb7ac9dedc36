"""New tokens per second: our batched greedy generation with the KV cache against one prompt at a time
without the cache (the authors' setting), same model, prompts and budgets, measured in one run; and a check
that both produce the same greedy text.

    python benchmarks/bench_generate.py [--model packaged:smollm2-135m] [--n 16] [--max-new-tokens 64] [--lang ar]
"""

from __future__ import annotations

import argparse
import time

import torch

from grasp_lora.data.prompts import get_prompt
from grasp_lora.data.readers import read_file
from grasp_lora.demo import corpus_file
from grasp_lora.generate import generate_texts
from grasp_lora.models import load_model, load_tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="packaged:smollm2-135m")
    ap.add_argument("--lang", default="ar")
    ap.add_argument("--n", type=int, default=16, help="prompts (bundled demo QA)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="the paper's QA budget")
    args = ap.parse_args()

    tok = load_tokenizer(args.model)
    tok.padding_side = "left"
    model = load_model(args.model, "cpu")
    records = read_file(corpus_file("qa", args.lang), "qa")[: args.n]
    prompt = get_prompt("qa", args.lang)

    def new_tokens(texts):  # tokens of the predictions, re-encoded (EOS not counted)
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    start = time.perf_counter()
    ours = generate_texts(model, tok, prompt, records, args.max_new_tokens, args.batch_size, desc="batched+cache")
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = generate_texts(model, tok, prompt, records, args.max_new_tokens, 1, use_cache=False, desc="1-by-1, no cache")
    t_theirs = time.perf_counter() - start

    same = sum(a == b for a, b in zip(ours, theirs))
    n_ours, n_theirs = new_tokens(ours), new_tokens(theirs)
    print(f"\nmodel {args.model}, {args.n} {args.lang} QA prompts, max_new_tokens {args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads")
    print(f"batched (bs {args.batch_size}) + KV cache: {n_ours / t_ours:8.1f} new tokens/s ({t_ours:.1f} s)")
    print(f"one at a time, no cache:      {n_theirs / t_theirs:8.1f} new tokens/s ({t_theirs:.1f} s)")
    print(f"speed-up: {(n_ours / t_ours) / (n_theirs / t_theirs):.2f}x   (target >= 5x)")
    print(f"identical greedy outputs: {same}/{len(ours)}")
    for a, b in list(zip(ours, theirs))[:3]:
        print(f"  {a!r} | {b!r}")


if __name__ == "__main__":
    main()
