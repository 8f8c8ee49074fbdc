"""PNG of a checkpoint's GP-predicted front (issue 6, item 6c): the predicted best accuracy per
bit budget with its ±2σ band, the measured pool points, and the baselines (the quantized base
without adapter at the uniform presets).

    .venv/bin/python bench/front_plot.py [--front assets/front/default.json] \
        [--baselines assets/front/baselines.json] [--heldout results/gp_calibration/heldout.jsonl] \
        [--out docs/front.png]

Reads only files (no model, no GP fit): the front file written by `coalora search`, which
holds its observed pool points, the held-out records of bench/build_pool.py (drawn when
present; never in the pool) and the baselines file written by `python app.py
--write-baselines`. Accuracy = 1 - f1 (the front's objective is the error). The front, pool
and held-out points are on the quick-eval rows (coalora.eval.harness.quick_split) named in
the front file; the baselines' rows are named in the legend from their records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--front", type=Path, default=ROOT / "assets" / "front" / "default.json")
    ap.add_argument("--baselines", type=Path, default=ROOT / "assets" / "front" / "baselines.json")
    ap.add_argument("--heldout", type=Path, default=ROOT / "results" / "gp_calibration" / "heldout.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "front.png")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coalora.results import read_records

    front = json.loads(args.front.read_text())
    if front.get("objective") != "error":
        print(f"{args.front}: objective {front.get('objective')!r}; this plot draws accuracy = 1 - error",
              file=sys.stderr)
        return 2
    pts = sorted(front["points"], key=lambda p: p["budget"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [p["budget"] for p in pts]
    if all("std_pred" in p for p in pts):  # where one quick-eval measurement should land
        ax.fill_between(x, [1 - p["mean"] - 2 * p["std_pred"] for p in pts],
                        [1 - p["mean"] + 2 * p["std_pred"] for p in pts], step="post",
                        color="tab:blue", alpha=0.07, label="a measurement would land here (± 2σ predictive)")
    ax.fill_between(x, [1 - p["upper"] for p in pts], [1 - p["lower"] for p in pts], step="post",
                    color="tab:blue", alpha=0.2, label="GP band (expected value, ± 2σ latent)")
    ax.step(x, [1 - p["mean"] for p in pts], where="post", color="tab:blue",
            label="GP-predicted best accuracy within the budget")
    obs = front.get("observed", [])
    ax.scatter([o["avg_bits"] for o in obs], [1 - o["f1"] for o in obs], s=14, color="tab:gray", alpha=0.8,
               label=f"measured pool ({len(obs)} configurations, {front.get('dev_rows')} quick-eval dev rows)")
    if args.heldout.is_file():
        held = [r for r in read_records(args.heldout) if r.split_hash == front.get("split_hash")]
        ax.scatter([r.avg_bits for r in held], [r.value for r in held], s=18, marker="^", color="tab:orange",
                   alpha=0.9, label=f"held-out, never fitted ({len(held)} configurations, same rows)")
    if args.baselines.is_file():
        base = sorted((r for r in read_records(args.baselines) if r.avg_bits is not None), key=lambda r: r.avg_bits)
        ax.errorbar([r.avg_bits for r in base], [r.value for r in base], yerr=[r.stderr for r in base], fmt="kx",
                    capsize=2, label=f"no adapter, uniform presets ({base[0].n if base else 0} "
                    f"{(base[0].split or {}).get('part', '?') if base else ''} rows)")
    ax.set_xlabel("average bits per weight (bit budget for the front)")
    ax.set_ylabel(f"{front.get('task', 'task').upper()} accuracy")
    ax.set_title(f"Predicted front of {Path(front.get('checkpoint', '?')).name} "
                 f"({front.get('n_observations')} observations, GP {front.get('gp_design', '?')}; "
                 f"band ±2σ latent)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    # Monotonicity: more bits should never predict a lower accuracy by more than the band's 1σ.
    drops = [(a["budget"], b["budget"], (1 - b["mean"]) - (1 - a["mean"])) for a, b in zip(pts, pts[1:])
             if (1 - b["mean"]) < (1 - a["mean"]) - max(a["std"], b["std"])]
    print(f"front: {len(pts)} budgets, accuracy {1 - pts[0]['mean']:.3f} ... {1 - pts[-1]['mean']:.3f}, "
          f"median σ {sorted(p['std'] for p in pts)[len(pts) // 2]:.4f}; "
          f"drops beyond 1σ between neighbouring budgets: {len(drops)}" + (f" {drops}" if drops else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
