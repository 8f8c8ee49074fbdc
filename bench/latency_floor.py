"""The compute floor of the app's quick eval on this machine (issue 13: "where a target is out
of reach on 2 cores, show the floor with numbers").

    .venv/bin/python bench/latency_floor.py [--repeats 5] [--json results/latency_floor.json]

1. Counts the work: the padded tokens of every batch the app's quick eval scores (the exact
   chunks and length-sorted batches coalora.eval.harness builds for the 174 SST-2 dev rows),
   and the multiply-adds of one forward: 2 x (projection weights) per token per block, plus
   attention's QK^T and AV (2 x 2 x L x hidden per token per block, L the batch's padded
   length) and the head at the last position only (logits_to_keep=1).
2. Measures this machine's bf16 matmul rate (torch, all threads) on the model's own shapes:
   (one padded batch's tokens x 576) @ (576 x 1536), the MLP's up projection, and the 2048^3
   square the issue quotes; median of --repeats.
3. Prints the floor of each target: floor = FLOPs / best measured rate, for a full forward, a
   single-block change (prefix reuse restarts at the kept boundary before the changed block:
   stride 3, block uniform over 0..29) and the first estimate (the first chunk, 8 rows).

Everything else an evaluation does (switching, θ, merging, plotting, streaming) comes on top,
so a measured time can only be above its floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name  # noqa: E402  (bench/hostinfo.py)


def matmul_rate(m: int, k: int, n: int, repeats: int) -> float:
    """GFLOP/s of a bf16 (m, k) @ (k, n), median of `repeats` timed runs after a warm-up."""
    a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
    reps = max(1, int(2e10 // (2 * m * k * n)))  # ~20 GFLOP per timed run
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        times.append((time.perf_counter() - t0) / reps)
    return 2 * m * k * n / statistics.median(times) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from transformers import AutoConfig, AutoTokenizer

    from coalora.eval import scoring
    from coalora.eval.harness import BATCH, FIRST_CHUNK, chunk_sizes, make_prompt, pad_token_id, quick_split, token_ids
    from coalora.lora.budget import current
    from coalora.models import embedded_model_dir

    folder = embedded_model_dir(quiet=True)
    cfg = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    d, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    block_weights = d * d * 2 + d * kv * 2 + d * inter * 3  # q, o; k, v; gate, up, down

    split = quick_split("sst2")
    bs, budget = BATCH["label"]
    chunks, done = [], 0
    for size in chunk_sizes(len(split)):
        rows = split.rows[done:done + size]
        done += size
        seqs = [token_ids(tok, make_prompt("sst2", r).prompt, True) for r in rows]
        batches = [[len(seqs[i]) for i in b] for b in scoring.length_batches([len(s) for s in seqs], bs, budget)]
        chunks.append([(len(b), max(b)) for b in batches])  # (rows, padded length) per batch

    def flops(batches: list[tuple[int, int]], blocks: float) -> float:
        per_block = sum(n * L * (2 * block_weights + 4 * L * d) for n, L in batches)
        head = sum(n for n, _ in batches) * 2 * d * cfg.vocab_size
        return per_block * blocks + head

    all_batches = [b for c in chunks for b in c]
    tokens = sum(n * L for n, L in all_batches)
    stride = current().prefix_stride
    # A change at block b restarts at the last kept boundary <= b: stride * floor(b / stride).
    mean_blocks = statistics.mean(layers - stride * (b // stride) for b in range(layers))
    rate_model = matmul_rate(max(L * n for n, L in all_batches), d, inter, args.repeats)
    rate_square = matmul_rate(2048, 2048, 2048, args.repeats)
    rate = max(rate_model, rate_square)
    rows = [
        ("full forward (a whole-configuration change)", flops(all_batches, layers)),
        (f"single-block change (mean over blocks, restart at stride {stride}: {mean_blocks:.1f} of {layers} blocks)",
         flops(all_batches, mean_blocks)),
        (f"first estimate ({FIRST_CHUNK} rows, the single-block mean)", flops(chunks[0], mean_blocks)),
    ]
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, " \
              f"{torch.get_num_threads()} threads"
    print(f"Machine: {machine}")
    print(f"Quick eval: {len(split)} rows, {len(all_batches)} batches in {len(chunks)} chunks, {tokens:,} padded tokens; "
          f"{block_weights:,} projection weights per block x {layers} blocks")
    print(f"bf16 matmul: {rate_model:.0f} GFLOP/s on ({max(L * n for n, L in all_batches)} x {d}) @ ({d} x {inter}), "
          f"{rate_square:.0f} GFLOP/s on 2048^3\n")
    print("| work | GFLOP | floor at the best rate (s) |\n|---|---|---|")
    for name, f in rows:
        print(f"| {name} | {f / 1e9:,.0f} | {f / 1e9 / rate:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": len(split), "tokens": tokens,
                                         "rate_gflops": {"model_shape": rate_model, "square_2048": rate_square},
                                         "floors_s": {n: f / 1e9 / rate for n, f in rows},
                                         "gflop": {n: f / 1e9 for n, f in rows}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
