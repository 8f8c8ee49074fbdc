"""Zero-shot accuracy of the base model per task and per uniform bit-width (no adapter).

    .venv/bin/python bench/zero_shot_table.py                 # default sizes, ~5 min on 2 idle cores
    .venv/bin/python bench/zero_shot_table.py --rows 100 --tasks sst2 piqa

Rows: the first --rows rows of each task's seeded "all" order (every validation row
shuffled; SST-2 uses all 872 rows by default, --sst2-rows). Bit-widths: the weights as
loaded, then the presets nf8, nf4, nf3, nf2 (NF-k, blocks of 64, 8-bit double-quantized
scales) applied to all 210 projections by WeightSwitcher. Each cell is appended to a
result-records file as it finishes, and cells already there (same model, configuration,
task, rows, precision) are reused, so an interrupted run resumes. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ("none", "nf8", "nf4", "nf3", "nf2")
TASKS = ("sst2", "piqa", "arc_easy", "arc_challenge", "hellaswag", "openbookqa", "copa", "winogrande", "boolq", "lambada")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--sst2-rows", type=int, default=872)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--records", default=str(ROOT / "results" / "zero_shot.jsonl"))
    args = ap.parse_args()

    from coalora.data import load_split
    from coalora.eval import iter_eval
    from coalora.eval.scoring import resolve_dtype
    from coalora.lora import CoaLoraModel
    from coalora.models import load_model
    from coalora.results import ResultRecord, append_record, read_records

    base, tok = load_model(args.model)
    model = CoaLoraModel.for_base(base, args.model)  # no adapter: the quantized base
    space = model.space
    dtype = resolve_dtype(args.dtype, model)
    done = {(r.config_path or "none", r.task, r.split_hash, r.dtype): r for r in read_records(args.records) if r.model == args.model}
    table: dict[tuple[str, str], object] = {}
    t0 = time.perf_counter()
    for cfg_name in args.configs:
        config = None if cfg_name == "none" else space.load(cfg_name)
        model.set_configuration(config)
        for task in args.tasks:
            split = load_split(task, "all")
            split = split.head(min(args.sst2_rows if task == "sst2" else args.rows, len(split)))
            key = (cfg_name, task, split.manifest_hash, dtype)
            if key in done:
                table[(cfg_name, task)] = done[key]
                continue
            est = next(iter(iter_eval(model, tok, split, dtype=dtype, stream=False)))
            rec = ResultRecord.from_estimate(est, config=config, model=args.model, split=split,
                                             config_path=None if config is None else cfg_name)
            append_record(args.records, rec)
            table[(cfg_name, task)] = rec
            print(f"[{time.perf_counter() - t0:6.0f} s] {cfg_name:>4} {task:<11} {est.metric} {est.value:.4f} "
                  f"± {est.stderr:.4f} (n={est.n}, {est.seconds:.1f} s)", file=sys.stderr, flush=True)

    def cell(r) -> str:
        return f"{r.value:.3f} ± {r.stderr:.3f}"

    heads = [f"{t} ({'bpb' if t == 'lambada' else 'acc'}, n={table[(args.configs[0], t)].n})" for t in args.tasks]
    print(f"| weights | avg bits | {' | '.join(heads)} |")
    print("|---|---|" + "---|" * len(args.tasks))
    for cfg_name in args.configs:
        first = table[(cfg_name, args.tasks[0])]
        bits = "as loaded" if first.avg_bits is None else f"{first.avg_bits:.3f}"
        print(f"| {cfg_name} | {bits} | " + " | ".join(cell(table[(cfg_name, t)]) for t in args.tasks) + " |")
    print(f"\nprecision {dtype}; wall time of new cells {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
