"""GP calibration (issue 6, item 6a): does the surrogate fitted on a checkpoint's pool rank
and bracket configurations it never saw?

    .venv/bin/python bench/gp_calibration.py --checkpoint default [--pool FILE] [--n 30] \
        [--seed 0] [--out calibration.json] [--plot calibration.html]

Fits the GP (coalora.search.gp.fit_surrogate) on the pool written by `coalora search`, draws
`n` configurations not in the pool (half uniform space.sample(seed), half random-mixture
configurations spread over 2.5 ... 8.5 bits), predicts f1 (mean, σ), measures each one's f1
on the SAME dev batch and objective the pool was measured on (read from the pool file), and
reports: Spearman rank correlation of predicted mean vs measured, and the share of measured
values inside mean ± 1.645 σ (the central 90% interval), once with the latent σ and once
with the predictive σ (latent + the GP's learned noise, which is what a new measurement
scatters with). Prints Markdown tables; writes the points to --out (JSON) and a plot to
--plot (PNG through matplotlib when installed, otherwise plotly's offline HTML).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

Z90 = 1.6448536269514722  # two-sided 90% normal interval


def test_configs(space, pool_configs, n: int, seed: int):
    """-> [(config, source)]: n//2 uniform samples, the rest random mixtures spread over bits."""
    from coalora.train.configs import stratified_nearest

    seen = set(pool_configs)
    out: list = []
    n_uniform = n // 2
    for c in space.sample(4 * n_uniform + 4, seed=seed):
        if len(out) == n_uniform:
            break
        if c not in seen:
            seen.add(c)
            out.append((c, "uniform"))
    budgets = torch.linspace(2.5, 8.5, n - len(out)).tolist()
    for i, b in enumerate(budgets):
        for k in range(20):  # a different draw when the mixture is already known
            c = stratified_nearest(space, b, seed=seed * 1000 + 37 * i + k, tries=200)
            if c not in seen:
                seen.add(c)
                out.append((c, "mixture"))
                break
    return out


def write_plot(points: list[dict], path: Path, title: str) -> str:
    """Predicted vs measured with 90% bars; PNG via matplotlib if present, else plotly HTML."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    meas = [p["measured"] for p in points]
    mean = [p["mean"] for p in points]
    err = [Z90 * p["std_predictive"] for p in points]
    lo, hi = min(meas + mean), max(meas + mean)
    if plt is not None:
        path = path.with_suffix(".png")
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.errorbar(meas, mean, yerr=err, fmt="o", ms=4, alpha=0.8)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("measured f1")
        ax.set_ylabel("GP predicted f1 (90% predictive interval)")
        ax.set_title(title)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        return f"{path} (matplotlib PNG)"
    import plotly.graph_objects as go

    path = path.with_suffix(".html")
    fig = go.Figure([
        go.Scatter(x=meas, y=mean, mode="markers", name="configurations",
                   error_y=dict(type="data", array=err, visible=True),
                   text=[f"{p['config_hash']} ({p['source']}, {p['avg_bits']:.2f} bits)" for p in points]),
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line=dict(dash="dash", color="black")),
    ])
    fig.update_layout(title=title, xaxis_title="measured f1", yaxis_title="GP predicted f1 (90% predictive interval)")
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return f"{path} (plotly offline HTML: matplotlib is not installed, and PNG export would need kaleido)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="checkpoint folder or 'default'")
    ap.add_argument("--pool", default=None, help="the pool of `coalora search` (default: its default for the checkpoint)")
    ap.add_argument("--n", type=int, default=30, help="held-out configurations (default 30)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out draw and the GP fit (default 0)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--out", default="gp_calibration.json", help="JSON file for the points (default gp_calibration.json)")
    ap.add_argument("--plot", default=None, help="plot file (suffix chosen by the writer); default: next to --out")
    args = ap.parse_args()

    from scipy.stats import spearmanr
    from tqdm import tqdm

    from coalora.cli.search import check_pool_file, default_paths
    from coalora.io import atomic_write_text
    from coalora.lora import load_checkpoint, read_metadata
    from coalora.search.gp import fit_surrogate
    from coalora.search.loop import Pool
    from coalora.search.objective import describe, dev_batch
    from coalora.train.objective import dev_objective
    from coalora.version import code_version

    folder, meta = read_metadata(args.checkpoint)
    pool_path = Path(args.pool) if args.pool else default_paths(args.checkpoint, folder)[0]
    header = json.loads(pool_path.read_text())
    split = dev_batch(header["task"], header["dev_rows"], header.get("split_seed", 0))
    expected = {"checkpoint_sha256": meta["tensors"].get("sha256"), **describe(split, header["objective"])}
    check_pool_file(pool_path, expected)  # same checkpoint, batch and objective as the pool

    model, tok, meta = load_checkpoint(folder)
    space = model.space
    pool = Pool.load(pool_path, space)
    t0 = time.perf_counter()
    gp = fit_surrogate(pool.configs, pool.values, space, seed=args.seed)
    fit_s = time.perf_counter() - t0
    held = test_configs(space, pool.configs, args.n, args.seed)
    configs = [c for c, _ in held]
    mean, std = gp.predict(configs)
    _, std_pred = gp.predict(configs, observation_noise=True)
    objective = dev_objective(model, tok, split, header["objective"], args.dtype,
                              max_length=int(((meta.get("training") or {}).get("args") or {}).get("max_length", 128)))
    measured = []
    for c in tqdm(configs, desc="measure held-out", unit="config", file=sys.stderr):
        measured.append(objective([c])[0])

    points = []
    for (c, src), m, s, sp, y in zip(held, mean.tolist(), std.tolist(), std_pred.tolist(), measured):
        points.append({"config_hash": c.hash, "source": src, "avg_bits": c.avg_bits, "mean": m, "std_latent": s,
                       "std_predictive": sp, "measured": y,
                       "inside_latent": abs(y - m) <= Z90 * s, "inside_predictive": abs(y - m) <= Z90 * sp})
    rho, p_value = spearmanr([p["mean"] for p in points], [p["measured"] for p in points])
    share_lat = sum(p["inside_latent"] for p in points) / len(points)
    share_pred = sum(p["inside_predictive"] for p in points) / len(points)
    summary = {"checkpoint": str(folder), "pool": str(pool_path), "n_pool": len(pool), "n_test": len(points),
               **describe(split, header["objective"]), "spearman": float(rho), "spearman_p": float(p_value),
               "inside90_latent": share_lat, "inside90_predictive": share_pred,
               "noise_std": float(gp.model.likelihood.noise.sqrt().item() * gp.model.outcome_transform.stdvs.item()),
               "fit_s": round(fit_s, 2), "seed": args.seed, "code_version": code_version()}
    out = Path(args.out)
    atomic_write_text(out, json.dumps({"summary": summary, "points": points}, indent=1) + "\n")
    plot = write_plot(points, Path(args.plot) if args.plot else out.with_suffix(".html"),
                      f"GP calibration: {len(points)} held-out configurations")

    print(f"GP fitted on {len(pool)} pool points; {len(points)} held-out configurations; "
          f"f1 = {header['objective']} on {len(split)} {split.task} dev rows (split {split.manifest_hash})\n")
    print("| quantity | value |\n|---|---|")
    print(f"| Spearman ρ (predicted mean vs measured) | {rho:.3f} (p = {p_value:.2g}) |")
    print(f"| share inside mean ± 1.645σ, latent σ | {share_lat:.2f} ({sum(p['inside_latent'] for p in points)}/{len(points)}) |")
    print(f"| share inside mean ± 1.645σ, predictive σ | {share_pred:.2f} ({sum(p['inside_predictive'] for p in points)}/{len(points)}) |")
    print(f"| GP noise std (f1 units) | {summary['noise_std']:.4f} |")
    print(f"| measured f1 range | {min(measured):.4f} ... {max(measured):.4f} |\n")
    print("| config | source | avg bits | predicted f1 | σ latent | σ predictive | measured f1 |\n|---|---|---|---|---|---|---|")
    for p in sorted(points, key=lambda p: p["avg_bits"]):
        print(f"| {p['config_hash']} | {p['source']} | {p['avg_bits']:.3f} | {p['mean']:.4f} | {p['std_latent']:.4f} "
              f"| {p['std_predictive']:.4f} | {p['measured']:.4f} |")
    print(f"\npoints: {out}\nplot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
