"""Seconds per optimiser step of each training method, measured side by side in one run.

    .venv/bin/python bench/train_step.py [--steps 12] [--batch-size 8] [--rounds 2]

Runs `coalora train` for --steps steps of each method (lora on the ILP 4.127-bit nf4
preset, shared, coalora without search) into a temporary folder, --rounds times in
alternating order (so slow phases of a shared machine hit every method), and reads the
per-step wall times from each run's log.jsonl (the first 2 steps are warm-up and dropped).
Prints a Markdown table: median s/step per method and the ratios to lora. These are the
per-step costs behind the method comparison's training times (bench/compare.py), whose
wall times were measured while the machine was shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"lora": ["--method", "lora", "--config", "nf4"], "shared": ["--method", "shared"],
           "coalora": ["--method", "coalora", "--no-search"]}


def step_times(log: Path, warmup: int = 2) -> list[float]:
    t = [r["time"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]
    return [b - a for a, b in zip(t[warmup:], t[warmup + 1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 4:
        ap.error(f"--steps {args.steps}: need at least 4 (2 warm-up steps are dropped)")
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(METHODS) if r % 2 == 0 else list(reversed(METHODS))
            for m in order:
                out = Path(tmp) / f"{m}-{r}"
                cmd = [sys.executable, "-m", "coalora", "train", *METHODS[m], "--steps", str(args.steps),
                       "--epoch-steps", str(args.steps), "--batch-size", str(args.batch_size), "--save-every", "0",
                       "--out", str(out), "--json"]
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
                times[m] += step_times(out / "log.jsonl")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at the end {load[0]:.2f}; torch threads default; batch {args.batch_size}; "
          f"{args.rounds} rounds x {args.steps} steps per method\n")
    base = statistics.median(times["lora"])
    print("| method | configurations per step | median s/step | min-max | vs lora |\n|---|---|---|---|---|")
    for m, per in (("lora", 1), ("shared", 2), ("coalora", 2)):
        t = times[m]
        print(f"| {m} | {per} | {statistics.median(t):.2f} | {min(t):.2f}-{max(t):.2f} | "
              f"{statistics.median(t) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
