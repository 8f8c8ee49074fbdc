"""Latency of a running coalora app through its API (gradio_client), issue 7.

    .venv/bin/python app.py &                            # or any running coalora app
    .venv/bin/python bench/app_latency.py --url http://127.0.0.1:7860

What one "change" is: what a user does with one block slider. Each client starts from nf4
and changes one block's weight bits per step (cycling blocks and 2/3/8 bits; every client
walks its own sequence), sending the new configuration to /evaluate and reading the stream.
Measured per change: time to the first streamed estimate and to the final quick-eval result.
With --kind whole a change is a whole new configuration instead: a preset (every third
change) or the allocation at a budget no other change of the run asks for (/allocate, then
/evaluate, timed together as the app's budget slider runs them).

Scenarios: --clients 1,4 (default) runs --changes changes (default 20) with 1 client, then the
same number of changes spread over 4 concurrent clients (5 each). The app shares one model,
so concurrent clients queue on it: their latencies include waiting for the others.
--in-sequence then also sends the very same changes from one client, one after another
(`--clients 8 --changes 8 --in-sequence`: 8 concurrent evaluations against the same 8 in
sequence, compared by wall time).

Robustness: every change has a deadline (--timeout; a late one is cancelled and counted as a
timeout), the whole run has a budget (--budget; no new change starts after it, and the table
says how many changes were done), errors are counted, not fatal. Run time with the defaults
on the 2-core project machine: 1 warm-up + 20 + 20 quick evals of ~6 s each when the machine
is idle, plus configuration switches between the 4 clients' evaluations: an estimated 4-8
minutes, at most --budget (9 minutes) plus the changes then in flight. Smoke run (--changes 2 --clients 1,2) with the
machine busy (load average 4.6): a quick eval took 14 s.

Prints the machine, the app's model / dtype / rows (from the first record), then a markdown
table; --json PATH also writes every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

from hostinfo import cpu_name  # bench/hostinfo.py (bench/ is sys.path[0] when run as a script)

POLL_S = 0.01  # how often a client looks at its job's outputs (the first-estimate resolution)


def space_of(model: str):
    """The ConfigSpace of the app's model (from its config; no weights)."""
    from coalora.models import build_space_for

    return build_space_for(model)


def changes(space, n: int, offset: int) -> list[str]:
    """n configuration JSON texts: from nf4, one more block changed at each step."""
    config = space.preset("nf4")
    out = []
    for k in range(n):
        block = (k * 7 + offset * 11) % space.n_blocks
        bits = (2, 3, 8)[(k + offset) % 3]
        config = config.with_settings({m.name: config.setting(m.name).replace(bits=bits)
                                       for m in space.matrices if m.block == block})
        out.append(config.to_json())
    return out


WHOLE_PRESETS = ("nf3", "nf8", "nf2", "max", "min")


def whole_changes(n: int, offset: int) -> list[str | float]:
    """n whole-configuration changes: every third a preset (in turn), the others a budget in
    average bits per weight for the app's allocator, spread over [2.2, 8.5) by the golden
    ratio so that no two changes of the run (any client) ask for the same budget."""
    out: list[str | float] = []
    for k in range(n):
        if k % 3 == 2:
            out.append(WHOLE_PRESETS[(k // 3 + offset) % len(WHOLE_PRESETS)])
        else:
            out.append(round(2.2 + 6.3 * (((offset + 1) * 0.754877 + k * 0.618034) % 1.0), 3))
    return out


def timed(client, change: str | float, timeout: float) -> dict:
    """One change: submit, poll the stream -> {first, final, n, status, ...} (seconds).
    change: a configuration JSON text or preset name for /evaluate, or a budget (float): then
    /allocate first, as the app's budget slider does, and the clock includes it."""
    t0 = time.perf_counter()
    first = None
    try:
        text = client.predict(change, "fast", api_name="/allocate") if isinstance(change, float) else change
        job = client.submit(text, api_name="/evaluate")
        while not job.done():
            if first is None and job.outputs():
                first = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                job.cancel()
                return {"status": "timeout", "first": first, "final": None}
            time.sleep(POLL_S)
        outs = job.outputs()
        if first is None and outs:
            first = time.perf_counter() - t0  # the whole stream arrived between two polls
        final = time.perf_counter() - t0
        job.result()  # raises the app's error, if any
        rec = json.loads(outs[-1])
        if not rec.get("extra", {}).get("done"):
            return {"status": "error: stream ended before the final record", "first": first, "final": final}
        return {"status": "ok", "first": first, "final": final, "n": rec["n"], "value": rec["value"],
                "change": change if isinstance(change, float) or change in WHOLE_PRESETS else "one block",
                "dtype": rec.get("dtype"), "model": rec.get("model"), "method": rec.get("method"),
                "chunks": len(outs), "config_hash": rec.get("config_hash")}
    except Exception as e:  # noqa: BLE001 - an error is a result here, not the end of the run
        return {"status": f"error: {type(e).__name__}: {e}"[:300], "first": first, "final": None}


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1])."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def machine() -> list[str]:
    cpu = cpu_name()
    mem = "?"
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    import gradio_client

    from coalora.version import code_version

    return [f"machine: {cpu}, {os.cpu_count()} logical CPUs, {mem} RAM, {platform.system()} {platform.release()}",
            f"python {platform.python_version()}, gradio_client {gradio_client.__version__}, coalora {code_version()}",
            f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
            "(this client runs on the same machine as the app unless --url points elsewhere)"]


def run_scenario(url: str, space, n_clients: int, n_changes: int, timeout: float, deadline: float,
                 kind: str = "block", in_sequence: bool = False) -> dict:
    """n_changes spread over n_clients concurrent clients; in_sequence: the very same changes
    (the same per-client sequences) sent by ONE client, one after another."""
    from gradio_client import Client

    per = [n_changes // n_clients + (1 if c < n_changes % n_clients else 0) for c in range(n_clients)]
    seqs = [changes(space, per[c], c) if kind == "block" else whole_changes(per[c], c) for c in range(n_clients)]
    if in_sequence:
        seqs = [[change for seq in seqs for change in seq]]
    res: list[dict] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001
            with lock:
                res.extend({"status": f"error: client: {e}"[:300], "first": None, "final": None, "client": c}
                           for _ in seqs[c])
            return
        for k, text in enumerate(seqs[c]):
            if time.monotonic() > deadline:
                return  # the run's budget is spent: the table counts what was done
            r = timed(client, text, timeout)
            r.update(client=c, step=k)
            with lock:
                res.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:  # each change ends by its own timeout; allow the last one in flight to finish
        t.join(max(1.0, deadline - time.monotonic()) + timeout + 30)
    return {"clients": f"{n_clients} in sequence" if in_sequence else n_clients, "kind": kind, "asked": n_changes, "results": list(res), "wall": time.perf_counter() - t0,
            "unfinished_threads": sum(t.is_alive() for t in threads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--changes", type=int, default=20, help="configuration changes per scenario, spread over its "
                                                            "clients (default 20)")
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts, one scenario each (default 1,4)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one change may take (default 120)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run: no change starts after "
                                                                "it (default 540)")
    ap.add_argument("--kind", choices=("block", "whole"), default="block",
                    help="block: each change moves one block's bits (a slider); whole: each change is a whole "
                         "configuration, a preset or an allocation at a new budget (/allocate, then /evaluate; "
                         "the clock includes both) (default block)")
    ap.add_argument("--in-sequence", action="store_true",
                    help="after each scenario with more than one client, send the very same changes again from one "
                         "client, one after another (issue 13: concurrent evaluations should take no longer than "
                         "the same evaluations in sequence)")
    ap.add_argument("--sequence-first", action="store_true",
                    help="with --in-sequence: the one-client run first (the second run finds the first's cache "
                         "entries; run both orders, each on a fresh app)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed evaluations of nf4 first (default 1)")
    ap.add_argument("--model", default=None, help="the app's model (default: read from the app's /allocate answer)")
    ap.add_argument("--json", type=Path, default=None, help="also write every timing to this JSON file")
    args = ap.parse_args()
    try:
        clients = sorted({int(x) for x in args.clients.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--clients {args.clients!r}: give comma-separated integers such as 1,4")
    if not clients or min(clients) < 1 or args.changes < 1:
        ap.error("--clients and --changes must be at least 1")

    from gradio_client import Client

    t_start = time.monotonic()
    deadline = t_start + args.budget
    for line in machine():
        print(line)
    print(f"app: {args.url}; scenarios: {args.changes} {args.kind} changes with {', then '.join(map(str, clients))} client(s); "
          f"timeout {args.timeout:g} s per change, budget {args.budget:g} s", flush=True)
    try:
        base = Client(args.url, verbose=False)
        model = args.model or json.loads(base.predict(4.127, "fast", api_name="/allocate"))["model"]
    except Exception as e:  # noqa: BLE001
        sys.exit(f"cannot reach the app at {args.url} or learn its model (give --model): {type(e).__name__}: {e}")
    space = space_of(model)
    for _ in range(args.warmup):  # untimed: nf4, where every client's sequence starts
        w = timed(base, space.preset("nf4").to_json(), args.timeout)
        if w["status"] != "ok":
            print(f"warm-up: {w['status']}", flush=True)
        else:
            print(f"app: model {w['model']}, method {w['method']}, {w['n']} rows per quick eval in {w['chunks']} "
                  f"estimates, dtype {w['dtype']}; warm-up evaluation of nf4 {w['final']:.1f} s", flush=True)

    scenarios = []
    for n in clients:
        if time.monotonic() > deadline:
            print(f"budget spent: the {n}-client scenario was not run", flush=True)
            continue
        order = (True, False) if args.sequence_first else (False, True)
        for in_sequence in order if args.in_sequence and n > 1 else (False,):
            s = run_scenario(args.url, space, n, args.changes, args.timeout, deadline, args.kind, in_sequence)
            scenarios.append(s)
            ok = sum(r["status"] == "ok" for r in s["results"])
            print(f"{s['clients']} client(s): {ok}/{args.changes} changes finished in {s['wall']:.1f} s", flush=True)

    print()
    print(f"kind of change: {args.kind}\n")
    print("| clients | changes done / asked | ok | timeouts | errors | first estimate p50 / p95 / max (s) "
          "| final p50 / p95 / max (s) | wall (s) | changes per minute |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in scenarios:
        rs = s["results"]
        ok = [r for r in rs if r["status"] == "ok"]
        first = [r["first"] for r in ok if r["first"] is not None]
        final = [r["final"] for r in ok]
        tmo = sum(r["status"] == "timeout" for r in rs)
        err = len(rs) - len(ok) - tmo

        def three(xs):
            return "n/a" if not xs else f"{statistics.median(xs):.2f} / {pct(xs, 0.95):.2f} / {max(xs):.2f}"

        print(f"| {s['clients']} | {len(rs)} / {s['asked']} | {len(ok)} | {tmo} | {err} | {three(first)} | "
              f"{three(final)} | {s['wall']:.1f} | {60 * len(ok) / s['wall']:.1f} |")
    errors = sorted({r["status"] for s in scenarios for r in s["results"] if r["status"].startswith("error")})
    for e in errors[:5]:
        print(f"error seen: {e}")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.monotonic() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"url": args.url, "machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "scenarios": scenarios}, indent=1))
        print(f"timings: {args.json}")
    if any(s["unfinished_threads"] for s in scenarios):
        os._exit(1)  # a client thread is stuck past every deadline: do not wait for it


if __name__ == "__main__":
    main()
