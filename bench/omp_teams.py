"""Why the app computes on one model thread (ui/model_thread.py): torch's CPU speed with more
than one thread's OpenMP team alive (issue 13).

    .venv/bin/python bench/omp_teams.py

The same small-kernel workload as a decoder block's MLP at quick-eval sizes (a 300x576 bf16
autocast SwiGLU and an RMSNorm-like fp32 tail, --steps times) is timed in a fresh subprocess
per arrangement, so each starts without OpenMP teams:
- "one thread": only the main thread ever runs torch (a script, the test suite);
- "two teams": another thread has run torch too and stays alive (gradio's worker threads,
  each streamed chunk on whichever is free), timed on the main thread and on the other;
- "model thread": ui/model_thread.start() first, then the work on the model thread while four
  other threads have run torch single-threaded (the app now).
Prints wall seconds and CPU use (process CPU time / wall: 2.0 = both cores busy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = r"""
import time, torch
def make():
    x = torch.randn(300, 576); w = torch.randn(1536, 576).to(torch.bfloat16); w2 = torch.randn(576, 1536).to(torch.bfloat16)
    return x, w, w2
def work(data, steps):
    x, w, w2 = data
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.nn.functional.linear(x, w); h = torch.nn.functional.silu(h) * h; y = torch.nn.functional.linear(h, w2)
        z = x + y.float(); z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-5)
def timed(label, data, steps):
    work(data, 20)
    c, t = time.process_time(), time.perf_counter()
    work(data, steps)
    wall = time.perf_counter() - t
    print(f"{label}\t{torch.get_num_threads()}\t{wall:.3f}\t{(time.process_time() - c) / wall:.2f}", flush=True)
"""

ARRANGEMENTS = {
    "one thread": "timed('one thread: main thread', make(), STEPS)",
    "two teams": """
from concurrent.futures import ThreadPoolExecutor
data = make()
timed('two teams: main thread, before the other', data, STEPS)
other = ThreadPoolExecutor(1)
other.submit(work, data, 5).result()  # the other thread's team, kept alive
timed('two teams: main thread, the other alive', data, STEPS)
other.submit(timed, 'two teams: the other thread', data, STEPS).result()
""",
    "model thread": """
from concurrent.futures import ThreadPoolExecutor
from ui import model_thread
model_thread.start()
data = model_thread.run(make)
with ThreadPoolExecutor(4) as pool:
    list(pool.map(lambda _: work(data, 5), range(4)))  # other threads' torch: single-threaded
    model_thread.run(timed, 'model thread: the model thread, 4 others ran torch', data, STEPS)
    pool.submit(timed, 'model thread: another thread (single-threaded)', data, STEPS).result()
""",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="workload steps per timing (default 600)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from hostinfo import cpu_name

    import torch

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| arrangement | torch threads | wall (s) | CPU use (cores) |")
    print("|---|---|---|---|")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, body in ARRANGEMENTS.items():
        code = WORK + f"\nSTEPS = {args.steps}\n" + body
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(f"{name}: failed\n{out.stderr[-2000:]}")
        for line in out.stdout.splitlines():
            label, threads, wall, cpu = line.split("\t")
            print(f"| {label} | {threads} | {wall} | {cpu} |")


if __name__ == "__main__":
    main()
