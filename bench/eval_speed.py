"""Speed of the evaluation harness on the real default model (not a test; prints tables).

    .venv/bin/python bench/eval_speed.py                  # ~3-5 min on 2 idle cores
    .venv/bin/python bench/eval_speed.py --repeats 3 --mc-rows 16

1. Harness vs a naive loop (one unpadded forward of context+continuation per choice, fp32
   and bf16 alike) on the same PIQA / HellaSwag rows: tokens per second, where tokens =
   sum over choices of len(context) + len(continuation) for both, so the ratio is a speed-up.
2. The default quick eval (SST-2, 128 rows of the test part): wall time of the whole eval
   and time to the first streamed estimate, median of --repeats runs after one warm-up,
   in bf16 (autocast) and fp32. Targets (issue 4): < 1.5 s bf16, first estimate < 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name  # noqa: E402  (bench/hostinfo.py)


def mc_speed(model, tok, task: str, rows: int, dtype: str) -> tuple[int, float, float, int]:
    """-> (tokens, harness seconds, naive seconds, disagreements in predicted choice)."""
    from coalora.data import load_split
    from coalora.eval import iter_eval
    from coalora.eval import scoring
    from coalora.eval.prompts import make_prompt

    split = load_split(task, "test").head(rows)
    prompts = [make_prompt(task, r) for r in split.rows]
    ctxs = [tok(p.contexts[0])["input_ids"] for p in prompts]
    conts = [[tok(x, add_special_tokens=False)["input_ids"] for x in p.continuations] for p in prompts]
    tokens = sum(len(c) * len(xs) + sum(len(x) for x in xs) for c, xs in zip(ctxs, conts))
    t = time.perf_counter()
    est = next(iter(iter_eval(model, tok, split, dtype=dtype, stream=False)))
    fast = time.perf_counter() - t
    t = time.perf_counter()
    with scoring.compute_context(dtype, scoring.model_device(model)):
        naive = scoring.naive_choice_logprobs(model, ctxs, conts)
    slow = time.perf_counter() - t
    naive_correct = []
    for p, s in zip(prompts, naive):
        norm = [float(v) / len(x.encode()) for v, x in zip(s, p.continuations)]
        naive_correct.append(float(max(range(len(norm)), key=norm.__getitem__) == p.label))
    disagree = sum(a != b for a, b in zip(est.scores, naive_correct))
    return tokens, fast, slow, disagree


def quick_times(model, tok, dtype: str, repeats: int) -> tuple[list[float], list[float], float]:
    from coalora.eval import iter_quick_eval

    totals, firsts, value = [], [], float("nan")
    for i in range(repeats + 1):  # the first run warms up (allocator, kernels) and is dropped
        t = time.perf_counter()
        first = None
        for est in iter_quick_eval(model, tok, "sst2", n=128, dtype=dtype):
            if first is None:
                first = time.perf_counter() - t
        total = time.perf_counter() - t
        value = est.value
        if i:
            totals.append(total)
            firsts.append(first)
    return totals, firsts, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mc-rows", type=int, default=32)
    ap.add_argument("--mc-tasks", nargs="*", default=["piqa", "hellaswag"], help="none: skip part 1")
    args = ap.parse_args()

    import torch

    from coalora.eval.scoring import cpu_has_bf16
    from coalora.models import load_model

    model, tok = load_model("smollm2-135m")
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, native bf16: {cpu_has_bf16()}; "
          f"torch {torch.__version__}\n")

    print(f"| rows | precision | tokens | harness tok/s | naive tok/s | speed-up | predictions differing |")
    print("|---|---|---|---|---|---|---|")
    for task in args.mc_tasks:
        for dtype in ("bf16", "fp32"):
            tokens, fast, slow, diff = mc_speed(model, tok, task, args.mc_rows, dtype)
            print(f"| {task} x{args.mc_rows} | {dtype} | {tokens} | {tokens / fast:.0f} | {tokens / slow:.0f} | "
                  f"{slow / fast:.1f}x | {diff} |", flush=True)

    print(f"\n| quick eval (SST-2, 128 rows) | median wall s | min-max | median first estimate s | accuracy |")
    print("|---|---|---|---|---|")
    for dtype in ("bf16", "fp32"):
        totals, firsts, value = quick_times(model, tok, dtype, args.repeats)
        print(f"| {dtype} | {statistics.median(totals):.2f} | {min(totals):.2f}-{max(totals):.2f} | "
              f"{statistics.median(firsts):.2f} | {value:.3f} |", flush=True)


if __name__ == "__main__":
    main()
