"""Benchmark configuration switching of CoaLoraModel on SmolLM2-135M (issue 3, item 8).

Times (median of N, wall clock, torch threads = --threads):
  theta            θ's forward for all 210 matrices (codes prebuilt), no_grad
  encode+theta     Configuration -> codes -> θ -> M assigned to the 210 layers
  one-block cold   set_configuration to a configuration differing in one random block
                   (7 matrices, new random settings, cache cleared: re-quantized)
  one-block warm   the same switch back and forth once both are in the LRU cache
  full cold        set_configuration between two independent random configurations
                   (all 210 matrices re-quantized, cache cleared)
  full warm        the same full switch with both configurations cached
Targets (issue 3): one-block < 50 ms, full < 2 s, θ < 5 ms on 2 CPU cores.

    .venv/bin/python bench/switch.py --repeats 20 --full-repeats 20 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

import torch


def median_ms(fn, repeats: int, setup=None) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="repeats of θ and one-block switches (default 20)")
    ap.add_argument("--full-repeats", type=int, default=20, help="repeats of full switches (default 20)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from coalora.lora import CoaLoraModel, LoraSpec
    from coalora.models import load_model
    from coalora.space import ConfigSpace
    from coalora.version import code_version

    base, _ = load_model("smollm2-135m", quiet=True)
    space = ConfigSpace.from_model(base, "smollm2-135m")
    model = CoaLoraModel(base, space, LoraSpec())
    rng = random.Random(args.seed)
    a, b = space.sample(2, seed=args.seed)
    fresh = iter(space.sample(10_000, seed=args.seed + 1))  # a source of new random settings
    results: dict[str, float] = {}

    codes = model.codes(a)
    with torch.no_grad():
        for _ in range(3):
            model.theta(codes)  # warm-up
        results["theta (210 matrices)"] = median_ms(lambda: model.theta(codes), args.repeats)

    model.set_configuration(a)
    results["encode + theta + assign"] = median_ms(model._refresh_mixing, args.repeats)

    state = {"cur": a}

    def one_block_step() -> None:
        block = rng.randrange(space.n_blocks)
        new = next(fresh)
        changes = {m.name: s for m, s in new.items() if m.block == block}
        state["next"] = state["cur"].with_settings(changes)
        model.switcher.clear_cache()  # cold: the 7 matrices must be re-quantized

    def one_block_switch() -> None:
        model.set_configuration(state["next"])
        state["cur"] = state["next"]

    results["one-block switch, cold (7 matrices re-quantized)"] = median_ms(one_block_switch, args.repeats, one_block_step)
    prev = state["cur"]
    one_block_step()
    one_block_switch()
    pair = [prev, state["cur"]]
    model.set_configuration(pair[0])  # both now cached
    flip = {"i": 0}

    def warm_flip() -> None:
        flip["i"] ^= 1
        model.set_configuration(pair[flip["i"]])

    results["one-block switch, warm (LRU cache hit)"] = median_ms(warm_flip, args.repeats)

    full = {"i": 0}

    def full_setup() -> None:
        model.switcher.clear_cache()

    def full_switch() -> None:
        full["i"] ^= 1
        model.set_configuration((a, b)[full["i"]])

    model.set_configuration(a)
    results["full switch, cold (210 matrices re-quantized)"] = median_ms(full_switch, args.full_repeats, full_setup)
    model.set_configuration(a)
    model.set_configuration(b)  # both cached (2 x 425 MB < 1 GiB default cache)
    results["full switch, warm (LRU cache hit)"] = median_ms(full_switch, args.repeats)

    machine = f"{cpu_name()}, {os.cpu_count()} CPUs visible, torch threads {args.threads}"
    try:
        load = os.getloadavg()[0]
        machine += f", load average {load:.1f} at the end"
    except OSError:
        pass
    print(f"# bench/switch.py  code {code_version()}  torch {torch.__version__}")
    print(f"# machine: {machine}")
    print(f"# repeats: {args.repeats} (theta, one-block, warm full), {args.full_repeats} (cold full)")
    print("| measurement | median ms |")
    print("|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.2f} |")
    if args.json:
        from pathlib import Path

        from coalora.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps({"results_ms": results, "machine": machine, "code_version": code_version(),
                                                       "repeats": args.repeats, "full_repeats": args.full_repeats}, indent=1))


if __name__ == "__main__":
    main()
