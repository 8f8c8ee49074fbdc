"""What the app's GP learning costs a slider move, in-process (issue 13).

    .venv/bin/python bench/refit_cost.py --changes 12

Builds the app's Engine on the default checkpoint three times in one process: without an
observations file (the GP never refits); with one and REFIT_GRACE_S = 0 (every final point is
an observation and its background refit starts as soon as the evaluation has ended, as before
refits waited); with one and the app's REFIT_GRACE_S (coalora.search.predictor: a refit waits
until no evaluation has run for that long). Each runs the same --changes back-to-back one-block
moves from nf4 through ui.handlers.evaluate_stream and records the time to the first streamed
estimate and to the final score. Prints a markdown table (p50 and max, seconds) and the
number of refits made during the moves, then the time of one refit alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def moves(engine, n: int):
    """n configurations: from nf4, one more block's bits changed each step (2, 3, 8 in turn)."""
    import ui.handlers as H

    cfg = engine.space.preset("nf4")
    for step in range(1, n + 1):
        block = (step * 7) % engine.space.n_blocks
        cfg = H.with_bits(cfg, {m.name: (2, 3, 8)[step % 3] for m in engine.space.matrices if m.block == block})
        yield cfg


def timed(engine, cfg) -> tuple[float, float, float]:
    """One app evaluation of `cfg` (ui.handlers.evaluate_stream) -> (first estimate s, final s,
    final value)."""
    import ui.handlers as H
    from ui.state import SessionState

    state = SessionState(config=cfg.encode().tolist())
    t, first = time.perf_counter(), None
    for _ in H.evaluate_stream(engine, state):
        if state.current is not None:  # a measured estimate, not the GP's prediction shown before it
            first = first or time.perf_counter() - t
    return first, time.perf_counter() - t, state.points[-1]["value"]


def run(learn: bool, n: int) -> dict:
    from ui.engine import Engine

    obs = Path(tempfile.mkdtemp(prefix="refit-cost-")) / "observations.jsonl" if learn else None
    engine = Engine.load("default", observations=obs)
    nf4 = engine.space.preset("nf4")
    timed(engine, nf4)  # warm: quantize, merge, first fit
    refit_s = None
    if learn:  # the warm point's refit, timed alone: what one refit costs
        t = time.perf_counter()
        engine.predictor.refit(wait=True)
        refit_s = time.perf_counter() - t
    before = engine.predictor.refits
    firsts, finals = [], []
    for cfg in moves(engine, n):
        first, final, _ = timed(engine, cfg)
        firsts.append(first)
        finals.append(final)
    return {"first": firsts, "final": finals, "refits": engine.predictor.refits - before, "refit_s": refit_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=12)
    args = ap.parse_args()
    import coalora.search.predictor as P

    grace = P.REFIT_GRACE_S
    rows = [("no learning (no observations file)", run(False, args.changes))]
    P.REFIT_GRACE_S = 0.0  # a refit as soon as the evaluation has ended: the behaviour before the wait
    rows.append(("learning, refit right after each point", run(True, args.changes)))
    P.REFIT_GRACE_S = grace
    rows.append((f"learning, refit after {grace:g} s without an evaluation (the app)", run(True, args.changes)))
    print(f"\n{args.changes} one-block moves each, back to back, in-process (Engine + handlers, default "
          "checkpoint), seconds:\n")
    print("| run | first estimate p50 / max | final p50 / max | refits during the moves |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {statistics.median(r['first']):.3f} / {max(r['first']):.3f} | "
              f"{statistics.median(r['final']):.3f} / {max(r['final']):.3f} | {r['refits']} |")
    print(f"\none GP refit alone (the warm point's, learning runs): "
          + ", ".join(f"{r['refit_s']:.3f} s" for _, r in rows if r["refit_s"] is not None))


if __name__ == "__main__":
    main()
