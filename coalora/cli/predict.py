"""`coalora predict`: the GP's predicted task metric of one configuration, from a checkpoint's
shipped pool (docs/design.md, "Search").

    coalora predict --checkpoint default --config nf3 --json
    -> {"mean": 0.78, "std": 0.02, "metric": "accuracy", "rows": 174, "split_hash": "...", ...}
    coalora predict --checkpoint lm --config nf4 --json          # LAMBADA: "metric": "bits_per_byte"

std is the predictive one: how a quick-eval measurement of the configuration scatters around
the mean (the GP's latent std plus its learned noise, which also holds what its features
miss); std_latent is the latent function's alone.
The GP (coalora.search.gp.fit_surrogate) is fitted on the pool written by `coalora search` or
bench/build_pool.py, whose points are quick-eval measurements (coalora.eval.harness.quick_split).
Refused, one line and exit 2: a configuration of another model, an unreadable pool, a pool
measured for another checkpoint (tensor sha256) or on other rows (split_hash) than this
checkpoint's quick-eval rows. No model weights are loaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from coalora.cli.common import add_model_arg, config_help
from coalora.errors import ConfigError, ModelMismatchError


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="the GP's predicted task metric (mean, std) of a configuration from a checkpoint's pool",
        description=(
            "Fit the GP on a checkpoint's pool of quick-eval measurements and print its predicted "
            "task metric (mean and std) for one quantization configuration. No model is run."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="a CoA-LoRA checkpoint folder, or a shipped one by name ('default', 'lm')")
    p.add_argument("--config", required=True, help=config_help())
    add_model_arg(p, checkpoint="required")
    p.add_argument("--pool", default=None, help="pool file (default: assets/front/pool.json for --checkpoint "
                   "default, else CHECKPOINT/pool.json)")
    p.add_argument("--task", default=None, help="task (default: the checkpoint's training task; sst2 when it names none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def read_pool_header(path: Path) -> dict:
    """The pool file as a dict (ConfigError when it cannot be read or is not a pool)."""
    from coalora.search.loop import POOL_FORMAT

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--pool {str(path)!r} is not a readable JSON pool file ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict) or data.get("format") != POOL_FORMAT:
        raise ConfigError(f"--pool {str(path)!r} is not a pool file (format {POOL_FORMAT!r})")
    return data


def check_pool(data: dict, path: Path, sha: str | None, split) -> None:
    """Refuse a pool measured for another checkpoint or on other rows (ModelMismatchError)."""
    if data.get("checkpoint_sha256") != sha:
        raise ModelMismatchError(f"pool {str(path)!r} was measured with checkpoint sha256 "
                                 f"{str(data.get('checkpoint_sha256'))[:16]!r}, not this checkpoint's {str(sha)[:16]!r}")
    if data.get("split_hash") != split.manifest_hash or data.get("task") != split.task:
        raise ModelMismatchError(
            f"pool {str(path)!r} was measured on {data.get('task')!r} rows with split_hash {data.get('split_hash')!r}, "
            f"not on the quick-eval rows ({split.task}, {len(split)} dev rows, split_hash {split.manifest_hash!r})")


def run(args: argparse.Namespace) -> int:
    from coalora.cli.search import default_paths
    from coalora.data import task_spec
    from coalora.eval.harness import quick_split
    from coalora.lora import read_metadata
    from coalora.metrics import from_error
    from coalora.lora.checkpoint import checkpoint_space, training_task
    from coalora.search.gp import fit_surrogate
    from coalora.search.loop import Pool

    t0 = time.perf_counter()
    folder, meta = read_metadata(args.checkpoint)
    training = meta.get("training") or {}
    task = args.task or training_task(meta)  # as eval and the app: sst2 when the checkpoint names none
    metric = task_spec(task).metric  # accuracy, or bits per byte for a language-modelling task
    split = quick_split(task, int((training.get("args") or {}).get("split_seed", 0)))
    pool_path = Path(args.pool) if args.pool else default_paths(args.checkpoint, folder)[0]
    header = read_pool_header(pool_path)
    check_pool(header, pool_path, (meta.get("tensors") or {}).get("sha256"), split)
    # The base model's config only (no weights): --model, else the name the checkpoint records
    # (else the pool's); refused when its projections differ from the checkpoint's.
    space = checkpoint_space(folder, meta, args.model or (meta["base_model"].get("name") or header.get("model")))
    config = space.load(args.config)  # ModelMismatchError for another model's configuration
    pool = Pool.load(pool_path, space)
    gp = fit_surrogate(pool.configs, pool.values, space)
    mean, std_latent = gp.predict([config])
    _, std = gp.predict([config], observation_noise=True)
    out = {"mean": from_error(metric, float(mean[0])), "std": float(std[0]), "std_latent": float(std_latent[0]),
           "metric": metric,
           "rows": len(split), "split_hash": split.manifest_hash, "n_observations": gp.n_observations,
           "task": task, "avg_bits": config.avg_bits, "config_hash": config.hash, "pool": str(pool_path),
           "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{task} {metric} {out['mean']:.4f} ± {out['std']:.4f} (GP, 1σ) for {config.hash} at {config.avg_bits:.3f} bits")
    print(f"from {gp.n_observations} quick-eval measurements ({len(split)} dev rows, split {split.manifest_hash}) in {pool_path}")
    return 0
