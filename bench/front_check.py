"""Does the predicted front hold when its points are measured? (issue 12, front targets)

    .venv/bin/python bench/front_check.py [--front assets/front/default.json] [--threads 1] \
        [--out results/gp_calibration/front_check.json]

For every point of the front: its measured accuracy on the quick-eval rows (the front's
split hash) — taken from the pool records when the configuration is there (the GP has seen
it: in-sample), otherwise measured now with the front's checkpoint (out-of-sample, appended
to results/gp_calibration/front_measured.jsonl so a rerun measures nothing twice). Prints a
table and the two targets:
  - non-decreasing within σ: neighbouring budgets whose predicted accuracy drops by more than
    1 latent σ (by construction the front's mean never drops: a bigger budget only adds
    candidates);
  - inside the 2σ band: measured within mean ± 2 latent σ (the band of the expected value)
    and within mean ± 2 predictive σ (where one measurement should land: latent and noise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def measured_values(paths: list[Path], split_hash: str, sha256: str) -> dict[str, float]:
    """config hash -> accuracy from result-record files, on the front's rows and with the
    checkpoint whose tensors have `sha256` only (records name it `NAME@sha256:<16 hex>`)."""
    label_end = f"@sha256:{sha256[:16]}"
    out: dict[str, float] = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("split_hash") == split_hash and r.get("config_hash") and \
                    str(r.get("checkpoint") or "").endswith(label_end):
                out.setdefault(r["config_hash"], float(r["value"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--front", type=Path, default=ROOT / "assets" / "front" / "default.json")
    ap.add_argument("--pool", type=Path, default=ROOT / "assets" / "front" / "pool_records.jsonl")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--measured", type=Path, default=ROOT / "results" / "gp_calibration" / "front_measured.jsonl")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gp_calibration" / "front_check.json")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from coalora.eval import iter_eval
    from coalora.eval.harness import quick_split
    from coalora.io import atomic_write_text
    from coalora.lora import load_for_eval, read_metadata
    from coalora.models import build_space_for
    from coalora.results import ResultRecord, append_record
    from coalora.search.front import load_front
    from coalora.version import code_version

    folder, meta = read_metadata(args.checkpoint)
    raw = json.loads(args.front.read_text())
    space = build_space_for(raw["model"])
    front = load_front(args.front, space)
    split_hash = front.meta["split_hash"]
    sha = meta["tensors"]["sha256"]
    in_pool = measured_values([args.pool], split_hash, sha)
    extra = measured_values([args.measured], split_hash, sha)
    todo = [p for p in front.points if p.config.hash not in in_pool and p.config.hash not in extra]
    todo = list({p.config.hash: p for p in todo}.values())
    if todo:
        split = quick_split(front.meta.get("task", "sst2"), int(front.meta.get("split_seed", 0)))
        if split.manifest_hash != split_hash:
            raise SystemExit(f"the quick-eval rows {split.manifest_hash} are not the front's {split_hash}")
        loaded = load_for_eval(args.checkpoint, meta["base_model"]["name"], dtype=torch.float32, quiet=True)
        if front.meta.get("checkpoint_sha256") != meta["tensors"]["sha256"]:
            raise SystemExit("the front was fitted for another checkpoint than --checkpoint")
        model, tok = loaded.model, loaded.tokenizer
        for i, p in enumerate(todo):
            t0 = time.perf_counter()
            model.set_configuration(p.config)
            est = next(iter(iter_eval(model, tok, split, stream=False)))
            rec = ResultRecord.from_estimate(
                est, config=p.config, model=space.model_name, split=split, method=loaded.method,
                checkpoint=loaded.checkpoint, seconds=round(time.perf_counter() - t0, 3),
                extra={"role": "select", "set": "front-check", "source": "bench/front_check.py"})
            append_record(args.measured, rec)
            extra[p.config.hash] = est.value
            print(f"measured {i + 1}/{len(todo)}: {p.avg_bits:.3f} bits -> {est.value:.3f}", file=sys.stderr, flush=True)

    rows, drops = [], 0
    pts = sorted(front.points, key=lambda p: p.budget)
    print("| budget | avg bits | predicted acc | ± 2σ latent | ± 2σ predictive | measured | source | in latent band "
          "| in predictive band |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, p in enumerate(pts):
        acc = 1.0 - p.mean
        sp = p.std_pred if p.std_pred is not None else p.std
        h = p.config.hash
        m = in_pool.get(h, extra.get(h))
        src = "pool (in-sample)" if h in in_pool else "measured now (out-of-sample)"
        in_lat, in_pred = abs(m - acc) <= 2 * p.std, abs(m - acc) <= 2 * sp
        if k and (1.0 - pts[k - 1].mean) - acc > p.std:
            drops += 1
        rows.append({"budget": p.budget, "avg_bits": p.avg_bits, "config_hash": h, "predicted": acc,
                     "std": p.std, "std_pred": sp, "measured": m, "in_sample": h in in_pool,
                     "in_latent_band": in_lat, "in_predictive_band": in_pred})
        print(f"| {p.budget:g} | {p.avg_bits:.3f} | {acc:.3f} | {2 * p.std:.3f} | {2 * sp:.3f} | {m:.3f} | {src} "
              f"| {'yes' if in_lat else 'no'} | {'yes' if in_pred else 'no'} |")
    n = len(rows)
    distinct = list({r["config_hash"]: r for r in rows}.values())  # one budget's point may repeat at the next
    summary = {"points": n, "drops_beyond_1_sigma": drops,
               "in_latent_band": sum(r["in_latent_band"] for r in rows),
               "in_predictive_band": sum(r["in_predictive_band"] for r in rows),
               "out_of_sample": sum(not r["in_sample"] for r in rows),
               "out_of_sample_in_predictive_band": sum(r["in_predictive_band"] for r in rows if not r["in_sample"]),
               "distinct_configurations": len(distinct),
               "distinct_in_latent_band": sum(r["in_latent_band"] for r in distinct),
               "distinct_in_predictive_band": sum(r["in_predictive_band"] for r in distinct),
               "distinct_out_of_sample": sum(not r["in_sample"] for r in distinct),
               "distinct_out_of_sample_in_predictive_band": sum(r["in_predictive_band"] for r in distinct
                                                                if not r["in_sample"])}
    print(f"\n{n} front points ({summary['out_of_sample']} measured out of sample): {drops} drops beyond 1σ between "
          f"neighbouring budgets; inside ± 2σ latent: {summary['in_latent_band']}/{n}; inside ± 2σ predictive: "
          f"{summary['in_predictive_band']}/{n} (out of sample: {summary['out_of_sample_in_predictive_band']}/"
          f"{summary['out_of_sample']})")
    print(f"{len(distinct)} distinct configurations: inside ± 2σ latent {summary['distinct_in_latent_band']}, inside "
          f"± 2σ predictive {summary['distinct_in_predictive_band']} (out of sample: "
          f"{summary['distinct_out_of_sample_in_predictive_band']}/{summary['distinct_out_of_sample']})")
    atomic_write_text(args.out, json.dumps({"front": str(args.front.relative_to(ROOT)) if args.front.is_relative_to(ROOT)
                                            else str(args.front), "split_hash": split_hash,
                                            "code_version": code_version(), "summary": summary, "points": rows},
                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
