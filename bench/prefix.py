"""Prefix reuse vs full forwards, side by side (issue 13), and the app's memory.

    .venv/bin/python bench/prefix.py --repeats 3 --blocks 0 10 20 29
    .venv/bin/python bench/prefix.py --rss        # the app's engine: resident memory per evaluation

On the default checkpoint (SmolLM2-135M + the shipped CoA-LoRA adapter), dtype auto (bf16
where the CPU has it), the quick eval (SST-2, 128 test rows) of a configuration reached from
nf4 by
- a single-block change: block b's 7 matrices get nf3's settings (one slider move);
- a whole-configuration change: nf4 -> nf3 (every block differs: nothing to reuse, the
  boundaries are recorded);
- back and forth: nf4 <-> nf4 with block 20 moved, both evaluated before (every block
  skipped; the default budget holds one whole configuration plus slider suffixes, not two
  whole configurations).
With reuse, each repeat starts from an empty prefix cache and an untimed quick eval of nf4
(as in the app, the previous configuration was evaluated), then the target is timed. Without
reuse (`prefix_reuse = False`) the same target is timed from nf4. The two paths alternate
(order flipped every repeat). set_configuration (switcher cache warm for one block) is timed
separately; the eval wall time includes re-merging the changed layers (bf16). Prints a
markdown table with medians, min-max and the reuse/full ratio, and checks that both paths
score every row identically.
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
from merged import fmt  # noqa: E402  (bench/merged.py)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB (10^6 bytes)."""
    got = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            got[k] = int(v.split()[0]) * 1024 / 1e6
    return got.get("VmRSS", float("nan")), got.get("VmHWM", float("nan"))


def quick_eval(model, tok) -> tuple[float, float, tuple[float, ...]]:
    """-> (wall s, accuracy, per-row scores)."""
    from coalora.eval import iter_quick_eval

    t = time.perf_counter()
    for est in iter_quick_eval(model, tok, "sst2", n=128, dtype="auto"):
        pass
    return time.perf_counter() - t, est.value, est.scores


def one_block(space, base, donor, block: int):
    return base.with_settings({m.name: donor.setting(m.name) for m in space.matrices if m.block == block})


def timed(model, tok, start, target, reuse: bool) -> tuple[float, float, float, tuple[float, ...], int]:
    """-> (set_configuration ms, eval s, accuracy, scores, "blocks skipped/blocks in all forwards")."""
    model.prefix_reuse = reuse
    model.set_configuration(start)
    if reuse:
        model.clear_prefix()
        quick_eval(model, tok)  # the previous configuration, evaluated (untimed)
    st = model.prefix.stats
    skipped0, run0 = st["blocks_skipped"], st["blocks_run"]
    t = time.perf_counter()
    model.set_configuration(target)
    set_ms = (time.perf_counter() - t) * 1e3
    wall, acc, scores = quick_eval(model, tok)
    return set_ms, wall, acc, scores, f"{st['blocks_skipped'] - skipped0}/{st['blocks_skipped'] - skipped0 + st['blocks_run'] - run0}"


def bench(args) -> None:
    import torch

    from coalora.eval.scoring import cpu_has_bf16, resolve_dtype
    from coalora.lora import load_for_eval
    from coalora.version import code_version

    loaded = load_for_eval("default", "smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    space = model.space
    nf4, nf3 = space.preset("nf4"), space.preset("nf3")
    model.set_configuration(nf4)
    dt = resolve_dtype("auto", model)
    print(f"# bench/prefix.py  code {code_version()}  torch {torch.__version__}")
    print(f"# machine: {cpu_name()}, nproc {os.cpu_count()}, {torch.get_num_threads()} torch threads, "
          f"native bf16: {cpu_has_bf16()}, eval dtype {dt}; prefix budget {model.prefix.budget_bytes >> 20} MiB, "
          f"stride {model.prefix.stride}; load average at start {os.getloadavg()[0]:.1f}")
    cases = [(f"block {b} -> nf3", nf4, one_block(space, nf4, nf3, b)) for b in args.blocks]
    cases.append(("whole configuration nf4 -> nf3", nf4, nf3))
    for _, s, t in cases:  # warm the switcher's cache for the single blocks, and both paths
        model.set_configuration(t)
    model.prefix_reuse = False
    quick_eval(model, tok)
    rows = []
    for name, start, target in cases:
        res: dict[bool, list] = {True: [], False: []}
        for i in range(args.repeats):
            for reuse in ((True, False) if i % 2 == 0 else (False, True)):
                res[reuse].append(timed(model, tok, start, target, reuse))
        r, f = res[True], res[False]
        differ = sum(x != y for x, y in zip(r[-1][3], f[-1][3]))
        print(f"#   {name}: reuse {[round(x[1], 2) for x in r]} s, full {[round(x[1], 2) for x in f]} s, "
              f"blocks skipped {r[-1][4]}, accuracy {r[-1][2]} / {f[-1][2]}, "
              f"rows differing {differ}; load {os.getloadavg()[0]:.1f}", flush=True)
        rows.append((name, r, f, differ))
    # a return to the configuration before a slider move: nf4 -> block 20 moved -> nf4 (both cached)
    model.prefix_reuse = True
    model.clear_prefix()
    moved = one_block(space, nf4, nf3, 20)
    for c in (nf4, moved):
        model.set_configuration(c)
        quick_eval(model, tok)
    back = []
    for i in range(args.repeats):
        model.set_configuration(nf4 if i % 2 == 0 else moved)
        back.append(quick_eval(model, tok)[0])
    print(f"\n| quick eval after the change, SST-2 128 rows, {dt} | full forwards median s | min-max | "
          f"prefix reuse median s | min-max | reuse / full | rows scored differently |")
    print("|---|---|---|---|---|---|---|")
    for name, r, f, differ in rows:
        fw, rw = [x[1] for x in f], [x[1] for x in r]
        ratio = statistics.median([a / b for a, b in zip(rw, fw)])
        print(f"| {name} | {fmt(fw)[0]} | {fmt(fw)[1]} | {fmt(rw)[0]} | {fmt(rw)[1]} | {ratio:.2f}x | {differ} |")
    print(f"| back and forth: nf4 <-> block 20 moved, both evaluated before | | | {fmt(back)[0]} | {fmt(back)[1]} | | |")
    sets = [x[0] for _, r, f, _ in rows[:-1] for x in r + f]
    print(f"# set_configuration for a one-block change (switcher cache warm): median {statistics.median(sets):.1f} ms")
    print(f"# prefix cache at the end: {len(model.prefix)} boundaries, {model.prefix.nbytes / 1e6:.0f} MB; "
          f"stats {model.prefix.stats}; load average at the end {os.getloadavg()[0]:.1f}")


def rss(args) -> None:
    """Resident memory of the app's engine (gradio imported, as app.py does) over evaluations:
    nf4, single-block moves on several blocks, a whole change to nf3, back to nf4."""
    import gradio  # noqa: F401  (the app imports it: counted)
    import torch

    from ui.engine import Engine

    print(f"# bench/prefix.py --rss  torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"after imports: {rss_mb()[0]:.0f} MB")
    engine = Engine.load("default")
    print(f"# engine loaded: {rss_mb()[0]:.0f} MB")
    space = engine.space
    nf4, nf3 = space.preset("nf4"), space.preset("nf3")
    seq = [("nf4", nf4)]
    cur = nf4
    for b in args.blocks:
        cur = one_block(space, cur, nf3, b)
        seq.append((f"block {b} -> nf3", cur))
    seq += [("whole nf3", nf3), ("back to nf4", nf4), ("block 5 -> nf3", one_block(space, nf4, nf3, 5)),
            ("block 25 -> nf3", one_block(space, nf4, nf3, 25))]
    print("\n| evaluation | wall s | RSS MB after | peak RSS MB so far | prefix cache MB | switcher cache MB |")
    print("|---|---|---|---|---|---|")
    for name, c in seq:
        t = time.perf_counter()
        rec = engine.evaluate_final(c)
        now, peak = rss_mb()
        m = engine.model
        print(f"| {name} | {time.perf_counter() - t:.2f} | {now:.0f} | {peak:.0f} | {m.prefix.nbytes / 1e6:.0f} | "
              f"{m.switcher._cached_bytes / 1e6:.0f} |  acc {rec.value}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed quick evals per path and case (default 3)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29], help="blocks to move (default 0 10 20 29)")
    ap.add_argument("--rss", action="store_true", help="measure the app engine's resident memory instead")
    args = ap.parse_args()
    rss(args) if args.rss else bench(args)


if __name__ == "__main__":
    main()
