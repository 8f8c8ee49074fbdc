"""Where one app evaluation spends its time outside the model forward (issue 13, item 3).

    .venv/bin/python bench/app_overhead.py --evals 4

Builds the app's Engine on the default checkpoint (no browser, no gradio server) and runs
ui.handlers.evaluate_stream for nf4, then for --evals - 1 one-block slider moves, timing each
piece by wrapping it (ui/ is not modified): the scoring of each chunk (iter_eval's next, which
includes the merge of changed layers), model.set_configuration, the GP prediction,
ResultRecord.from_estimate / to_dict, and the handlers' figure / status_line / table. Prints
the time to the first measured estimate (in-process; the GP-prediction update before it is not one) and one markdown table
per evaluation: calls, total ms, max ms.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T: dict[str, list[float]] = collections.defaultdict(list)
SCORING = "scoring, per chunk (iter_eval next; incl. merging)"


def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            T[name].append(time.perf_counter() - t)
    return wrapper


def instrument() -> None:
    import coalora.eval as ce
    import coalora.results as cr
    import ui.handlers as H
    from ui.state import SessionState

    orig = ce.iter_eval

    def iter_eval(*a, **k):  # Engine.evaluate imports coalora.eval.iter_eval at call time
        it = orig(*a, **k)
        while True:
            t = time.perf_counter()
            est = next(it, None)
            T[SCORING].append(time.perf_counter() - t)
            if est is None:
                return
            yield est

    ce.iter_eval = iter_eval
    fe = cr.ResultRecord.from_estimate.__func__
    cr.ResultRecord.from_estimate = classmethod(lambda cls, *a, **k: timed("ResultRecord.from_estimate", fe)(cls, *a, **k))
    cr.ResultRecord.to_dict = timed("ResultRecord.to_dict", cr.ResultRecord.to_dict)
    for n in ("figure", "status_line", "table"):
        setattr(H, n, timed(f"handlers.{n}", getattr(H, n)))
    SessionState.add_point = timed("state.add_point", SessionState.add_point)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=4)
    args = ap.parse_args()
    instrument()
    import ui.handlers as H
    from ui.engine import Engine
    from ui.state import SessionState

    t0 = time.perf_counter()
    engine = Engine.load("default")
    print(f"# Engine.load {time.perf_counter() - t0:.1f} s, dtype {engine.dtype}")
    engine.predict = timed("engine.predict (GP)", engine.predict)
    engine.model.set_configuration = timed("model.set_configuration", engine.model.set_configuration)
    state, space = SessionState(), engine.space
    cfg = space.preset("nf4")
    for step in range(args.evals):
        if step:
            block = (step * 7) % space.n_blocks
            cfg = H.with_bits(cfg, {m.name: (2, 3, 8)[step % 3] for m in space.matrices if m.block == block})
        state.config = cfg.encode().tolist()
        T.clear()
        t = time.perf_counter()
        first, yields = None, 0
        for _ in H.evaluate_stream(engine, state):
            yields += 1
            if state.current is not None:  # a measured estimate, not the GP's prediction shown before it
                first = first or time.perf_counter() - t  # what the first streamed estimate waits for
        wall = time.perf_counter() - t
        outside = wall - sum(T[SCORING]) - sum(T["model.set_configuration"])
        print(f"\n{'nf4 (first evaluation)' if not step else 'one block changed'}: wall {wall:.2f} s, first estimate "
              f"{first * 1e3:.0f} ms (first chunk scoring {T[SCORING][0] * 1e3:.0f} ms), {yields} yields, "
              f"outside scoring and set_configuration {outside * 1e3:.0f} ms")
        print("| piece | calls | total ms | max ms |\n|---|---|---|---|")
        for k, v in sorted(T.items(), key=lambda kv: -sum(kv[1])):
            print(f"| {k} | {len(v)} | {sum(v) * 1e3:.1f} | {max(v) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
