"""`coalora search`: grow a pool of evaluated configurations for a trained checkpoint, then
write the GP-predicted front (the file the app plots).

    coalora search --checkpoint default --task sst2 --iterations 3 --batch 4

f1 of a configuration = 1 - accuracy (or the loss, --objective loss) of the checkpoint's
adapted model under it, on a fixed batch of the task's `dev` part: by default the quick-eval
rows (coalora.eval.harness.quick_split; docs/design.md, "Evaluation"), the rows the app's
quick eval and `coalora eval --quick` score. The first call seeds the
pool with the checkpoint's training set and allocator configurations at a few budgets;
each round fits the GP, proposes --batch configurations by log-EHVI and evaluates them.
Every evaluated configuration is appended as a result record and the pool is saved after
every batch, so a later call (or an interrupted one) continues it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from coalora.errors import ConfigError, ModelMismatchError

_ASSETS = Path(__file__).resolve().parents[2] / "assets" / "front"
DEFAULT_FRONT = _ASSETS / "default.json"  # the default checkpoint's predicted front (the app reads it)
DEFAULT_POOL = _ASSETS / "pool.json"  # the default checkpoint's pool
# Allocator configurations added to a new pool: bit budgets spread over the useful range.
INITIAL_BUDGETS = (2.5, 3.0, 3.5, 4.25, 5.0, 6.0, 7.25, 8.5)
# Pool fields that must agree before a pool is continued (else its f1 values mean something else).
_POOL_KEYS = ("checkpoint_sha256", "task", "objective", "part", "dev_rows", "split_seed", "split_hash")


def register(sub) -> None:
    from coalora.data import TASKS
    from coalora.results import DEFAULT_RECORDS
    from coalora.search.objective import DEFAULT_DEV_ROWS, OBJECTIVES

    p = sub.add_parser(
        "search",
        help="grow a pool of evaluated configurations for a checkpoint; write the GP-predicted front",
        description=(
            "Pareto search over quantization configurations for a trained CoA-LoRA checkpoint: "
            "a BoTorch GP of f1 (the adapted model's dev error or loss) and exact bits, log-EHVI "
            "proposals, every evaluated configuration appended as a result record. Ends by "
            "writing the predicted front (best predicted configuration per bit budget, mean +- 2 std)."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="a CoA-LoRA checkpoint folder, or 'default' (assets/checkpoints/default)")
    from coalora.cli.common import add_device_arg, add_model_arg

    add_model_arg(p, checkpoint="required")
    p.add_argument("--task", default=None, help=f"one of {', '.join(TASKS)} (default: the checkpoint's training task)")
    p.add_argument("--pool", default=None, help=f"pool file to continue and save (default: {DEFAULT_POOL} for "
                   "--checkpoint default, else CHECKPOINT/pool.json)")
    p.add_argument("--iterations", type=int, default=3, help="search rounds (default 3; 0 = only the initial pool)")
    p.add_argument("--batch", type=int, default=4, help="configurations proposed per round (default 4)")
    p.add_argument("--dev-rows", type=int, default=None,
                   help=f"rows of the dev part in the fixed batch (default: the quick-eval rows, coalora.eval.harness.quick_split: min({DEFAULT_DEV_ROWS}, part size))")
    p.add_argument("--objective", choices=OBJECTIVES, default="error",
                   help="f1: error = 1 - accuracy (bits per byte for lambada), loss = training loss (default error)")
    p.add_argument("--records", default=str(DEFAULT_RECORDS), help=f"JSON-lines file to append records to (default {DEFAULT_RECORDS})")
    p.add_argument("--front", default=None, help=f"where to write the predicted front (default: {DEFAULT_FRONT} for "
                   "--checkpoint default, else CHECKPOINT/front.json)")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in INITIAL_BUDGETS),
                   help="comma-separated bit budgets whose allocator configurations seed a new pool "
                   f"(default {','.join(f'{b:g}' for b in INITIAL_BUDGETS)})")
    p.add_argument("--no-initial", action="store_true", help="do not add the training set and allocator configurations")
    p.add_argument("--starts", type=int, default=5, help="acquisition local-search start points per proposal (default 5)")
    p.add_argument("--steps", type=int, default=20, help="acquisition local-search steps per start (default 20)")
    p.add_argument("--mc-samples", type=int, default=64, help="Monte-Carlo samples of the log-EHVI (default 64)")
    p.add_argument("--seed", type=int, default=0, help="search seed (GP fit, acquisition; default 0)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="compute precision for --objective error")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def default_paths(checkpoint: str, folder: Path) -> tuple[Path, Path]:
    """(pool, front) default files of a checkpoint."""
    if checkpoint == "default":
        return DEFAULT_POOL, DEFAULT_FRONT
    return folder / "pool.json", folder / "front.json"


def _portable(path: Path) -> str:
    """How a saved file names another: relative to the repository when inside it (a shipped
    front must not carry this machine's absolute paths), else the file name."""
    root = _ASSETS.parents[1]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else resolved.name


def check_pool_file(path: Path, expected: dict[str, Any]) -> None:
    """Refuse to continue a pool whose f1 values were measured differently (ModelMismatchError)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--pool {str(path)!r} is not a readable JSON pool file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--pool {str(path)!r} is not a pool file (a JSON object)")
    for key in _POOL_KEYS:
        if data.get(key) != expected[key]:
            what = "checkpoint (tensor sha256)" if key == "checkpoint_sha256" else key
            raise ModelMismatchError(
                f"--pool {str(path)!r} was measured with {what} {data.get(key)!r}, this run uses {expected[key]!r}; "
                "give another --pool (a new file starts a new pool)")


def parse_budgets(text: str) -> list[float]:
    """'2.5,4,8' -> [2.5, 4.0, 8.0]; ConfigError naming the bad item."""
    from coalora.search.allocate import check_budget
    from coalora.search.pareto import BITS_MIN

    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--budgets item {item!r} is not a number; give bit budgets like 2.5,4,8") from None
        out.append(check_budget(value, BITS_MIN))
    return out


def initial_configs(space, meta: dict[str, Any], budgets: list[float]) -> tuple[list, str]:
    """The checkpoint's training set plus allocator configurations at `budgets`."""
    from coalora.train.configs import configs_at_bits

    train_set = [space.from_dict(c) for c in (meta.get("training") or {}).get("train_set") or []]
    alloc, source = configs_at_bits(space, budgets)
    return list(dict.fromkeys(train_set + alloc)), f"{len(train_set)} training-set + {len(alloc)} {source}"


def run(args: argparse.Namespace) -> int:
    from coalora.data import task_spec
    from coalora.lora import load_checkpoint, read_metadata
    from coalora.lora.checkpoint import checkpoint_label
    from coalora.results import append_record
    from coalora.search.front import DEFAULT_BUDGETS, predicted_front, PredictedFront
    from coalora.train.configs import configs_at_bits
    from coalora.search.loop import Pool, search
    from coalora.search.objective import describe, dev_batch
    from coalora.train.objective import dev_objective

    t0 = time.perf_counter()
    if args.iterations < 0:
        raise ConfigError(f"--iterations must be >= 0, got {args.iterations}")
    for name in ("batch", "starts", "steps", "mc_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    budgets = parse_budgets(args.budgets)
    from coalora.device import place, resolve_device

    device = resolve_device(args.device)  # before the model loads: one line when CUDA is missing
    # Everything that can be checked without the model is checked first.
    folder, meta = read_metadata(args.checkpoint)
    training = meta.get("training") or {}
    task = args.task or training.get("task")
    if task is None:
        raise ConfigError("--task is required: the checkpoint does not name its training task")
    task_spec(task)  # DataError for an unknown task
    split_seed = int((training.get("args") or {}).get("split_seed", 0))
    split = dev_batch(task, args.dev_rows, split_seed)
    pool_path, front_path = default_paths(args.checkpoint, folder)
    pool_path = Path(args.pool) if args.pool else pool_path
    front_path = Path(args.front) if args.front else front_path
    sha = meta["tensors"].get("sha256")
    pool_meta = {"checkpoint": checkpoint_label(folder, meta), "checkpoint_sha256": sha, **describe(split, args.objective)}
    if pool_path.exists():
        check_pool_file(pool_path, pool_meta)

    model, tok, meta = load_checkpoint(folder, quiet=args.json, base_model=args.model)
    place(model, device)
    space = model.space
    pool = Pool.load(pool_path, space) if pool_path.exists() else Pool(space)
    n_before = len(pool)
    initial, initial_source = ([], "none (--no-initial)") if args.no_initial else initial_configs(space, meta, budgets)
    # The objective builds each point's ResultRecord (ResultRecord.from_estimate) with these stamps.
    objective = dev_objective(model, tok, split, args.objective, args.dtype,
                              max_length=int((training.get("args") or {}).get("max_length", 128)),
                              progress=not args.json, method=training.get("method", "coalora"),
                              checkpoint=pool_meta["checkpoint"],
                              extra={"source": "coalora search", "role": "select", "search_seed": args.seed,
                                     "checkpoint_sha256": sha})

    def on_evaluated(configs, values) -> None:
        for record in objective.last:
            append_record(args.records, record)
        pool.save(pool_path, pool_meta)  # after every batch: an interrupted search keeps its points

    result = search(objective, space, initial=initial, iterations=args.iterations, batch_size=args.batch,
                    pool=pool, n_starts=args.starts, max_steps=args.steps, n_samples=args.mc_samples, seed=args.seed,
                    on_evaluated=on_evaluated, progress=not args.json)
    pool.save(pool_path, pool_meta)
    if result.surrogate is None:
        raise ConfigError(f"the pool holds {len(pool)} configuration(s); the GP needs at least 2 "
                          "(drop --no-initial or run more --iterations)")
    # Candidates: the pool, plus the allocator's configuration at every budget of the front
    # (cheap, and strong where the GP follows the quantization error).
    front_alloc, _ = configs_at_bits(space, list(DEFAULT_BUDGETS))
    front = predicted_front(result.surrogate, candidates=list(pool.configs) + front_alloc, seed=args.seed,
                            objective=args.objective)
    observed = [{"avg_bits": c.avg_bits, "f1": v, "config_hash": c.hash} for c, v in zip(pool.configs, pool.values)]
    front = PredictedFront(front.points, space, front.objective, {
        **front.meta, **pool_meta, "f1": _f1_meaning(args.objective, task, len(split)),
        "metric": _metric_of(args.objective, task),  # the app plots 1 - f1 on its accuracy axis
        "rows": len(split), "gp_design": result.surrogate.design, "gp_noise": result.surrogate.noise,
        "gp_noise_std": result.surrogate.noise_std,
        "pool": _portable(pool_path), "observed": observed,
        "selected": [c.hash for c in result.selected]})
    front.save(front_path)

    out = {"checkpoint": str(folder), "task": task, "objective": args.objective, "dev_rows": len(split),
           "pool": str(pool_path), "pool_size": len(pool), "evaluated": len(pool) - n_before,
           "initial": initial_source, "selected": len(result.selected), "front": str(front_path),
           "front_points": len(front.points), "records": args.records, "history": result.history,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"pool      {pool_path}: {len(pool)} configurations ({out['evaluated']} evaluated now; initial: {initial_source})")
    print(f"f1        {front.meta['f1']}")
    best = min(range(len(pool)), key=lambda i: pool.values[i])
    print(f"best      f1 {pool.values[best]:.4f} at {pool.configs[best].avg_bits:.3f} bits ({pool.configs[best].hash})")
    print(f"selected  {len(result.selected)} configurations (segmented Pareto set)")
    print(f"front     {front_path}: {len(front.points)} budgets", file=sys.stdout)
    for p in front.points[:: max(1, len(front.points) // 6)]:
        print(f"          <= {p.budget:g} bits: f1 {p.mean:.4f} ± {2 * p.std:.4f} (2σ) at {p.avg_bits:.3f} bits")
    print(f"records   appended to {args.records} ({out['seconds']} s)")
    return 0


def _metric_of(kind: str, task: str) -> str:
    """The task metric that f1 encodes (f1 = 1 - accuracy for the error objective)."""
    from coalora.data import task_spec

    if kind == "loss":
        return "loss"
    return "bits_per_byte" if task_spec(task).kind == "lm" else "accuracy"


def _f1_meaning(kind: str, task: str, n: int) -> str:
    from coalora.data import task_spec

    if kind == "loss":
        return f"training loss (nats per target token) on {n} {task} dev rows"
    metric = "bits per byte" if task_spec(task).kind == "lm" else "1 - accuracy"
    return f"{metric} on {n} {task} dev rows"
