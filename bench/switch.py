"""Benchmark configuration switching of CoaLoraModel on SmolLM2-135M (issue 3, item 8).

Times (median of N, wall clock, torch threads = --threads):
  theta            θ's forward for all 210 matrices (codes prebuilt), no_grad, with
                   --threads and with 1 thread
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
import random
import statistics
import time

import torch
from hostinfo import cpu_name  # bench/hostinfo.py (bench/ is sys.path[0] when run as a script)


def median_ms(fn, repeats: int, setup=None) -> tuple[float, float]:
    """-> (median, min) wall-clock ms of `fn` over `repeats` calls (`setup` untimed before each).
    The min is shown too: on a shared machine, lost time slices (tens of ms) hit single calls."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20, help="repeats of θ and one-block switches (default 20)")
    ap.add_argument("--full-repeats", type=int, default=20, help="repeats of cold full switches (default 20; 0 skips them)")
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
    step = {"n": 0}

    def fresh():  # a new random configuration per step (made lazily: millions of live objects slow the GC)
        step["n"] += 1
        return space.sample(1, seed=args.seed + 1000 + step["n"])[0]
    results: dict[str, float] = {}

    codes = model.codes(a)
    with torch.no_grad():
        for _ in range(10):
            model.theta(codes)  # warm-up
        results[f"theta (210 matrices), {args.threads} threads"] = median_ms(lambda: model.theta(codes), args.repeats)
        # θ's matmuls are tiny: with 2 threads on a busy machine, each op can wait for the
        # second OpenMP thread to be scheduled. One thread shows the cost of the work itself.
        torch.set_num_threads(1)
        results["theta (210 matrices), 1 thread"] = median_ms(lambda: model.theta(codes), args.repeats)
        torch.set_num_threads(args.threads)

    model.set_configuration(a)
    results["encode + theta + assign"] = median_ms(model._refresh_mixing, args.repeats)

    state = {"cur": a}

    def one_block_step() -> None:
        block = rng.randrange(space.n_blocks)
        new = fresh()
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
    if args.full_repeats > 0:  # 0 skips the slow cold full switches
        results["full switch, cold (210 matrices re-quantized)"] = median_ms(full_switch, args.full_repeats, full_setup)
    for c in (a, b, a, b):  # afterwards every matrix of a and b is cached (2 x 425 MB < 1 GiB cache)
        model.set_configuration(c)
    full["i"] = 1  # the current one is b: the first timed switch goes to a
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
    print("| measurement | median ms | min ms |")
    print("|---|---|---|")
    for k, (med, low) in results.items():
        print(f"| {k} | {med:.2f} | {low:.2f} |")
    if args.json:
        from pathlib import Path

        from coalora.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps({"results_ms": results, "machine": machine, "code_version": code_version(),
                                                       "repeats": args.repeats, "full_repeats": args.full_repeats}, indent=1))


if __name__ == "__main__":
    main()
