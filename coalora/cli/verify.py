"""`coalora verify`: score an export in its real runtime beside coalora's simulation."""

from __future__ import annotations

import argparse
import json
import sys

from coalora.cli.common import check_writable_file


def register(sub) -> None:
    from coalora.cli.export import add_target_args

    p = sub.add_parser(
        "verify",
        help="check that an exported configuration scores in its runtime what coalora simulated",
        description=(
            "Export CONFIG for --target into a temporary folder, load it the way its runtime does "
            "(bnb / torchao: transformers + bitsandbytes / torchao + peft via the export's loader script; gguf: every tensor "
            "of base.gguf checked bit for bit against the simulation, then llama.cpp through "
            "llama-cpp-python when it is installed; peft: PeftModel), score the quick-eval rows there and "
            "in coalora's simulation, and print both accuracies, the rows whose prediction differs and "
            "the largest log-probability difference. The rows are the task's dev quick-eval rows."
        ),
    )
    add_target_args(p)
    p.add_argument("--task", default="sst2", help="a label task: sst2 (default) or boolq")
    p.add_argument("--rows", type=int, default=None, help="how many quick-eval rows (default: all 174 of SST-2's)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="compute precision of both sides' torch forwards (default fp32)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.add_argument("--out", default=None, help="also append the record as one JSON line to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coalora.cli.export import check_target_config
    from coalora.deploy.verify import verify
    from coalora.errors import ConfigError
    from coalora.lora.checkpoint import load_for_eval

    if args.rows is not None and args.rows < 1:
        raise ConfigError(f"--rows has value {args.rows}; allowed: an integer >= 1")
    out = check_writable_file(args.out, "--out") if args.out else None
    check_target_config(args)
    loaded = load_for_eval(args.checkpoint, args.model, quiet=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.space.load(args.config)
    rec = verify(model, tokenizer, config, args.target, task=args.task, n=args.rows, dtype=args.dtype,
                 gguf_base=args.gguf_base, progress=lambda s: print(f"[coalora] {s}", file=sys.stderr, flush=True))
    rec["checkpoint"] = loaded.checkpoint
    line = json.dumps(rec, sort_keys=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    if args.json:
        print(line)
        return 0
    print(_summary(rec))
    return 0


def _summary(r: dict) -> str:
    lines = [f"{r['target']} export of configuration {r['config_hash']} ({r['avg_bits']:.3f} bits per weight), "
             f"{r['task']} dev quick-eval rows, {r['dtype']}:"]
    if "file_check" in r:
        fc = r["file_check"]
        bad = fc["tensors_differing"]
        lines.append(f"  base.gguf tensors: {fc['tensors_checked'] - len(bad)} of {fc['tensors_checked']} "
                     f"bit-identical to the simulation" + (f" (differ: {', '.join(bad[:3])} ...)" if bad else ""))
    if r.get("runtime") is None:
        lines.append(f"  runtime not run: {r.get('runtime_absent')}")
        return "\n".join(lines)
    lines += [
        f"  runtime   ({r['runtime']}): accuracy {r['runtime_accuracy']:.4f}",
        f"  simulated (coalora): accuracy {r['simulated_accuracy']:.4f}",
        f"  same prediction on {r['rows'] - len(r['rows_differing'])} of {r['rows']} rows "
        f"({100 * r['agreement']:.1f}%); differing rows: {r['rows_differing'] or 'none'}",
        f"  largest log-prob difference: {r['max_label_logprob_diff']:.2e} (label words), "
        f"{r['max_vocab_logprob_diff']:.2e} (whole vocabulary)",
    ]
    if "dequantize_path" in r:
        d = r["dequantize_path"]
        lines.append(f"  through bitsandbytes' dequantize path instead of its CPU kernel: {len(d['rows_differing'])} rows "
                     f"differ, largest log-prob difference {d['max_vocab_logprob_diff']:.2e}")
    return "\n".join(lines)
