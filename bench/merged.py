"""Merged inference weights vs the unmerged adapter path, side by side (issue 13).

    .venv/bin/python bench/merged.py --repeats 3

On the default checkpoint (SmolLM2-135M + the shipped CoA-LoRA adapter), nf4, dtype auto:
1. The app's quick eval (SST-2, 128 test rows), merged and unmerged ALTERNATING (the order
   flips every repeat, after one untimed warm-up of each), so load on a shared machine hits
   both alike. The merged runs include a full re-merge of all 210 layers (every layer's key
   is reset before the run, as after a whole-configuration change): what a slider move costs.
2. set_configuration, with the switcher's cache warm (re-quantizing is the same work on
   both paths; bench/switch.py times it): a one-block change (7 matrices) and a
   whole-configuration change (210), unmerged = set_configuration alone, merged =
   set_configuration + prepare_inference(bf16) (the merge the next forward would do).
Prints markdown tables with medians, min-max and the merged/unmerged ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import cpu_name  # noqa: E402  (bench/hostinfo.py)


def quick_eval_once(model, tok, merged: bool) -> tuple[float, float, float, tuple[float, ...]]:
    """-> (wall s, first estimate s, accuracy, per-row scores) of one quick eval."""
    from coalora.eval import iter_quick_eval

    model.merge_for_inference = merged
    if merged:
        for layer in model.adapted.values():
            layer.merged_key = None  # stale: the first forward re-merges all layers (buffers reused)
    t = time.perf_counter()
    first = None
    for est in iter_quick_eval(model, tok, "sst2", n=128, dtype="auto"):
        if first is None:
            first = time.perf_counter() - t
    return time.perf_counter() - t, first, est.value, est.scores


def switch_ms(model, pair, merged: bool, repeats: int, dtype) -> list[float]:
    """Alternate between the two configurations of `pair`; -> ms per switch."""
    model.merge_for_inference = merged
    times = []
    for i in range(repeats):
        c = pair[(i + 1) % 2]
        t = time.perf_counter()
        model.set_configuration(c)
        if merged:
            model.prepare_inference(dtype)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def fmt(xs: list[float], digits: int = 2) -> tuple[str, str]:
    return f"{statistics.median(xs):.{digits}f}", f"{min(xs):.{digits}f}-{max(xs):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed quick evals per path (default 3)")
    ap.add_argument("--switch-repeats", type=int, default=10, help="timed switches per path and kind (default 10)")
    ap.add_argument("--skip-eval", action="store_true", help="only part 2")
    args = ap.parse_args()

    import torch

    from coalora.eval.scoring import cpu_has_bf16, resolve_dtype
    from coalora.lora import load_for_eval
    from coalora.version import code_version

    loaded = load_for_eval("default", "smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    space = model.space
    nf4 = space.preset("nf4")
    model.set_configuration(nf4)
    dt = resolve_dtype("auto", model)
    dtype = torch.bfloat16 if dt == "bf16" else torch.float32
    print(f"# bench/merged.py  code {code_version()}  torch {torch.__version__}")
    print(f"# machine: {cpu_name()}, nproc {os.cpu_count()}, {torch.get_num_threads()} torch threads, "
          f"native bf16: {cpu_has_bf16()}, eval dtype {dt}; load average at start {os.getloadavg()[0]:.1f}")

    if not args.skip_eval:
        runs: dict[bool, list[tuple[float, float, float, tuple[float, ...]]]] = {True: [], False: []}
        for merged in (True, False):  # untimed warm-up of each path
            quick_eval_once(model, tok, merged)
        for i in range(args.repeats):
            for merged in ((True, False) if i % 2 == 0 else (False, True)):
                r = quick_eval_once(model, tok, merged)
                runs[merged].append(r)
                print(f"#   repeat {i} {'merged' if merged else 'unmerged'}: {r[0]:.2f} s (first estimate "
                      f"{r[1]:.2f} s), accuracy {r[2]}", flush=True)
        print(f"\n| quick eval, SST-2 128 rows, nf4, {dt} | median wall s | min-max | median first estimate s | accuracy |")
        print("|---|---|---|---|---|")
        for merged in (False, True):
            walls, firsts = [r[0] for r in runs[merged]], [r[1] for r in runs[merged]]
            med, rng = fmt(walls)
            print(f"| {'merged (incl. full re-merge)' if merged else 'unmerged'} | {med} | {rng} | "
                  f"{statistics.median(firsts):.2f} | {runs[merged][-1][2]} |")
        ratio = statistics.median([m[0] / u[0] for m, u in zip(runs[True], runs[False])])
        print(f"| merged / unmerged (median of per-repeat ratios) | {ratio:.2f}x | | | |")
        differ = sum(x != y for x, y in zip(runs[True][-1][3], runs[False][-1][3]))
        print(f"# rows scored differently (correct/wrong) by the two paths: {differ} of {len(runs[True][-1][3])}")

    # ---- part 2: switching -------------------------------------------------------------------
    a, b = space.sample(2, seed=0)
    block = space.matrices[0].block
    one = a.with_settings({m.name: b.setting(m.name) for m in space.matrices if m.block == block})
    for c in (a, b, one, a):  # warm the switcher's cache (2 configurations + one block)
        model.set_configuration(c)
    model.prepare_inference(dtype)
    rows = []
    for kind, pair in (("one-block change (7 matrices)", (a, one)), ("whole-configuration change (210)", (a, b))):
        res = {}
        for merged in (False, True):
            model.set_configuration(pair[0])
            model.prepare_inference(dtype)
            res[merged] = switch_ms(model, pair, merged, args.switch_repeats, dtype)
        rows.append((kind, res))
    print(f"\n| set_configuration, switcher cache warm | unmerged median ms | min-max | merged (+ prepare_inference {dt}) "
          f"median ms | min-max | ratio |")
    print("|---|---|---|---|---|---|")
    for kind, res in rows:
        u, m = res[False], res[True]
        print(f"| {kind} | {fmt(u)[0]} | {fmt(u)[1]} | {fmt(m)[0]} | {fmt(m)[1]} | "
              f"{statistics.median(m) / statistics.median(u):.1f}x |")
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
