"""Compare GP designs on a measured pool and a disjoint held-out set (issue 12, item 4).

    .venv/bin/python bench/gp_designs.py [--pool assets/front/pool_records.jsonl] \
        [--heldout results/gp_calibration/heldout.jsonl] [--cv 0] [--out results/gp_calibration/designs.json]

Reads result records only (no model run; written by bench/build_pool.py): every point is the
adapted default checkpoint's accuracy on the quick-eval rows (coalora.eval.harness.quick_split).
Fits each design of coalora.search.gp (DESIGNS x learned / binomial noise) on the pool and
predicts the held-out configurations. Reports, on the held-out set: Spearman rank
correlation of predicted vs measured accuracy (all, and the single-block edits of nf4
alone), RMSE, the share of measurements inside the central 90% predictive interval
(mean ± 1.645 σ_pred, σ_pred² = latent σ² + the noise variance: learned, or p(1-p)/rows),
the median latent σ and median σ_pred, the noise std, and the fit time. --cv K adds K-fold
cross-validation on the pool (same quantities, pooled over folds).

--timing N: time one refit of the default design (coalora.search.gp defaults) plus the
predicted front (coalora.search.front.predicted_front over its default budgets, candidates:
the observations and the allocator's configurations) at N observations: the measured pool
topped up with random configurations whose values are the pool GP's predictions plus
binomial noise (timing only; no accuracy claim).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
Z90 = 1.6448536269514722
CANDIDATES = (("index", "learned"), ("struct", "learned"), ("qerr", "learned"), ("qerr", "binomial"),
              ("qerr-block", "learned"), ("qerr-block", "binomial"), ("qerr-linear", "learned"),
              ("qerr-linear", "binomial"), ("qerr-additive", "learned"), ("qerr-additive", "binomial"))


def read_points(path: Path, space, split_hash: str | None = None):
    """-> (configs, values, categories, rows, split_hash, metric, stderrs), one per distinct
    configuration; values in the records' one metric (accuracy, or bits per byte)."""
    configs, acc, cats, seen, rows, metrics, se = [], [], [], set(), set(), set(), []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if split_hash is None:
            split_hash = r["split_hash"]
        if r["split_hash"] != split_hash or r["config_hash"] in seen:
            continue
        seen.add(r["config_hash"])
        configs.append(space.from_dict(r["config"]))
        acc.append(float(r["value"]))
        se.append(float(r.get("stderr") or 0.0))
        cats.append((r.get("extra") or {}).get("category", "?"))
        rows.add(int(r["n"]))
        metrics.add(r.get("metric", "accuracy"))
    if len(rows) > 1:
        raise SystemExit(f"{path}: records measured on different numbers of rows {sorted(rows)}")
    if len(metrics) > 1:
        raise SystemExit(f"{path}: records of different metrics {sorted(metrics)}")
    return configs, acc, cats, rows.pop() if rows else 0, split_hash, metrics.pop() if metrics else "accuracy", se


def evaluate(design: str, noise: str, train_c, train_acc, test_c, test_acc, space, costs, rows: int,
             metric: str = "accuracy") -> dict:
    """Fit on (train_c, train_acc) and score on the test points; values in `metric` (the GP
    fits the search's f1, coalora.metrics.to_error: a linear map, so σ is the same in both)."""
    from scipy.stats import spearmanr

    from coalora.metrics import from_error, to_error
    from coalora.search.gp import binomial_variance, fit_surrogate

    t0 = time.perf_counter()
    gp = fit_surrogate(train_c, [to_error(metric, a) for a in train_acc], space, design=design, noise=noise,
                       costs=costs, rows=rows)
    fit_s = time.perf_counter() - t0
    mean_f1, std = gp.predict(test_c)
    pred = torch.tensor([from_error(metric, float(m)) for m in mean_f1], dtype=torch.float64)
    if noise == "binomial":
        nvar = binomial_variance(mean_f1, rows)
    else:
        nvar = torch.full_like(std, gp.noise_std ** 2)
    sp = (std ** 2 + nvar).sqrt()
    y = torch.tensor(test_acc, dtype=torch.float64)
    inside = ((y - pred).abs() <= Z90 * sp).double().mean().item()
    inside_lat = ((y - pred).abs() <= Z90 * std).double().mean().item()
    return {"design": design, "noise": noise, "spearman": float(spearmanr(pred.tolist(), test_acc)[0]),
            "rmse": float(((y - pred) ** 2).mean().sqrt()), "inside90_pred": inside, "inside90_latent": inside_lat,
            "median_std_latent": float(std.median()), "median_std_pred": float(sp.median()),
            "noise_std": gp.noise_std, "fit_s": round(fit_s, 2), "pred": pred.tolist(), "std": std.tolist(),
            "std_pred": sp.tolist()}


def noise_ceiling(acc: list[float], rows: int, idx: list[int], draws: int = 2000,
                  stderr: list[float] | None = None) -> tuple[float, float, float]:
    """Spearman that a perfect predictor of each configuration's expected accuracy would
    reach against ONE quick-eval measurement: measured values taken as the truth, binomial
    row noise sqrt(p(1-p)/rows) added again (or each record's own `stderr`, for a metric that
    is no proportion), -> (median, 5%, 95%) over `draws` draws.
    An estimate: configurations measured on the same rows share part of their noise."""
    from scipy.stats import spearmanr

    m = torch.tensor([acc[i] for i in idx], dtype=torch.float64)
    sd = (m * (1 - m) / rows).sqrt() if stderr is None else torch.tensor([stderr[i] for i in idx], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    rs = torch.tensor([spearmanr(m.tolist(), (m + sd * torch.randn(m.shape, generator=g, dtype=m.dtype)).tolist())[0]
                       for _ in range(draws)])
    return float(rs.median()), float(rs.quantile(0.05)), float(rs.quantile(0.95))


def weighted_costs(costs, path: Path, key: str):
    """The cost table with each matrix's row scaled by its sensitivity `key` from `path`
    (bench/sensitivity.py JSON): a sensitivity-weighted total error."""
    import dataclasses

    sens = json.loads(path.read_text())["sensitivity"][key]
    w = torch.tensor([sens[m.name] for m in costs.space.matrices], dtype=torch.float64)
    return dataclasses.replace(costs, errors=costs.errors * w[:, None], weighting=key)


def timing(args) -> int:
    from coalora.models import build_space_for
    from coalora.search.costs import load_costs
    from coalora.search.front import DEFAULT_BUDGETS, predicted_front
    from coalora.search.gp import DEFAULT_DESIGN, DEFAULT_NOISE, binomial_variance, fit_surrogate
    from coalora.train.configs import configs_at_bits

    space = build_space_for(args.model)
    costs = load_costs(space)
    pool_c, pool_a, _, rows, _, _, _ = read_points(args.pool, space)
    y = [1 - a for a in pool_a]
    gp = fit_surrogate(pool_c, y, space, costs=costs, rows=rows)
    extra = [c for c in space.sample(4 * args.timing, seed=123) if c not in set(pool_c)][: max(0, args.timing - len(pool_c))]
    m, _ = gp.predict(extra)
    g = torch.Generator().manual_seed(0)
    m = m + binomial_variance(m, rows).sqrt() * torch.randn(m.shape, generator=g, dtype=m.dtype)
    configs, values = pool_c + extra, y + m.tolist()
    alloc, _ = configs_at_bits(space, list(DEFAULT_BUDGETS))
    out = []
    prev = fit_surrogate(configs[:-1], values[:-1], space, costs=costs, rows=rows)  # before the last observation
    for rep in range(3):
        t0 = time.perf_counter()
        fit_surrogate(configs, values, space, costs=costs, rows=rows)
        t1 = time.perf_counter()
        gp = fit_surrogate(configs, values, space, costs=costs, rows=rows, warm_start=prev)
        t2 = time.perf_counter()
        front = predicted_front(gp, candidates=configs + alloc, seed=rep)
        t3 = time.perf_counter()
        out.append((t1 - t0, t2 - t1, t3 - t2))
        print(f"{len(configs)} observations ({DEFAULT_DESIGN}, {DEFAULT_NOISE} noise): cold fit {t1 - t0:.2f} s, "
              f"warm-started refit {t2 - t1:.2f} s, front {t3 - t2:.2f} s ({len(front.points)} budgets, "
              f"{front.meta['n_candidates']} candidates)", flush=True)
    cold, warm, fr = (min(x[i] for x in out) for i in range(3))
    print(f"best of 3: cold fit {cold:.2f} s; warm refit {warm:.2f} s + front {fr:.2f} s = {warm + fr:.2f} s; "
          f"torch threads {torch.get_num_threads()}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=ROOT / "assets" / "front" / "pool_records.jsonl")
    ap.add_argument("--heldout", type=Path, default=ROOT / "results" / "gp_calibration" / "heldout.jsonl")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cv", type=int, default=0, help="also K-fold cross-validation on the pool (0: off)")
    ap.add_argument("--designs", default=None, help="comma list of design:noise (default: all ten)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the table and per-point predictions")
    ap.add_argument("--timing", type=int, default=0, help="time refit + front at N observations, then exit")
    ap.add_argument("--sensitivity", type=Path, default=None,
                    help="bench/sensitivity.py JSON: adds rows whose cost table is weighted by each per-matrix "
                         "sensitivity in it (design names like qerr@sst2-fisher)")
    args = ap.parse_args()
    if args.timing:
        return timing(args)

    from scipy.stats import spearmanr

    from coalora.metrics import higher_is_better
    from coalora.models import build_space_for
    from coalora.search.costs import load_costs

    space = build_space_for(args.model)
    costs = load_costs(space)
    pool_c, pool_a, pool_cat, rows, split_hash, metric, _ = read_points(args.pool, space)
    held_c, held_a, held_cat, rows_h, _, metric_h, held_se = read_points(args.heldout, space, split_hash)
    if rows_h and rows_h != rows:
        raise SystemExit(f"pool on {rows} rows, held-out on {rows_h}")
    if metric_h != metric:
        raise SystemExit(f"pool measured in {metric}, held-out in {metric_h}")
    proportion = higher_is_better(metric)  # accuracy: binomial row noise; else each record's stderr
    overlap = set(pool_c) & set(held_c)
    if overlap:
        raise SystemExit(f"{len(overlap)} held-out configurations are in the pool")
    cands = CANDIDATES if not args.designs else tuple(tuple(d.split(":")) for d in args.designs.split(","))
    if args.sensitivity:
        keys = json.loads(args.sensitivity.read_text())["sensitivity"]
        cands += tuple((f"{d}@{k}", "learned") for k in keys for d in ("qerr", "qerr-block"))
    if not proportion:
        cands = tuple((d, n) for d, n in cands if n != "binomial")  # binomial noise models a proportion only
    floor = [math.sqrt(a * (1 - a) / rows) for a in held_a] if proportion else held_se
    se = None if proportion else held_se
    edits = [i for i, c in enumerate(held_cat) if c == "edit"]
    ceiling = {"all": noise_ceiling(held_a, rows, list(range(len(held_a))), stderr=se),
               "edits": noise_ceiling(held_a, rows, edits, stderr=se) if len(edits) > 2 else None}
    print(f"pool {len(pool_c)} configurations, held-out {len(held_c)} ({rows} quick-eval rows, split {split_hash}); "
          f"measured held-out {metric} {min(held_a):.3f} ... {max(held_a):.3f}; "
          f"{'binomial noise sqrt(p(1-p)/n)' if proportion else 'measured stderr'} "
          f"median {sorted(floor)[len(floor) // 2]:.4f}")
    for name, c in ceiling.items():
        if c:
            print(f"noise ceiling of Spearman ({name}): {c[0]:.3f} (5-95%: {c[1]:.3f}-{c[2]:.3f}): a perfect predictor "
                  "of expected accuracy, scored against one measurement on these rows")
    print()
    results = []
    print("| design | noise | Spearman | Spearman (edits) | RMSE | inside 90% (σ_pred) | inside 90% (latent σ) "
          "| median latent σ | median σ_pred | noise std | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, noise in cands:
        design, _, key = name.partition("@")
        table = weighted_costs(costs, args.sensitivity, key) if key else costs
        try:
            r = evaluate(design, noise, pool_c, pool_a, held_c, held_a, space, table, rows, metric)
            r["design"] = name
        except Exception as e:  # e.g. botorch ModelFittingError: report it as a row, keep going
            print(f"| {name} | {noise} | fit failed: {type(e).__name__} |", flush=True)
            results.append({"design": name, "noise": noise, "error": f"{type(e).__name__}: {e}"})
            continue
        r["spearman_edits"] = (float(spearmanr([r["pred"][i] for i in edits], [held_a[i] for i in edits])[0])
                               if len(edits) > 2 else float("nan"))
        if args.cv > 1:
            g = torch.Generator().manual_seed(0)
            perm = torch.randperm(len(pool_c), generator=g).tolist()
            preds, sds, ys = [], [], []
            for k in range(args.cv) if "error" not in r else ():
                test = set(perm[k:: args.cv])
                tr = [i for i in range(len(pool_c)) if i not in test]
                te = sorted(test)
                try:
                    rr = evaluate(design, noise, [pool_c[i] for i in tr], [pool_a[i] for i in tr],
                                  [pool_c[i] for i in te], [pool_a[i] for i in te], space, table, rows, metric)
                except Exception:  # a failed fold: the CV row covers the folds that fitted
                    continue
                preds += rr["pred"]
                sds += rr["std_pred"]
                ys += [pool_a[i] for i in te]
            if not ys:
                continue
            r["cv_spearman"] = float(spearmanr(preds, ys)[0])
            r["cv_inside90_pred"] = sum(abs(y - p) <= Z90 * s for y, p, s in zip(ys, preds, sds)) / len(ys)
        results.append(r)
        print(f"| {name} | {noise} | {r['spearman']:.3f} | {r['spearman_edits']:.3f} | {r['rmse']:.4f} "
              f"| {r['inside90_pred']:.2f} | {r['inside90_latent']:.2f} | {r['median_std_latent']:.4f} "
              f"| {r['median_std_pred']:.4f} | {r['noise_std']:.4f} | {r['fit_s']:.1f} |"
              + (f" cv ρ {r['cv_spearman']:.3f}, cv inside90 {r['cv_inside90_pred']:.2f}" if args.cv > 1 else ""),
              flush=True)
    if args.out:
        from coalora.io import atomic_write_text
        from coalora.version import code_version

        atomic_write_text(args.out, json.dumps({
            "pool": str(args.pool), "heldout": str(args.heldout), "n_pool": len(pool_c), "n_heldout": len(held_c),
            "rows": rows, "split_hash": split_hash, "metric": metric, "code_version": code_version(),
            "noise_ceiling_spearman": ceiling,
            "heldout_points": [{"config_hash": c.hash, "category": k, "avg_bits": c.avg_bits, "measured": a}
                               for c, k, a in zip(held_c, held_cat, held_a)],
            "results": results}, indent=1) + "\n")
        print(f"\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
