"""What you pick is what you run: `coalora verify` over several targets and configurations
(issue 15; docs/deploy.md, "Measured"). Not a test; prints a table.

    .venv/bin/python bench/deploy.py                                   # the docs table (~15 min on 2 cores)
    .venv/bin/python bench/deploy.py --rows 32 --specs bnb:nf4 gguf:Q4_0
    .venv/bin/python bench/deploy.py --json results/deploy_verify.jsonl

Loads the checkpoint once (fp32), then for every SPEC exports the configuration to a temporary
folder, scores the SST-2 dev quick-eval rows in the runtime and in coalora's simulation
(coalora.deploy.verify.verify) and prints one row: accuracies, rows whose prediction differs,
the largest log-prob differences, seconds. SPEC is what `--config` takes (a preset,
TARGET:FORMAT, a JSON file) or TARGET@BITS: the target's ILP allocation at that many bits per
weight (coalora allocate --target TARGET --method ilp --budget BITS; needs the target's cost
table, shipped for bnb and gguf). gguf rows are scored in llama.cpp only where
llama-cpp-python is installed (`make llama-cpp`); otherwise only the file check runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostinfo import cpu_name  # noqa: E402  (bench/hostinfo.py; bench/ is sys.path[0] when run as a script)

DEFAULT_SPECS = ["bnb:nf4", "bnb:nf4-dq", "bnb@4.3", "gguf:Q4_0", "gguf:Q4_1", "gguf@4.8",
                 "torchao:int4-g32", "torchao:int3-g32", "torchao:int4-g64-asym"]


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, load {os.getloadavg()[0]:.1f}"


def resolve(space, spec: str):
    """A SPEC (see the module docstring) -> (configuration, label)."""
    if "@" in spec and ":" not in spec:
        from coalora.search.target_alloc import allocate_target, get_target_costs

        target, _, bits = spec.partition("@")
        got = allocate_target(get_target_costs(space, target), float(bits), "ilp")
        return got.config, f"{target} ILP @ {float(bits):g} bits"
    return space.load(spec), spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--specs", nargs="+", default=DEFAULT_SPECS, help="configurations (default: the docs table's)")
    ap.add_argument("--rows", type=int, default=None, help="SST-2 dev quick-eval rows (default: all of them)")
    ap.add_argument("--json", type=Path, default=None, help="also append every record to this JSON-lines file")
    args = ap.parse_args()

    import torch

    from coalora.deploy.verify import verify
    from coalora.lora.checkpoint import load_for_eval
    from coalora.version import code_version

    print(f"# bench/deploy.py  {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"coalora {code_version()}", flush=True)
    loaded = load_for_eval(args.checkpoint)
    model, tok = loaded.model, loaded.tokenizer
    print("| configuration | bits/weight | runtime | rows | simulated acc | runtime acc | rows differing | "
          "max Δ log-prob (labels / vocab) | dequantize path: rows differing, max Δ (vocab) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in args.specs:
        config, label = resolve(model.space, spec)
        t = time.perf_counter()
        rec = verify(model, tok, config, config.target, n=args.rows)
        rec.update(checkpoint=loaded.checkpoint, spec=spec, seconds=round(time.perf_counter() - t, 1))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        if rec.get("runtime") is None:
            fc = rec.get("file_check", {})
            print(f"| {label} | {rec['avg_bits']:.3f} | not run: {rec.get('runtime_absent', '?')} | | | | | "
                  f"file check: {fc.get('tensors_checked', 0) - len(fc.get('tensors_differing', []))}/"
                  f"{fc.get('tensors_checked', 0)} tensors identical | | {rec['seconds']} |", flush=True)
            continue
        d = rec.get("dequantize_path")
        deq = f"{len(d['rows_differing'])}, {d['max_vocab_logprob_diff']:.2e}" if d else "—"
        fc = rec.get("file_check")
        runtime = rec["runtime"] + (f"; {fc['tensors_checked'] - len(fc['tensors_differing'])}/{fc['tensors_checked']} "
                                    "tensors bit-identical" if fc else "")
        print(f"| {label} | {rec['avg_bits']:.3f} | {runtime} | {rec['rows']} | {rec['simulated_accuracy']:.4f} | "
              f"{rec['runtime_accuracy']:.4f} | {len(rec['rows_differing'])} ({100 * (1 - rec['agreement']):.1f}%) | "
              f"{rec['max_label_logprob_diff']:.2e} / {rec['max_vocab_logprob_diff']:.2e} | {deq} | {rec['seconds']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
