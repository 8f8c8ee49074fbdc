"""`coalora allocate`: a configuration for an average bit budget (ILP or GP)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from coalora.cli.common import add_model_arg, check_writable_file
from coalora.errors import ConfigError


def register(sub) -> None:
    from coalora.search.allocate import METHOD_HELP, METHODS

    p = sub.add_parser(
        "allocate",
        help="choose a per-matrix configuration for an average bit budget",
        description=(
            "ilp: the integer program of LQ-LoRA (least total quantization error, exactly one "
            "setting per matrix, avg bits <= budget), solved with HiGHS; fast: its Lagrangian "
            "relaxation (the app's default); the error table is "
            "cached (assets/ for the default model, else computed once, minutes). gp: the "
            "configuration a GP fitted to evaluated configurations (--pool, or a checkpoint's "
            "pool) predicts best under the budget."
        ),
    )
    add_model_arg(p, checkpoint="optional")
    # Parsed by check_budget (not type=float), so a bad value gets the same one-line message as in the app.
    p.add_argument("--budget", required=True, help="average bits per weight, 2.0322 to 8.625")
    p.add_argument("--method", choices=METHODS, default="ilp",
                   help="; ".join(f"{m}: {h}" for m, h in METHOD_HELP.items()) + " (default ilp)")
    p.add_argument("--checkpoint", help="trained checkpoint folder, or a shipped one by name ('default', 'lm'): its search pool (`coalora search`) feeds --method gp")
    p.add_argument("--pool", help="evaluated configurations for --method gp: result records (JSON lines) or a saved pool")
    p.add_argument("--task", help="with --pool: use only records of this task")
    p.add_argument("--weighting", choices=("mse", "fisher"), default="mse",
                   help="ilp cost: plain squared error, or Fisher-weighted from LAMBADA text (default mse)")
    p.add_argument("--target", default="coalora",
                   help="deployment target (docs/targets.md): coalora (the NF-k space, default), bnb or gguf; "
                   "fast/ilp then choose among each matrix's legal formats of that target, costed in its real "
                   "bytes, and --budget is its real bits per weight")
    p.add_argument("--out", help="write the configuration JSON here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _space_and_pool(args: argparse.Namespace):
    """-> (the model's configuration space from its config alone, the checkpoint's default pool
    file or None). With --checkpoint the model is its base (--model: where from; refused when
    its projections differ from the checkpoint's), else --model (default smollm2-135m)."""
    from coalora.cli.common import model_name_or_default
    from coalora.cli.search import default_paths
    from coalora.lora.checkpoint import checkpoint_space, read_metadata
    from coalora.models import build_space_for

    if not args.checkpoint:
        return build_space_for(model_name_or_default(args.model)), None
    folder, meta = read_metadata(args.checkpoint)  # resolves 'default'; clear errors for bad folders
    return checkpoint_space(folder, meta, args.model), default_paths(args.checkpoint, folder)[0]


def _run_target(args: argparse.Namespace, t0: float) -> int:
    """--target bnb/gguf: fast or ilp over the target's legal formats (coalora.search.target_alloc)."""
    from coalora.quant.targets import get_target
    from coalora.search.target_alloc import StorageTable, allocate_target, check_target_budget, get_target_costs

    get_target(args.target)  # an unknown target: one line listing the known ones
    if args.method == "gp":
        raise ConfigError(f"--method gp does not support --target {args.target} yet: its GP is fitted on NF-k "
                          "evaluations (no pool of target configurations); use --method fast or ilp")
    if args.out is not None:
        check_writable_file(args.out, "--out")
    space, _ = _space_and_pool(args)
    storage = StorageTable.build(space, args.target)
    args.budget = check_target_budget(storage, args.budget)  # shapes only: before any weight is loaded
    table = get_target_costs(space, args.target, weighting=args.weighting, progress=not args.json)
    got = allocate_target(table, args.budget, args.method)
    config = got.config
    out = {"model": space.model_name, "weighting": args.weighting, "costs": table.meta.get("source", "computed"),
           **got.to_dict(), "packed_bytes": config.storage_bytes, "config_hash": config.hash,
           "seconds": round(time.perf_counter() - t0, 3)}
    return _finish(args, config, out, f"{args.method} ({args.target}): avg bits {config.avg_bits:.4f} (budget "
                   f"{args.budget:g}), {config.storage_bytes:,} stored bytes, formats "
                   + ", ".join(f"{f} x{n}" for f, n in out["formats"].items()) + f", config {config.hash}")


def _finish(args: argparse.Namespace, config, out: dict, line: str) -> int:
    """Save the configuration to --out (if given), then print `out` (--json) or `line`."""
    if args.out:
        config.save(args.out)
        out["out"] = args.out
    print(json.dumps(out) if args.json else line + (f" -> {args.out}" if args.out else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    from coalora.errors import ConfigError
    from coalora.search.allocate import allocate, check_budget
    from coalora.search.pareto import BITS_MIN

    t0 = time.perf_counter()
    if args.target != "coalora":
        return _run_target(args, t0)
    # Fail before loading anything: the budget (one check with the app's) and the output path.
    args.budget = check_budget(args.budget, BITS_MIN)
    if args.out is not None:
        check_writable_file(args.out, "--out")
    space, ckpt_pool = _space_and_pool(args)
    out: dict = {"model": space.model_name, "method": args.method, "budget": args.budget}
    candidates: tuple = ()
    if args.method in ("fast", "ilp"):
        from coalora.search.costs import get_costs

        source = get_costs(space, weighting=args.weighting, progress=not args.json)
        out.update(weighting=args.weighting, costs=source.meta.get("source", "computed"))
    else:
        from coalora.search.gp import fit_surrogate
        from coalora.search.loop import pool_from_records

        pool_path = Path(args.pool) if args.pool else ckpt_pool
        if pool_path is None or not pool_path.exists():
            raise ConfigError(
                "--method gp needs evaluated configurations to fit its GP: give --pool FILE (result records, "
                "JSON lines) or a --checkpoint DIR holding pool.json"
                + (f"; {pool_path.name!r} does not exist" if pool_path else "; none was given")
            )
        pool = pool_from_records(pool_path, space, args.task)
        source, candidates = fit_surrogate(pool.configs, pool.values, space), pool.configs
        out.update(pool=str(pool_path))
    got = allocate(source, args.budget, args.method, candidates=candidates)
    config = got.config
    out.update({k: v for k, v in got.details.items() if k != "budget"})
    out.update(packed_bytes=config.packed_bytes, config_hash=config.hash, seconds=round(time.perf_counter() - t0, 3))
    return _finish(args, config, out, f"{args.method}: avg bits {config.avg_bits:.4f} (budget {args.budget:g}), "
                   f"{config.packed_bytes:,} packed bytes, config {config.hash}")
