"""`coalora eval`: score a (quantized, optionally adapted) model on a packaged task.

Quick eval by default (the first 128 rows of the task's seeded test part), --limit N for
another size, --full for every row of the part. --quick scores exactly the quick-eval rows
that the search pool, the GP and the predicted front use (coalora.eval.harness.quick_split:
the dev part; record extra.role = "select"); --report scores the whole test part, the
reportable number (extra.role = "report"); docs/design.md, "Evaluation". Prints a summary
(or one JSON object with --json) and appends a result record (coalora.results) unless
--no-record.
"""

from __future__ import annotations

import argparse
import json
import sys

from coalora.cli.common import add_device_arg, add_model_arg, check_writable_file, config_help
from coalora.errors import CoaloraError, DataError


def register(sub) -> None:
    from coalora.data import ALL_PART, PARTS, TASKS
    from coalora.results import DEFAULT_RECORDS

    p = sub.add_parser(
        "eval",
        help="evaluate a model under a quantization configuration on a task",
        description=(
            "Apply a quantization configuration to a base model (simulated NF-k weights), "
            "optionally with a CoA-LoRA checkpoint, and measure a task metric with its "
            "standard error. Quick eval (a fixed seeded subset) unless --full."
        ),
    )
    add_model_arg(p, checkpoint="optional")
    p.add_argument("--checkpoint", default=None, help="a CoA-LoRA checkpoint folder, or a shipped one by name "
                   "('default': SST-2, 'lm': LAMBADA next-token; assets/checkpoints/NAME); without it the quantized base is evaluated with no adapter")
    p.add_argument("--config", default="none", help=config_help() + "; or 'none' for the weights as loaded (default)")
    p.add_argument("--task", default=None, help=f"one of {', '.join(TASKS)} (default: the checkpoint's training "
                   "task, e.g. lambada for the lm checkpoint; sst2 without a checkpoint)")
    p.add_argument("--part", default="test", choices=[*PARTS, ALL_PART],
                   help="data part (default: test; 'all' only for zero-shot numbers of an untrained base)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N rows of the part (default 128)")
    p.add_argument("--full", action="store_true", help="evaluate every row of the part")
    p.add_argument("--quick", action="store_true",
                   help="the quick-eval rows of the search pool, GP and predicted front (the first "
                   "QUICK_ROWS rows of the dev part, coalora.eval.harness.quick_split); for selecting "
                   "configurations, not for reporting (record extra.role = select)")
    p.add_argument("--report", action="store_true",
                   help="every row of the test part: the reportable number (record extra.role = report)")
    p.add_argument("--seed", type=int, default=0, help="data split seed (default 0; must match training's)")
    p.add_argument("--prompts", default="coalora", choices=["coalora", "lm-eval", "lm-eval-coalora"],
                   help="prompt style: coalora (default; what training, the search and the app use); lm-eval "
                   "(lm-evaluation-harness 0.4.13's own task prompts, scoring and stderr for sst2, piqa, arc_easy, "
                   "arc_challenge; metric acc plus acc_norm; compare with --part all --full --dtype fp32); "
                   "lm-eval-coalora (coalora's prompt texts, unstripped, scored as lm-eval scores them; differs "
                   "from lm-eval only for sst2: 'Review: ...\\nSentiment:')")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compute precision (auto: bf16 on CUDA and where the CPU supports it, else fp32)")
    add_device_arg(p)
    p.add_argument("--records", default=str(DEFAULT_RECORDS), help=f"JSON-lines file to append the result to (default {DEFAULT_RECORDS})")
    p.add_argument("--no-record", action="store_true", help="do not write a result record")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _default_task(checkpoint: str | None) -> str:
    """The task a checkpoint was trained on (its metadata), else sst2 (also for a checkpoint
    that cannot be read: loading it says why, after the cheaper checks of the options)."""
    from coalora.errors import CheckpointError
    from coalora.lora import read_metadata
    from coalora.lora.checkpoint import training_task

    try:
        return training_task(read_metadata(checkpoint)[1]) if checkpoint is not None else "sst2"
    except CheckpointError:
        return "sst2"


def _select_split(args: argparse.Namespace):
    """The rows to evaluate; fails before any model is loaded."""
    from coalora.data import load_split
    from coalora.eval import DEFAULT_N
    from coalora.eval.prompts import check_style

    check_style(args.task, getattr(args, "prompts", "coalora"))

    if args.quick or args.report:
        from coalora.eval.harness import quick_split

        which = "--quick" if args.quick else "--report"
        if args.quick and args.report:
            raise DataError("--quick and --report exclude each other: --quick scores the dev rows used for "
                            "selection, --report the whole test part")
        if args.full or args.limit is not None or args.part != "test":
            raise DataError(f"{which} fixes the rows; do not combine it with --part, --limit or --full")
        return quick_split(args.task, args.seed) if args.quick else load_split(args.task, "test", args.seed)
    if args.full and args.limit is not None:
        raise DataError("--limit and --full exclude each other: --full evaluates every row of the part")
    split = load_split(args.task, args.part, args.seed)
    if args.full:
        return split
    if args.limit is None:
        return split.head(min(DEFAULT_N, len(split)))
    return split.head(args.limit)  # DataError for 0, negative, or more rows than the part has


def _load(args: argparse.Namespace):
    """-> coalora.lora.LoadedModel: the checkpoint on its base, or the base with a zero adapter."""
    import torch

    from coalora.device import place
    from coalora.lora import load_for_eval

    if args.checkpoint is not None and args.config == "none":
        raise CoaloraError("--config none cannot be used with --checkpoint: an adapter is evaluated under a "
                           "quantization configuration (give a preset such as nf4 or a configuration file)")
    loaded = load_for_eval(args.checkpoint, args.model, dtype=torch.float32, quiet=args.json)
    place(loaded.model, args.device)
    return loaded


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from coalora.eval import iter_eval
    from coalora.results import ResultRecord, append_record

    if not args.no_record:  # before the evaluation, not after it
        check_writable_file(args.records, "--records", append=True)
    if args.task is None:
        args.task = _default_task(args.checkpoint)
    split = _select_split(args)
    from coalora.device import resolve_device

    args.device = resolve_device(args.device)  # before the model loads: one line when CUDA is missing
    loaded = _load(args)
    model, tok, method, checkpoint = loaded.model, loaded.tokenizer, loaded.method, loaded.checkpoint
    config = None if args.config == "none" else model.space.load(args.config)
    model.set_configuration(config)

    bar = tqdm(total=len(split), desc=f"eval {args.task}", unit="row", file=sys.stderr, disable=None, leave=False)
    est = None
    for est in iter_eval(model, tok, split, dtype=args.dtype, stream=True, prompts=args.prompts):
        bar.update(est.n - bar.n)
        bar.set_postfix_str(f"{est.metric} {est.value:.4f} ± {est.stderr:.4f}")
    bar.close()
    assert est is not None

    role = {"role": "select"} if args.quick else {"role": "report"} if args.report else {}
    if args.device.type != "cpu":  # where it was computed, when not on the CPU (bf16 kernels differ)
        role["device"] = str(args.device)
    model_name = model.space.model_name  # where the base was loaded from (--model, else the checkpoint's)
    record = ResultRecord.from_estimate(est, config=config, model=model_name, split=split, method=method,
                                        checkpoint=checkpoint, config_path=None if config is None else str(args.config),
                                        extra=role)
    if not args.no_record:
        append_record(args.records, record)
    out = {k: v for k, v in record.to_dict().items() if k != "config"}
    out["records"] = None if args.no_record else args.records
    if args.json:
        print(json.dumps(out))
        return 0
    bits = "as loaded (no quantization)" if config is None else f"{config.avg_bits:.3f} bits/weight, {config.packed_bytes:,} bytes"
    print(f"model     {model_name} ({method}{', ' + checkpoint if checkpoint else ''})")
    print(f"config    {args.config}: {bits}")
    label = {"select": "  [quick eval: for selection, not a reportable number]",
             "report": "  [reportable: the whole test part]"}.get(role.get("role", ""), "")
    print(f"task      {args.task} / {split.part} (seed {args.seed}, {est.n} rows, split {split.manifest_hash}){label}")
    print(f"{est.metric:<9} {est.value:.4f} ± {est.stderr:.4f}   ({est.seconds:.1f} s, {est.dtype})")
    for k, v in est.extra.items():
        print(f"{k:<9} {v}")
    if not args.no_record:
        print(f"record    appended to {args.records}")
    return 0
