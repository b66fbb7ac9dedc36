#!/usr/bin/env bash
# The paper-scale checks for a GPU lent for a few minutes: bench_gpu.py (the full 32-layer Llama-3-8B config:
# training steps against PEFT's, one controller round, generation) and bench_scale.py (every command in bf16 at
# 8B widths, 2 layers), each under its own time limit so both finish within 10 minutes. Outputs go to $OUT (or
# runs/gpu-check) for RESULTS.md.
set -u
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt" 2>&1
timeout 300 python benchmarks/bench_gpu.py --iters 3 > "$out/bench_gpu.txt" 2>&1; echo "bench_gpu rc=$?" >> "$out/rc.txt"
timeout 270 python benchmarks/bench_scale.py --out "$out/scale" --steps 4 > "$out/bench_scale.txt" 2>&1
echo "bench_scale rc=$?" >> "$out/rc.txt"
tail -n 30 "$out"/*.txt
