"""Benchmark of the configuration search pieces on the real SmolLM2-135M space.

    .venv/bin/python bench/search.py [--sizes 50 100 200] [--repeats 3] [--threads 2]

Prints a Markdown table:
  * GP fit + predicted-front refresh (26 budgets, 2.25 ... 8.5) for n observations of a
    synthetic objective on the real space (210 matrices -> 1050 encoding columns);
  * one log-EHVI batch evaluation (the first call in a fresh environment also compiles
    BoTorch's C++ extension, cached in $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions);
  * ILP allocation with cached costs (load + solve) at several budgets, with the bits left
    unused; the cold cost (computing the table) is the time recorded in the table's JSON.
Targets (2 CPU cores): front refresh under 2 s at 200 observations; ILP under 1 s cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def synthetic_f1(configs, weights):
    per = torch.tensor([[s.bits_per_param for s in c.settings] for c in configs], dtype=torch.float64)
    return ((torch.exp(-per) * weights).sum(1) / weights.sum()).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from coalora.models import build_space_for
    from coalora.search.acquisition import build_acquisition, evaluate, neighbours
    from coalora.search.allocate import allocate_ilp
    from coalora.search.costs import load_costs
    from coalora.search.front import predicted_front
    from coalora.search.gp import fit_surrogate

    space = build_space_for("smollm2-135m")
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(space.n_matrices, generator=g, dtype=torch.float64) + 0.5
    pool = space.sample(max(args.sizes), seed=0)
    y = synthetic_f1(pool, weights)
    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| observations | GP fit (s) | front refresh (s) | fit + front (s) | candidates |")
    print("|---|---|---|---|---|")
    last = None
    for n in args.sizes:
        fits, fronts = [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            gp = fit_surrogate(pool[:n], y[:n], space, seed=r)
            t1 = time.perf_counter()
            front = predicted_front(gp, n_mutations=256, seed=r)
            t2 = time.perf_counter()
            fits.append(t1 - t0)
            fronts.append(t2 - t1)
        tot = [a + b for a, b in zip(fits, fronts)]
        print(f"| {n} | {statistics.median(fits):.2f} | {statistics.median(fronts):.2f} | "
              f"{statistics.median(tot):.2f} (max {max(tot):.2f}) | {front.meta['n_candidates']} |")
        last = gp

    t0 = time.perf_counter()
    acqf = build_acquisition(last, "qlognehvi", n_samples=64)
    t1 = time.perf_counter()
    nb = neighbours(last.train_idx[0])
    evaluate(acqf, nb[:1])
    t2 = time.perf_counter()
    evaluate(acqf, nb)
    t3 = time.perf_counter()
    print(f"\nqLogNEHVI on {last.n_observations} observations: build {t1 - t0:.2f} s, first call "
          f"{t2 - t1:.2f} s (includes the C++ extension compile if not cached), "
          f"{nb.shape[0]} neighbours (one local-search step) {t3 - t2:.2f} s")

    costs = load_costs(space)
    if costs is None:
        print("\nno cached SmolLM2 cost table: run `coalora allocate --budget 4` once (minutes)")
        return
    print(f"\nILP with cached costs ({costs.meta.get('source')}; computing that table took "
          f"{costs.meta.get('seconds')} s with sample={costs.meta.get('sample')}, "
          f"{costs.meta.get('torch_threads')} thread(s))\n")
    print("| budget | load + solve (s) | solve (s) | avg bits | unused bits | proven gap | how |")
    print("|---|---|---|---|---|---|---|")
    for b in (2.1, 2.5, 3.0, 3.5, 4.127, 5.0, 6.0, 7.25, 8.0, 8.5):
        t0 = time.perf_counter()
        c = load_costs(space)
        res = allocate_ilp(c, b)
        t1 = time.perf_counter()
        how = "Lagrangian bound" if res.status.startswith("within") else "HiGHS branch and bound"
        print(f"| {b} | {t1 - t0:.2f} | {res.seconds:.2f} | {res.avg_bits:.4f} | {b - res.avg_bits:.4f} "
              f"| {res.mip_gap:.1e} | {how} |")


if __name__ == "__main__":
    main()
