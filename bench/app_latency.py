"""Latency of the running app through gradio_client (issue 7 item 12).

    python app.py &                                  # or any running coalora app
    .venv/bin/python bench/app_latency.py --url http://127.0.0.1:7860 --changes 20

Each change is what a user does with one block slider: the previous configuration with one
block's weight bits changed (cycling blocks and 2/3/8 bits from nf4), sent to /evaluate.
Measured: time to the first streamed estimate and to the final quick-eval result, p50 / p95,
with 1 client, then with 4 clients at once (each sending its own sequence of changes).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time


def changes(space_json: str, n: int, offset: int) -> list[str]:
    """n configuration JSON texts: nf4 with one more block changed each time."""
    from coalora.models import build_space_for

    cfg = json.loads(space_json)
    space = build_space_for(cfg["model"])
    config = space.from_dict(cfg)
    out = []
    for k in range(n):
        block = (k * 7 + offset * 11) % space.n_blocks
        bits = (2, 3, 8)[(k + offset) % 3]
        config = config.with_settings({m.name: config.setting(m.name).replace(bits=bits)
                                       for m in space.matrices if m.block == block})
        out.append(config.to_json())
    return out


def timed(client, text: str) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    job = client.submit(text, api_name="/evaluate")
    first = None
    last = None
    for out in job:
        if first is None:
            first = time.perf_counter() - t0
        last = json.loads(out)
    return first, time.perf_counter() - t0, last["n"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    from gradio_client import Client

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()

    base = Client(args.url, verbose=False).predict(4.127, "fast", api_name="/allocate")
    rows = []
    for n_clients in sorted({1, args.clients}):
        seqs = [changes(base, args.changes, c) for c in range(n_clients)]
        res: list[tuple[float, float, int]] = []
        lock = threading.Lock()

        def run(c: int) -> None:
            client = Client(args.url, verbose=False)
            for text in seqs[c]:
                r = timed(client, text)
                with lock:
                    res.append(r)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        first, final = [r[0] for r in res], [r[1] for r in res]
        rows.append((n_clients, len(res), res[0][2], statistics.median(first), pct(first, 0.95),
                     statistics.median(final), pct(final, 0.95), wall))
    print("| clients | changes | rows | first estimate p50 (s) | p95 (s) | final p50 (s) | p95 (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.1f} |")


if __name__ == "__main__":
    main()
