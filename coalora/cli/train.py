"""`coalora train`: CoA-LoRA and its baselines; runs under `accelerate launch` unchanged."""

from __future__ import annotations

import argparse
import json

from coalora.cli.common import add_model_arg, config_help


def register(sub) -> None:
    from coalora.train.args import METHODS, RECIPES, TrainArgs

    d = TrainArgs()
    p = sub.add_parser(
        "train",
        help="train CoA-LoRA (one adapter + θ for all configurations) or a baseline",
        description=(
            "Train into a run folder OUT: OUT/run.json (resolved options, code version), OUT/log.jsonl "
            "(loss per step, dev losses and searches per epoch), OUT/state/ (resumable checkpoint every "
            "--save-every steps), OUT/checkpoint/ (the final adapter, loadable by `coalora eval --checkpoint`). "
            "Multi-process or multi-GPU: `accelerate launch [--num_processes N] -m coalora train ...`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arg(p)
    p.add_argument("--task", default=d.task, help="task whose train split is used (recipe task)")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help="coalora: one LoRA + θ over many configurations; lora: plain LoRA for one --config; "
                        "shared: plain LoRA over fixed configurations at --shared-bits")
    p.add_argument("--out", required=True, help="run folder (refused if it holds another run, unless --resume/--force)")
    p.add_argument("--recipe", default=d.recipe, choices=RECIPES,
                   help="task: supervised on the task's train split; lm: next-token loss on LAMBADA passages")
    p.add_argument("--config", default=None, help="for --method lora: " + config_help())
    p.add_argument("--shared-bits", default=",".join(map(str, d.shared_bits)),
                   help="for --method shared: comma-separated bit budgets of its fixed configurations")
    p.add_argument("--n-configs", type=int, default=d.n_configs, help="CoA-LoRA's initial training set size")
    p.add_argument("--bit-range", default=",".join(map(str, d.bit_range)),
                   help="lo,hi: budgets of CoA-LoRA's initial training set are spread evenly over this "
                        "range, and the epoch-end search keeps its new training set inside it")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--epoch-steps", type=int, default=d.epoch_steps, help="steps per epoch (search + dev eval after each)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step and process")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per example")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (constant)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha (scaling alpha / r)")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout on the adapter input")
    p.add_argument("--theta-hidden", type=int, default=d.theta_hidden, help="θ's hidden width")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, batch order and draws")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the train/dev/test carving")
    p.add_argument("--precision", default=d.precision, choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast where the CPU/GPU supports it, else fp32")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--no-search", dest="search", action="store_false",
                   help="keep CoA-LoRA's initial training set (the ablation)")
    p.add_argument("--search-iterations", type=int, default=d.search_iterations, help="GP rounds per epoch end")
    p.add_argument("--search-batch", type=int, default=d.search_batch, help="configurations proposed per GP round")
    p.add_argument("--dev-rows", type=int, default=d.dev_rows, help="dev rows scoring candidates in the search")
    p.add_argument("--max-configs", type=int, default=d.max_configs, help="cap on the training set after a search")
    p.add_argument("--cache-gb", type=float, default=d.cache_gb, help="memory for cached quantized weights")
    p.add_argument("--limit-rows", type=int, default=None, help="use only the first N train rows (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace whatever --out holds")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coalora.errors import ConfigError
    from coalora.train import TrainArgs, train

    def numbers(flag: str, text: str) -> tuple[float, ...]:
        try:
            return tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{flag} {text!r} is not a comma-separated list of numbers") from None

    shared = numbers("--shared-bits", args.shared_bits)
    bit_range = numbers("--bit-range", args.bit_range)
    if len(bit_range) != 2:
        raise ConfigError(f"--bit-range {args.bit_range!r} must be two numbers lo,hi")
    targs = TrainArgs(
        model=args.model, task=args.task, method=args.method, out=args.out, recipe=args.recipe,
        config=args.config, shared_bits=shared, n_configs=args.n_configs, bit_range=bit_range, steps=args.steps,
        epoch_steps=args.epoch_steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
        weight_decay=args.weight_decay, rank=args.rank, alpha=args.alpha, dropout=args.dropout,
        theta_hidden=args.theta_hidden, seed=args.seed, split_seed=args.split_seed, precision=args.precision,
        save_every=args.save_every, search=args.search, search_iterations=args.search_iterations,
        search_batch=args.search_batch, dev_rows=args.dev_rows, max_configs=args.max_configs,
        cache_gb=args.cache_gb, limit_rows=args.limit_rows,
    )
    from coalora.data import task_spec

    task_spec("lambada" if targs.recipe == "lm" else targs.task)  # unknown task: a clear error before loading
    import shlex
    import sys

    command = shlex.join(["coalora", *sys.argv[1:]]) if sys.argv and sys.argv[0] else None
    summary = train(targs, resume=args.resume, force=args.force, command=command)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['steps']} steps in {summary['seconds']} s; adapter in {args.out}/checkpoint")
    return 0
