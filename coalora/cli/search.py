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

    coalora search --checkpoint default --target gguf --iterations 2 --batch 2

--target bnb/gguf/torchao searches inside that deployment target instead (its own pool and
front files, pool-TARGET.json / front-TARGET.json): configurations of the target's legal
formats, bits its real bits per weight, proposals from a discrete candidate set
(coalora.search.target_search; docs/targets.md, "Search within a target").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
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
# The NF-k acquisition's local search (coalora.search.acquisition.propose); --target has none.
DEFAULT_STARTS, DEFAULT_STEPS = 5, 20
_NFK_ONLY = {"starts": "start points of the NF-k acquisition's local search",
             "steps": "steps of the NF-k acquisition's local search"}


def register(sub) -> None:
    from coalora.data import TASKS
    from coalora.quant.targets import TARGETS
    from coalora.space import DEFAULT_TARGET
    from coalora.results import DEFAULT_RECORDS
    from coalora.search.objective import DEFAULT_DEV_ROWS, OBJECTIVES

    p = sub.add_parser(
        "search",
        help="grow a pool of evaluated configurations for a checkpoint; write the GP-predicted front",
        description=(
            "Pareto search over quantization configurations for a trained CoA-LoRA checkpoint: "
            "a BoTorch GP of f1 (the adapted model's dev error or loss) and exact bits, log-EHVI "
            "proposals, every evaluated configuration appended as a result record. Ends by "
            "writing the predicted front (best predicted configuration per bit budget, mean +- 2 std). "
            "With --target bnb/gguf/torchao, the same search inside one deployment target: its legal formats, "
            "its real bits per weight, its own pool and front files."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="a CoA-LoRA checkpoint folder, or a shipped one by name ('default', 'lm': assets/checkpoints/NAME)")
    from coalora.cli.common import add_device_arg, add_model_arg

    add_model_arg(p, checkpoint="required")
    p.add_argument("--task", default=None, help=f"one of {', '.join(TASKS)} (default: the checkpoint's training task; sst2 when it names none)")
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
    p.add_argument("--target", default=DEFAULT_TARGET,
                   help="the space searched: coalora (the NF-k space, default) or a deployment target, "
                   f"{', '.join(TARGETS)} (docs/targets.md, 'Search within a target'): every configuration then "
                   "holds one of the target's formats per matrix (legal for its shape), bits are its real bits "
                   "per weight, the initial pool is the target's ILP allocations at --budgets, and each round "
                   "picks --batch configurations by log-EHVI from a discrete candidate set (allocations over the "
                   "target's bit range, uniform formats, block / module-type format moves of the current front); "
                   "its GP sees average bits and the log quantization error of the target's error table. "
                   "Pool and front default to pool-TARGET.json / front-TARGET.json beside the NF-k ones")
    p.add_argument("--budgets", default=None,
                   help="comma-separated bit budgets whose allocator configurations seed a new pool "
                   f"(default {','.join(f'{b:g}' for b in INITIAL_BUDGETS)}; with --target: real bits per weight "
                   "inside the target's range, default its least bits and those of each quantized format uniform)")
    p.add_argument("--no-initial", action="store_true", help="do not add the training set and allocator configurations")
    p.add_argument("--starts", type=int, default=None,
                   help=f"acquisition local-search start points per proposal (default {DEFAULT_STARTS}; "
                   "NF-k search only)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"acquisition local-search steps per start (default {DEFAULT_STEPS}; NF-k search only)")
    p.add_argument("--mc-samples", type=int, default=64, help="Monte-Carlo samples of the log-EHVI (default 64)")
    p.add_argument("--seed", type=int, default=0, help="search seed (GP fit, acquisition; default 0)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="compute precision for --objective error")
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def default_paths(checkpoint: str, folder: Path, target: str = "coalora") -> tuple[Path, Path]:
    """(pool, front) default files of a checkpoint; a deployment target's search has its own
    (pool-TARGET.json, front-TARGET.json beside them), never the NF-k ones the app reads."""
    if checkpoint == "default":
        pool, front = DEFAULT_POOL, DEFAULT_FRONT
    else:
        pool, front = folder / "pool.json", folder / "front.json"
    if target == "coalora":
        return pool, front
    return pool.with_name(f"pool-{target}.json"), pool.with_name(f"front-{target}.json")


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
    # A pool of another space (NF-k vs a deployment target, or two targets) is never mixed in.
    have, want = data.get("target", "coalora"), expected.get("target", "coalora")
    if have != want:
        raise ConfigError(f"--pool {str(path)!r} holds configurations of target {have!r}, this search is over "
                          f"target {want!r}; give another --pool (a new file starts a new pool)")
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


def parse_target_budgets(text: str | None, storage) -> list[float]:
    """--budgets under --target: real bits per weight inside the target's range (`storage`, a
    coalora.search.target_alloc.StorageTable), default target_search.default_budgets.
    ConfigError naming the item, the target and its range."""
    from coalora.search.target_alloc import check_target_budget
    from coalora.search.target_search import default_budgets

    if text is None:
        return default_budgets(storage)
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--budgets item {item!r} is not a number; give real bits per weight of target "
                              f"{storage.target} like {storage.min_bits + 0.5:.2f}") from None
        try:
            out.append(check_target_budget(storage, value))
        except ConfigError as e:
            raise ConfigError(f"--budgets item {item!r} for --target {storage.target}: {e}") from None
    return out


def check_target_args(args: argparse.Namespace) -> None:
    """--target: a known target, and none of the NF-k-only options (ConfigError naming them)."""
    from coalora.quant.targets import TARGETS

    if args.target not in TARGETS:
        raise ConfigError(f"--target {args.target!r} is unknown; allowed values are coalora (the NF-k space, "
                          f"the default), {', '.join(TARGETS)}")
    for name, what in _NFK_ONLY.items():
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name} {getattr(args, name)} is an option of the NF-k search ({what}); "
                              f"--target {args.target} picks from a discrete candidate set: drop --{name}")


def initial_configs(space, meta: dict[str, Any], budgets: list[float]) -> tuple[list, str]:
    """The NF-k part of the checkpoint's training set plus allocator configurations at
    `budgets`. A targets-aware training set (`coalora train --targets`) also holds deployment-
    target configurations: the NF-k search, its GP and its front never take those."""
    from coalora.space import DEFAULT_TARGET
    from coalora.train.configs import configs_at_bits

    train_set = [space.from_dict(c) for c in (meta.get("training") or {}).get("train_set") or []]
    nf = [c for c in train_set if c.target == DEFAULT_TARGET]
    alloc, source = configs_at_bits(space, budgets)
    left = f" (its {len(train_set) - len(nf)} deployment-target configurations left out)" if len(nf) < len(train_set) else ""
    return list(dict.fromkeys(nf + alloc)), f"{len(nf)} training-set{left} + {len(alloc)} {source}"


@dataclass
class _Measured:
    """What a search's f1 values mean and where they go, settled before any weight loads."""

    folder: Path
    meta: dict[str, Any]
    training: dict[str, Any]
    task: str
    split: Any  # coalora.data.Split: the fixed dev batch
    sha: str | None
    pool_meta: dict[str, Any]
    pool_path: Path
    front_path: Path


def _measured(args: argparse.Namespace) -> _Measured:
    """Checkpoint metadata, task, dev batch, pool / front paths and the pool's identity
    (checkpoint, batch, objective, target); a --pool measured otherwise is refused here."""
    from coalora.data import task_spec
    from coalora.lora import read_metadata
    from coalora.lora.checkpoint import checkpoint_label, training_task
    from coalora.search.objective import describe, dev_batch
    from coalora.space import DEFAULT_TARGET

    folder, meta = read_metadata(args.checkpoint)
    training = meta.get("training") or {}
    task = args.task or training_task(meta)  # as eval and the app: sst2 when the checkpoint names none
    task_spec(task)  # DataError for an unknown task
    split_seed = int((training.get("args") or {}).get("split_seed", 0))
    split = dev_batch(task, args.dev_rows, split_seed)
    pool_path, front_path = default_paths(args.checkpoint, folder, args.target)
    pool_path = Path(args.pool) if args.pool else pool_path
    front_path = Path(args.front) if args.front else front_path
    sha = meta["tensors"].get("sha256")
    pool_meta = {"checkpoint": checkpoint_label(folder, meta), "checkpoint_sha256": sha, **describe(split, args.objective)}
    if args.target != DEFAULT_TARGET:
        pool_meta["target"] = args.target  # NF-k pools keep their fields exactly as before
    if pool_path.exists():
        check_pool_file(pool_path, pool_meta)
    return _Measured(folder, meta, training, task, split, sha, pool_meta, pool_path, front_path)


def _objective(args: argparse.Namespace, model, tok, m: _Measured, extra: dict[str, Any] | None = None):
    """The dev-row black box (coalora.search.objective.DevObjective); it builds each point's
    ResultRecord (ResultRecord.from_estimate) with these stamps."""
    from coalora.lora.checkpoint import training_method
    from coalora.train.objective import dev_objective

    return dev_objective(model, tok, m.split, args.objective, args.dtype,
                         max_length=int((m.training.get("args") or {}).get("max_length", 128)),
                         progress=not args.json, method=training_method(m.meta),
                         checkpoint=m.pool_meta["checkpoint"],
                         extra={"source": "coalora search", "role": "select", "search_seed": args.seed,
                                "checkpoint_sha256": m.sha, **(extra or {})})


def run(args: argparse.Namespace) -> int:
    from coalora.lora import load_checkpoint
    from coalora.results import append_record
    from coalora.search.front import DEFAULT_BUDGETS, predicted_front
    from coalora.train.configs import configs_at_bits
    from coalora.search.loop import Pool, search
    from coalora.space import DEFAULT_TARGET

    t0 = time.perf_counter()
    if args.iterations < 0:
        raise ConfigError(f"--iterations must be >= 0, got {args.iterations}")
    if args.target != DEFAULT_TARGET:
        check_target_args(args)
    args.starts = DEFAULT_STARTS if args.starts is None else args.starts
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    for name in ("batch", "starts", "steps", "mc_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.target != DEFAULT_TARGET:
        return run_target(args, t0)
    budgets = parse_budgets(args.budgets if args.budgets is not None else ",".join(f"{b:g}" for b in INITIAL_BUDGETS))
    from coalora.device import place, resolve_device

    device = resolve_device(args.device)  # before the model loads: one line when CUDA is missing
    # Everything that can be checked without the model is checked first.
    m = _measured(args)
    folder, pool_path, pool_meta = m.folder, m.pool_path, m.pool_meta

    model, tok, meta = load_checkpoint(folder, quiet=args.json, base_model=args.model)
    place(model, device)
    space = model.space
    pool = Pool.load(pool_path, space) if pool_path.exists() else Pool(space)
    n_before = len(pool)
    initial, initial_source = ([], "none (--no-initial)") if args.no_initial else initial_configs(space, meta, budgets)
    objective = _objective(args, model, tok, m)

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
    return _finish(args, m, pool, result, front, n_before, initial_source, t0)


def run_target(args: argparse.Namespace, t0: float) -> int:
    """`coalora search --target T`: the Pareto search inside one deployment target
    (coalora.search.target_search), on the same dev rows, records and pool / front files as
    the NF-k search (a pool of its own, stamped with the target)."""
    from coalora.device import place, resolve_device
    from coalora.lora import load_checkpoint
    from coalora.lora.checkpoint import checkpoint_space
    from coalora.results import append_record
    from coalora.search.loop import Pool
    from coalora.search.target_alloc import StorageTable, get_target_costs
    from coalora.search.target_search import (
        TARGET_DESIGN, allocation_configs, search_target, target_candidates, target_front,
    )

    device = resolve_device(args.device)  # before the model loads: one line when CUDA is missing
    m = _measured(args)
    # The target's bit range from the base model's shapes alone: --budgets fails before any weight loads.
    space = checkpoint_space(m.folder, m.meta, args.model)
    budgets = parse_target_budgets(args.budgets, StorageTable.build(space, args.target))
    table = get_target_costs(space, args.target, progress=not args.json)  # shipped / cached, else computed once
    candidates = target_candidates(table)

    model, tok, _ = load_checkpoint(m.folder, quiet=args.json, base_model=args.model)
    place(model, device)
    model.space.check_fingerprint(space.fingerprint, "the target's cost table", space.model_name)
    pool = Pool.load(m.pool_path, model.space) if m.pool_path.exists() else Pool(model.space)
    n_before = len(pool)
    if args.no_initial:
        initial, initial_source = [], "none (--no-initial)"
    else:
        initial = allocation_configs(table, budgets)
        initial_source = f"{len(initial)} {args.target} ILP allocations at {len(budgets)} budgets"
    objective = _objective(args, model, tok, m, {"target": args.target})

    def on_evaluated(configs, values) -> None:
        for record in objective.last:
            append_record(args.records, record)
        pool.save(m.pool_path, m.pool_meta)  # after every batch: an interrupted search keeps its points

    result = search_target(objective, table, initial, args.iterations, args.batch, pool, candidates,
                           n_samples=args.mc_samples, seed=args.seed, on_evaluated=on_evaluated,
                           progress=not args.json)
    pool.save(m.pool_path, m.pool_meta)
    if result.surrogate is None:
        raise ConfigError(f"the pool holds {len(pool)} configuration(s); the GP needs at least 2 "
                          "(drop --no-initial or run more --iterations)")
    front = target_front(result.surrogate, candidates, objective=args.objective)
    costs = _portable(Path(table.meta["source"])) if "source" in table.meta else "computed"
    extra = {"target": args.target, "budgets": budgets, "candidates": candidates.describe(), "costs": costs,
             "gp_features": f"{TARGET_DESIGN}: avg bits, log total quantization error of the {args.target} error table"}
    return _finish(args, m, pool, result, front, n_before, initial_source, t0, extra)


def _finish(args: argparse.Namespace, m: _Measured, pool, result, front, n_before: int, initial_source: str,
            t0: float, extra: dict[str, Any] | None = None) -> int:
    """Stamp the predicted front with what its f1 means and what it was fitted on, save it,
    then print the summary (one JSON object with --json). `extra`: the target search's fields
    (in the front's meta and the output)."""
    from coalora.search.front import PredictedFront

    extra = extra or {}
    pool_path, front_path, task, split = m.pool_path, m.front_path, m.task, m.split
    observed = [{"avg_bits": c.avg_bits, "f1": v, "config_hash": c.hash} for c, v in zip(pool.configs, pool.values)]
    front = PredictedFront(front.points, front.space, front.objective, {
        **front.meta, **m.pool_meta, "f1": _f1_meaning(args.objective, task, len(split)),
        "metric": _metric_of(args.objective, task),  # the app plots 1 - f1 on its accuracy axis
        "rows": len(split), "gp_design": result.surrogate.design, "gp_noise": result.surrogate.noise,
        "gp_noise_std": result.surrogate.noise_std,
        "pool": _portable(pool_path), "observed": observed,
        "selected": [c.hash for c in result.selected], **extra})
    front.save(front_path)

    out = {"checkpoint": str(m.folder), "task": task, "objective": args.objective, "dev_rows": len(split),
           **({"target": extra["target"]} if "target" in extra else {}),
           "pool": str(pool_path), "pool_size": len(pool), "evaluated": len(pool) - n_before,
           "initial": initial_source, "selected": len(result.selected), "front": str(front_path),
           "front_points": len(front.points), "records": args.records, "history": result.history,
           **{k: v for k, v in extra.items() if k in ("budgets", "candidates")},
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(out))
        return 0
    if "target" in extra:
        print(f"target    {extra['target']}: {extra['candidates']}")
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
    return task_spec(task).metric


def _f1_meaning(kind: str, task: str, n: int) -> str:
    from coalora.data import task_spec

    if kind == "loss":
        return f"training loss (nats per target token) on {n} {task} dev rows"
    metric = "bits per byte" if task_spec(task).kind == "lm" else "1 - accuracy"
    return f"{metric} on {n} {task} dev rows"
