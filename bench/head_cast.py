"""The head cast once vs by autocast in every forward, side by side (issue 13).

    .venv/bin/python bench/head_cast.py --changes 10

Two of the app's Engines on the default checkpoint in one process, one with
`CoaLoraModel.cache_head` on (the output projection kept in bf16 while merged forwards run)
and one with it off (autocast casts the fp32 head in every forward, as before). Both walk the
same one-block moves from nf4 through ui.handlers.evaluate_stream, alternating move by move
(the order flips every move), so load on a shared machine hits both alike. Prints the time
to the first streamed estimate and to the final score (p50, max) and checks that both give
the same score for every move.
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
from refit_cost import moves, timed  # noqa: E402  (the same one-block moves, timed alike)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=10, help="one-block moves per arm (default 10)")
    args = ap.parse_args()

    from coalora.version import code_version
    from ui.engine import Engine

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}; coalora {code_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    arms = {"head cast once": Engine.load("default"), "head cast every forward": Engine.load("default")}
    arms["head cast every forward"].model.cache_head = False
    nf4 = next(iter(arms.values())).space.preset("nf4")
    for engine in arms.values():
        timed(engine, nf4)  # warm: quantize, merge, fill the prefix cache, fit the GP
    times = {name: ([], []) for name in arms}
    values = {name: [] for name in arms}
    for k, cfg in enumerate(moves(next(iter(arms.values())), args.changes)):
        for name in (list(arms) if k % 2 == 0 else list(arms)[::-1]):
            first, final, value = timed(arms[name], cfg)
            times[name][0].append(first)
            times[name][1].append(final)
            values[name].append(value)
    same = values["head cast once"] == values["head cast every forward"]
    print(f"\n{args.changes} one-block moves from nf4 per arm, alternating; scores identical: {same}\n")
    print("| arm | first estimate p50 / max (s) | final p50 / max (s) |")
    print("|---|---|---|")
    for name, (firsts, finals) in times.items():
        print(f"| {name} | {statistics.median(firsts):.3f} / {max(firsts):.3f} | "
              f"{statistics.median(finals):.3f} / {max(finals):.3f} |")
    ratio = statistics.median(a / b for a, b in zip(times["head cast once"][1], times["head cast every forward"][1]))
    print(f"\nfinal, once / every forward (median of per-move ratios): {ratio:.2f}x; "
          f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\none forward of 8 rows x 40 tokens with every block's input cached (embedding, final norm, "
          f"head; median of 9, alternating): {head_only_ms(arms['head cast once'])}")
    if not same:
        sys.exit("the two arms scored differently")


def head_only_ms(engine) -> str:
    """What the head costs a forward: the prefix cache skips every block, so what is left is
    the embedding, the final norm and the head; timed with the cast once and every forward."""
    import torch

    m, ids = engine.model, torch.randint(0, 1000, (8, 40), generator=torch.Generator().manual_seed(0))
    times = {True: [], False: []}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(input_ids=ids, use_cache=False, logits_to_keep=1)  # fills the prefix cache for this batch
        for k in range(18):
            m.cache_head = k % 2 == 0
            t = time.perf_counter()
            m(input_ids=ids, use_cache=False, logits_to_keep=1)
            times[m.cache_head].append(1e3 * (time.perf_counter() - t))
    m.cache_head = True
    return f"cast once {statistics.median(times[True]):.1f} ms, every forward {statistics.median(times[False]):.1f} ms"


if __name__ == "__main__":
    main()
