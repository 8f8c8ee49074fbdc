"""How the streamed chunks of the quick eval cost a one-block slider move (issue 13, item 3).

    .venv/bin/python bench/stream_chunks.py [--blocks 2 14 26] [--repeats 2]

On the default checkpoint, the app's quick eval (174 SST-2 dev rows, dtype auto, prefix reuse
and merged weights as in the app): for each block b, nf4 is evaluated (untimed, filling the
prefix cache as the previous slider position would have), then nf4 with block b's 7 matrices
at 3 bits is timed: the first estimate's time and the final score's. Each chunk policy is run
with the same cache state (cleared, then nf4), policies alternate within each repeat:
- "doubling": 8, 16, 32, 64, 54 rows (coalora before this bench);
- "first + rest": 8, 166 (harness.chunk_sizes now);
- "first + 40 + rest": 8, 40, 126.
Prints a markdown table of medians and checks that every policy gives the same accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POLICIES = {"doubling (8, 16, 32, 64, 54)": [8, 16, 32, 64, 54], "first + rest (8, 166)": [8, 166],
            "first + 40 + rest (8, 40, 126)": [8, 40, 126]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 14, 26])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    import coalora.eval.harness as harness
    from coalora.lora import load_for_eval

    loaded = load_for_eval("default", "smollm2-135m", dtype=torch.float32, quiet=True)
    model, tok = loaded.model, loaded.tokenizer
    split = harness.quick_split("sst2")
    nf4 = model.space.preset("nf4")
    original = harness.chunk_sizes

    def run(config, sizes: list[int]) -> tuple[float, float, float]:
        assert sum(sizes) == len(split)
        harness.chunk_sizes = lambda n, first=8, cap=256: sizes  # noqa: E731  (the policy under test)
        try:
            model.set_configuration(config)
            t0 = time.perf_counter()
            ests = list(harness.iter_eval(model, tok, split, stream=True))
            return ests[0].seconds, time.perf_counter() - t0, ests[-1].value
        finally:
            harness.chunk_sizes = original

    times: dict[tuple[int, str], list[tuple[float, float]]] = {}
    values: dict[int, set] = {}
    for b in args.blocks:
        edit = nf4.with_settings({m.name: replace(nf4.settings[i], bits=3)
                                  for i, m in enumerate(model.space.matrices) if m.block == b})
        for rep in range(args.repeats):
            order = list(POLICIES.items())
            order = order if rep % 2 == 0 else order[::-1]
            for name, sizes in order:
                model.clear_prefix()
                run(nf4, sizes)
                first, final, value = run(edit, sizes)
                times.setdefault((b, name), []).append((first, final))
                values.setdefault(b, set()).add(round(value, 6))
                print(f"block {b} {name}: first {first:.2f} s, final {final:.2f} s, accuracy {value:.4f}",
                      file=sys.stderr, flush=True)
    print(f"| block changed | chunks | first estimate s (median of {args.repeats}) | final s | final / doubling |")
    print("|---|---|---|---|---|")
    for b in args.blocks:
        base = statistics.median(t[1] for t in times[(b, next(iter(POLICIES)))])
        for name in POLICIES:
            first = statistics.median(t[0] for t in times[(b, name)])
            final = statistics.median(t[1] for t in times[(b, name)])
            print(f"| {b} | {name} | {first:.2f} | {final:.2f} | {final / base:.2f} |")
    same = all(len(v) == 1 for v in values.values())
    print(f"\nsame accuracy under every policy: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
