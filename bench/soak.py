"""Soak bench: the app's resident memory under 4 clients doing random configurations (issue 13).

    .venv/bin/python bench/soak.py --minutes 10 --json results/soak.json

Starts the app as `make app` does (`.venv/bin/python app.py`; a free port, GRADIO_SERVER_PORT),
with its GP observations in a temp file (the real observations file is not touched), waits
until it serves, then --clients gradio_client clients (default 4) each send one random
configuration after another to /evaluate and read the stream to its final record, for
--minutes (no evaluation starts after that; those in flight finish or time out). Each
client alternates a one-block slider move (one random block to 2, 3, 4 or 8 bits) with a
whole random configuration (every field of every matrix drawn: ConfigSpace.sample).

The app's RSS (/proc/PID/status VmRSS) is sampled every second; printed: RSS when it
serves (start), at the end, the peak (VmHWM, the kernel's high-water mark, which also sees
spikes between samples), the median of the second half of the run (steady), the
evaluations done and every error. Exit status 1 when an evaluation failed or the app died.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def status_mb(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of process `pid` in MB (10^6 bytes); {} once it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024 / 1e6
    except OSError:
        pass
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, workdir: Path, python: str) -> subprocess.Popen:
    """`python app.py` as `make app` runs it, on `port`, its observations in `workdir`."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "COALORA_OBSERVATIONS": str(workdir / "observations.jsonl")}
    log = open(workdir / "app.log", "w")
    return subprocess.Popen([python, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_serving(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with status {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "/config", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the app did not serve within {timeout:.0f} s")


def client_loop(c: int, url: str, space, seed: int, deadline: float, timeout: float, out: list, lock) -> None:
    from app_latency import timed  # bench/app_latency.py: submit, read the stream, check the final record
    from gradio_client import Client

    rng = random.Random(seed * 1000 + c)
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001 - counted, not fatal
        with lock:
            out.append({"client": c, "status": f"error: client: {e}"[:300]})
        return
    config, k = space.preset("nf4"), 0
    while time.monotonic() < deadline:
        if k % 2 == 0:  # a slider: one block to a random bit width
            b, bits = rng.randrange(space.n_blocks), rng.choice((2, 3, 4, 8))
            config = config.with_settings({m.name: config.setting(m.name).replace(bits=bits)
                                           for m in space.matrices if m.block == b})
            kind = f"block {b} -> {bits} bits"
        else:  # a whole random configuration
            config = space.sample(1, seed=rng.randrange(1 << 30))[0]
            kind = "random whole"
        r = timed(client, config.to_json(), timeout)
        r.update(client=c, step=k, kind=kind, t=time.monotonic())
        with lock:
            out.append(r)
        k += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long clients start evaluations (default 10)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one evaluation may take (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the interpreter `make app` uses")
    ap.add_argument("--json", type=Path, default=None, help="also write the samples and results here")
    args = ap.parse_args()

    from app_latency import machine
    from coalora.models import DEFAULT_MODEL, build_space_for

    where = machine()  # at the start (its load average is the start's)
    for line in where:
        print(line, flush=True)
    space = build_space_for(DEFAULT_MODEL)
    workdir = Path(tempfile.mkdtemp(prefix="coalora-soak-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t_launch = time.monotonic()
    proc = start_app(port, workdir, args.python)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            st = status_mb(proc.pid)
            if st:
                samples.append((time.monotonic() - t_launch, st["VmRSS"]))
            stop.wait(1.0)

    threading.Thread(target=sampler, daemon=True).start()
    results: list[dict] = []
    try:
        wait_serving(url, proc, 600)
        start = status_mb(proc.pid)
        t_serving = time.monotonic()
        print(f"app serving at {url} after {t_serving - t_launch:.0f} s; RSS {start['VmRSS']:.0f} MB "
              f"(pid {proc.pid}, log {workdir / 'app.log'}); {args.clients} clients for {args.minutes:g} min", flush=True)
        deadline = t_serving + 60 * args.minutes
        lock = threading.Lock()
        threads = [threading.Thread(target=client_loop, daemon=True,
                                    args=(c, url, space, args.seed, deadline, args.timeout, results, lock))
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        last = 0.0
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            if time.monotonic() - last >= 60:
                last = time.monotonic()
                st = status_mb(proc.pid)
                done = sum(r.get("status") == "ok" for r in results)
                print(f"  {time.monotonic() - t_serving:5.0f} s: RSS {st.get('VmRSS', float('nan')):.0f} MB, "
                      f"peak {st.get('VmHWM', float('nan')):.0f} MB, {done} evaluations done, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            if proc.poll() is not None:
                break
        end = status_mb(proc.pid)
        t_end = time.monotonic()
    finally:
        stop.set()
        alive = proc.poll() is None
        if alive:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if not alive:
        print(f"the app died (status {proc.returncode}); see {workdir / 'app.log'}")
    ok = [r for r in results if r.get("status") == "ok"]
    errors = [r for r in results if r.get("status") != "ok"]
    half = [rss for t, rss in samples if t >= (t_serving - t_launch) + (t_end - t_serving) / 2]
    steady = statistics.median(half) if half else float("nan")
    finals = [r["final"] for r in ok]
    print()
    print("| minutes | clients | evaluations done | errors | final s p50 / max | RSS start MB | RSS end MB "
          "| RSS steady MB (median, 2nd half) | RSS peak MB (VmHWM) | RSS max sampled MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {(t_end - t_serving) / 60:.1f} | {args.clients} | {len(ok)} ({sum('block' in r['kind'] for r in ok)} "
          f"one-block, {sum('whole' in r['kind'] for r in ok)} whole) | {len(errors)} | "
          f"{statistics.median(finals) if finals else float('nan'):.1f} / {max(finals) if finals else float('nan'):.1f} | "
          f"{start['VmRSS']:.0f} | {end.get('VmRSS', float('nan')):.0f} | {steady:.0f} | "
          f"{end.get('VmHWM', float('nan')):.0f} | {max(r for _, r in samples):.0f} |")
    for e in sorted({r.get("status", "?") for r in errors})[:10]:
        print(f"error: {e}")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "load_at_end": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "start": start, "end": end, "steady": steady, "samples": samples,
                                         "results": results}, indent=1))
        print(f"samples and results: {args.json}")
    sys.exit(1 if errors or not alive else 0)


if __name__ == "__main__":
    main()
