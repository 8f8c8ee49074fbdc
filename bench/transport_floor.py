"""What gradio + gradio_client alone cost per streamed API call (issue 13, the first-estimate target).

    .venv/bin/python bench/transport_floor.py --calls 40

Serves, in this process, a gradio app with ONE streamed API endpoint named /evaluate that does
no work: it yields a first and a final result-record-shaped JSON at once. Then times calls to it
exactly as bench/app_latency.py times the real app (its `timed`: submit, poll every 10 ms,
time to the first streamed output and to the final one). Whatever the real app's first estimate
takes beyond these numbers is the app's own work (model, configuration switch, GP prediction).

Prints the machine and a markdown table (p50 / p90 / max of first and final, ms); --json PATH
also writes every timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

from app_latency import machine, pct, timed  # bench/ is sys.path[0] when run as a script


def serve():
    """An app with one no-op streamed /evaluate (queued as the real app: default_concurrency_limit 1)."""
    import gradio as gr

    record = {"n": 8, "value": 0.5, "extra": {"done": False}}

    def evaluate(configuration: str) -> Iterator[str]:  # typed: gr.api reads its outputs from the hints
        yield json.dumps(record)
        yield json.dumps({**record, "n": 174, "extra": {"done": True}})

    with gr.Blocks() as demo:
        gr.api(evaluate, api_name="evaluate", concurrency_limit=4, concurrency_id="eval")
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, server_name="127.0.0.1",
                                                   server_port=None, quiet=True)
    return demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="timed calls (after 3 warm-up calls)")
    ap.add_argument("--json", default=None, help="also write every timing here")
    args = ap.parse_args()
    from gradio_client import Client

    demo = serve()
    try:
        client = Client(demo.local_url, verbose=False)
        for _ in range(3):
            timed(client, "nf4", 30)
        runs = [timed(client, "nf4", 30) for _ in range(args.calls)]
    finally:
        demo.close()
    bad = [r for r in runs if r["status"] != "ok"]
    first = [r["first"] for r in runs if r["status"] == "ok"]
    final = [r["final"] for r in runs if r["status"] == "ok"]
    print("\n".join(machine()))
    print(f"\n{len(first)} no-op streamed calls through gradio_client ({len(bad)} errors), ms:\n")
    print("| | p50 | p90 | max |")
    print("|---|---|---|---|")
    for name, xs in (("first output", first), ("final output", final)):
        print(f"| {name} | {1000 * statistics.median(xs):.0f} | {1000 * pct(xs, 0.9):.0f} | {1000 * max(xs):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"calls": runs, "machine": machine(), "when": time.time()}, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
