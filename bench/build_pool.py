"""Measure a configuration pool for the GP and a disjoint held-out set (issue 12, item 3).

    .venv/bin/python bench/build_pool.py [--checkpoint default] [--limit N] [--only pool|heldout] [--threads 1] [--shard K/N]
    .venv/bin/python bench/build_pool.py --checkpoint lm --only heldout --heldout results/gp_calibration/heldout_lm.jsonl

Every configuration is scored once on THE quick-eval rows (coalora.eval.harness.quick_split:
the task's dev part, QUICK_ROWS rows; docs/design.md, "Evaluation") of the checkpoint's
training task (--task to change it), f1 = 1 - accuracy (bits per byte itself for a
language-modelling task: coalora.metrics.to_error).
Records (coalora.results.ResultRecord, extra.role = "select") are appended to
  assets/front/pool_records.jsonl          the pool (then summarised to assets/front/pool.json)
  results/gp_calibration/heldout.jsonl     the held-out set, never in the pool
(--pool-records, --pool-json, --heldout: other files, e.g. for another checkpoint).
Resumable: configurations already recorded (same checkpoint sha256 and split hash) are skipped.
The model is loaded once.

Pool (deterministic, seed 0): uniform settings (every bit width x block size, plus the
presets), allocator outputs (coalora.search.allocate: "fast" over 40 budgets in 2.3..8.5 bits,
"ilp" over 12), per-block random bit widths (rest as nf4), uniform space.sample draws,
random-mixture draws (coalora.train.configs.stratified_nearest) at random budgets, and
single-block edits of nf4 (each block's 7 projections at 2/3/8 bits). Held-out: 20 random
mixtures (10 per-block, 10 stratified), 10 allocator ("fast") configurations at random
budgets, 10 single-block edits of nf4 (those 10 (block, bits) pairs are left out of the pool).
Measurement order: held-out first, then the pool round-robin over its categories, so a
partial pool is still a balanced one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
POOL_RECORDS = ROOT / "assets" / "front" / "pool_records.jsonl"
HELDOUT_RECORDS = ROOT / "results" / "gp_calibration" / "heldout.jsonl"
POOL_JSON = ROOT / "assets" / "front" / "pool.json"
BITS = (2, 3, 4, 8)


def nf_setting(bits: int):
    from coalora.space import PRESETS
    from coalora.quant.setting import QuantSetting

    p = PRESETS["nf4"]
    return QuantSetting(bits, p.scale_bits, p.scale_format, p.block_size, p.scale_block_size)


def per_block(space, block_bits: list[int]):
    """Each block's 7 projections at its weight bits, the other fields as nf4."""
    from coalora.space import Configuration

    return Configuration(space, tuple(nf_setting(block_bits[m.block]) for m in space.matrices), "nf")


def block_edit(space, block: int, bits: int):
    bb = [4] * space.n_blocks
    bb[block] = bits
    return per_block(space, bb)


def random_block_bits(space, g: torch.Generator):
    p = -torch.log(torch.rand(len(BITS), generator=g).clamp_min(1e-12))  # Dirichlet(1,..,1)
    idx = torch.multinomial(p / p.sum(), space.n_blocks, replacement=True, generator=g)
    return per_block(space, [BITS[i] for i in idx.tolist()])


def plan(space) -> tuple[list[tuple], list[tuple]]:
    """-> (held-out, pool): lists of (config, category), disjoint, deterministic."""
    from coalora.search.allocate import allocate
    from coalora.search.costs import load_costs
    from coalora.space import PRESETS
    from coalora.quant.setting import FIELD_VALUES, QuantSetting
    from coalora.train.configs import stratified_nearest

    table = load_costs(space)
    if table is None:
        raise SystemExit("no committed cost table for this model (assets/costs)")
    g = torch.Generator().manual_seed(12)
    # ---- held-out
    held: list[tuple] = []
    edits = [(b, k) for b in range(space.n_blocks) for k in (2, 3, 8)]
    pick = torch.randperm(len(edits), generator=g)[:10].tolist()
    held_edits = {edits[i] for i in pick}
    for b, k in sorted(held_edits):
        held.append((block_edit(space, b, k), "edit"))
    for i in range(10):
        held.append((random_block_bits(space, g), "perblock"))
    for i in range(10):
        b = 2.4 + 6.0 * float(torch.rand(1, generator=g))
        held.append((stratified_nearest(space, b, seed=50_000 + i, tries=200), "mixture"))
    for i in range(10):
        b = 2.3 + 6.2 * float(torch.rand(1, generator=g))
        held.append((allocate(table, b, "fast").config, "alloc"))
    # ---- pool, per category
    cats: dict[str, list] = {k: [] for k in ("uniform", "alloc", "perblock", "sample", "mixture", "edit")}
    for name in ("nf2", "nf3", "nf4", "nf8", "min", "max"):
        cats["uniform"].append(space.preset(name))
    p4 = PRESETS["nf4"]
    for bits in BITS:
        for bs in FIELD_VALUES["block_size"]:
            cats["uniform"].append(space.uniform(QuantSetting(bits, p4.scale_bits, p4.scale_format, bs, p4.scale_block_size)))
        for sf in FIELD_VALUES["scale_format"]:
            cats["uniform"].append(space.uniform(QuantSetting(bits, 4, sf, 64, 256)))
    for b in torch.linspace(2.3, 8.5, 40).tolist():
        cats["alloc"].append(allocate(table, b, "fast").config)
    for b in torch.linspace(2.35, 8.45, 12).tolist():
        cats["alloc"].append(allocate(table, b, "ilp").config)
    for i in range(45):
        cats["perblock"].append(random_block_bits(space, g))
    cats["sample"].extend(space.sample(15, seed=7))
    for i in range(30):
        b = 2.3 + 6.2 * float(torch.rand(1, generator=g))
        cats["mixture"].append(stratified_nearest(space, b, seed=10_000 + i, tries=200))
    for b in range(space.n_blocks):
        for k in (2, 3, 8):
            if (b, k) not in held_edits:
                cats["edit"].append(block_edit(space, b, k))
    held_set = {c for c, _ in held}
    seen = set(held_set)
    lists = {}
    for k, v in cats.items():
        lists[k] = []
        for c in v:
            if c not in seen:
                seen.add(c)
                lists[k].append(c)
    pool: list[tuple] = []
    longest = max(len(v) for v in lists.values())
    for i in range(longest):  # round-robin: any prefix is balanced
        for k, v in lists.items():
            if i < len(v):
                pool.append((v[i], k))
    return held, pool


def measured_hashes(path: Path, sha: str, split_hash: str) -> set[str]:
    out = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if r.get("split_hash") == split_hash and (r.get("extra") or {}).get("checkpoint_sha256") == sha:
                out.add(r.get("config_hash"))
    return out


def write_pool_json(space, records: Path, out: Path, meta: dict) -> int:
    """The pool file the app and `coalora search` read: POOL_FORMAT with the measurement meta."""
    from coalora.metrics import to_error
    from coalora.search.loop import Pool

    pool = Pool(space)
    seen = set()
    for line in records.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("split_hash") != meta["split_hash"] or (r.get("extra") or {}).get("checkpoint_sha256") != meta["checkpoint_sha256"]:
            continue
        if r["config_hash"] in seen:
            continue
        seen.add(r["config_hash"])
        pool.add([space.from_dict(r["config"])], [to_error(r["metric"], float(r["value"]))])
    pool.save(out, meta)
    return len(pool)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--task", default=None, help="default: the checkpoint's training task (sst2 when it names none)")
    ap.add_argument("--pool-records", type=Path, default=POOL_RECORDS)
    ap.add_argument("--pool-json", type=Path, default=POOL_JSON)
    ap.add_argument("--heldout", type=Path, default=HELDOUT_RECORDS)
    ap.add_argument("--only", choices=["pool", "heldout"], default=None)
    ap.add_argument("--limit", type=int, default=None, help="measure at most N new configurations")
    ap.add_argument("--plan", action="store_true", help="print the plan's sizes and exit (no measurement)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--shard", default=None, help="K/N: measure only every N-th configuration from the K-th "
                    "(run N processes side by side; they append to the same files)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 keeps a shared, busy machine from oversubscribing its cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from coalora.eval import iter_eval
    from coalora.eval.harness import quick_split
    from coalora.data import task_spec
    from coalora.lora import load_for_eval, read_metadata
    from coalora.lora.checkpoint import training_task
    from coalora.metrics import to_error
    from coalora.results import ResultRecord, append_record
    from coalora.search.objective import describe

    folder, meta = read_metadata(args.checkpoint)
    sha = meta["tensors"]["sha256"]
    task = args.task or training_task(meta)
    metric = task_spec(task).metric
    split = quick_split(task, int(((meta.get("training") or {}).get("args") or {}).get("split_seed", 0)))
    loaded = load_for_eval(args.checkpoint, meta["base_model"]["name"], dtype=torch.float32, quiet=True)
    model, tok, space = loaded.model, loaded.tokenizer, loaded.model.space
    t0 = time.perf_counter()
    held, pool = plan(space)
    print(f"plan: {len(held)} held-out, {len(pool)} pool configurations ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if args.plan:
        from collections import Counter

        print(json.dumps({"heldout": Counter(k for _, k in held), "pool": Counter(k for _, k in pool)}))
        return 0
    from coalora.lora.checkpoint import checkpoint_label

    pool_meta = {"checkpoint": checkpoint_label(folder, meta), "checkpoint_sha256": sha, **describe(split, "error"),
                 "rows": len(split), "metric": metric, "source": "bench/build_pool.py"}
    jobs = []
    if args.only != "pool":
        jobs.append((args.heldout, held, "heldout"))
    if args.only != "heldout":
        jobs.append((args.pool_records, pool, "pool"))
    left = args.limit
    for path, items, set_name in jobs:
        done = measured_hashes(path, sha, split.manifest_hash)
        todo = [(c, k) for c, k in items if c.hash not in done]
        if args.shard:
            k_, n_ = (int(x) for x in args.shard.split("/"))
            todo = [t for i, t in enumerate(items) if i % n_ == k_ and t[0].hash not in done]
        if left is not None:
            todo = todo[:left]
        bar = tqdm(todo, desc=f"measure {set_name} ({len(done)} done)", unit="config", file=sys.stderr)
        for i, (c, cat) in enumerate(bar):
            t1 = time.perf_counter()
            model.set_configuration(c)
            est = next(iter(iter_eval(model, tok, split, dtype=args.dtype, stream=False)))
            rec = ResultRecord.from_estimate(
                est, config=c, model=space.model_name, split=split, method=loaded.method, checkpoint=loaded.checkpoint,
                seconds=round(time.perf_counter() - t1, 3),
                extra={"role": "select", "set": set_name, "category": cat, "part": split.part,
                       "checkpoint_sha256": sha, "f1": to_error(metric, est.value), "objective": "error",
                       "source": "bench/build_pool.py"})
            append_record(path, rec)
            bar.set_postfix_str(f"{cat} {c.avg_bits:.2f} b {metric} {est.value:.3f}")
            if set_name == "pool" and (i + 1) % 10 == 0:
                write_pool_json(space, path, args.pool_json, pool_meta)
        if left is not None:
            left -= len(todo)
        if set_name == "pool" and path.is_file():
            n = write_pool_json(space, path, args.pool_json, pool_meta)
            print(f"{args.pool_json}: {n} configurations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
