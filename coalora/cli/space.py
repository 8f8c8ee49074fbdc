"""`coalora space`: what a configuration costs on a model (avg bits, packed bytes, per block)."""

from __future__ import annotations

import argparse
import json

from coalora.cli.common import add_model_arg, config_help


def register(sub) -> None:
    p = sub.add_parser(
        "space",
        help="show a model's quantizable matrices and what a configuration costs",
        description=(
            "Resolve a configuration (preset or JSON file) against a model's 7 projections per "
            "block and print its average bits per weight and exact packed size. Only the "
            "model's config is read; no weights are loaded."
        ),
    )
    add_model_arg(p)
    p.add_argument("--config", default="nf4", help=config_help() + " (default: nf4)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a readable summary")
    p.add_argument(
        "--target", default=None,
        help="a deployment target (bnb, gguf, torchao; docs/targets.md): --config is then one of its formats "
        "for every matrix, a JSON file {\"default\": FMT, \"matrices\": {name: FMT}}, or a target "
        "configuration file (coalora allocate --target T --out FILE)",
    )
    p.set_defaults(func=run)


def _run_target(args: argparse.Namespace, space) -> int:
    """--target: check a target assignment against the model's shapes and print its real size."""
    import os

    from coalora import jsonfile
    from coalora.errors import ConfigError
    from coalora.quant.targets import get_target
    from coalora.quant.targets.assign import assign

    target = get_target(args.target)
    spec = args.config
    if spec.startswith(f"{target.name}:") and not os.path.lexists(spec):  # TARGET:FORMAT, as without --target
        spec = spec[len(target.name) + 1:]
    if spec.endswith(".json") or os.path.lexists(spec):
        spec = jsonfile.load(spec, source=f"assignment file {spec!r}")
    if isinstance(spec, dict) and "format" in spec:  # a whole target configuration file (coalora allocate --out)
        config = space.from_dict(spec)
        if config.target != target.name:
            raise ConfigError(f"configuration {args.config!r} is for target {config.target!r}, not {target.name!r}")
        spec = {"default": config.to_dict()["default"], "matrices": config.to_dict()["matrices"]}
    s = assign(target, [(m.name, m.shape) for m in space.matrices], spec).summary()
    s = {"model": space.model_name, "fingerprint": space.fingerprint, **s}
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"model        {s['model']}  (fingerprint {s['fingerprint']})  target {s['target']}")
    print(f"matrices     {s['n_matrices']}, {s['n_params']:,} weights; formats "
          + ", ".join(f"{f} x{n}" for f, n in s["formats"].items()))
    print(f"avg bits     {s['avg_bits']:.4f} per weight (scales included)")
    print(f"stored size  {s['storage_bytes']:,} bytes (+ {s['metadata_bytes']:,} bytes of code tables)")
    return 0


def run(args: argparse.Namespace) -> int:
    from coalora.models import build_space_for

    space = build_space_for(args.model)
    if args.target is not None:
        return _run_target(args, space)
    config = space.load(args.config)
    s = config.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"model        {s['model']}  (fingerprint {s['fingerprint']})")
    print(f"matrices     {s['n_matrices']} in {space.n_blocks} blocks, {s['n_params']:,} weights")
    print(f"avg bits     {s['avg_bits']:.4f} per weight (scales included)")
    print(f"packed size  {s['packed_bytes']:,} bytes ({s['packed_bytes'] / 2**20:.2f} MiB; "
          "embeddings, norms, LM head and adapters not counted)")
    print("per module type:")
    for t, b in s["per_module_type"].items():
        print(f"  {t:<10} {b:.3f} bits")
    print("per block:")
    blocks = list(s["per_block"].items())
    for i in range(0, len(blocks), 6):
        print("  " + "  ".join(f"{k:>2}: {v:.3f}" for k, v in blocks[i : i + 6]))
    return 0
