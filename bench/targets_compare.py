"""θ over the deployment targets (issue 14, item 2): checkpoints compared at each target's formats.

    .venv/bin/python bench/targets_compare.py --checkpoint NAME=PATH [--checkpoint NAME=PATH ...]
        [--limit N] [--records results/targets_compare.jsonl] [--results docs/results.md]
        [--plot docs/targets_compare.png]

Scores the quantized base with no adapter and every --checkpoint on every SST-2 **test** row
(--task: another task's test part, e.g. lambada in bits per byte for the lm checkpoint; the
reporting split; nothing here selects anything) at:
- coalora's NF-k space: the ILP configurations of the method comparison (results/configs/compare);
- each deployment target's formats on every matrix: the ones CoA-LoRA trains on
  (coalora.train.configs.TARGET_TRAIN_FORMATS, marked "trained") and a few it never sees
  ("unseen": bnb fp4-dq, gguf MXFP4, torchao int6-g32 and int4-g128);
- each target's ILP allocation (its shipped error table, real bytes) at two budgets.
A point already in --records (same method, configuration, rows and adapter tensors) is reused,
so a re-run only re-renders the report. Writes result records (stamped with configuration,
seed, split and code version), a Markdown section between the `targets-compare` markers of
--results, and a plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def markers(task: str) -> tuple[str, str]:
    """The results.md markers of the section for `task` (sst2 keeps the original ones)."""
    name = "targets-compare" if task == "sst2" else f"targets-compare-{task}"
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
UNSEEN = {"bnb": ("fp4-dq",), "gguf": ("MXFP4",), "torchao": ("int6-g32", "int4-g128")}
BUDGETS = {"bnb": (4.3, 6.0), "gguf": (4.8, 6.0), "torchao": ()}  # torchao's ILP picks int8 at any budget


def checkpoint_arg(text: str) -> tuple[str, str]:
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise argparse.ArgumentTypeError(f"--checkpoint {text!r}: give NAME=PATH, e.g. new=default")
    return name, path


def configurations(space) -> list[tuple[str, str, object]]:
    """(group, label, configuration) of every point, in report order."""
    from coalora.search.target_alloc import allocate_target, get_target_costs
    from coalora.quant.targets import get_target
    from coalora.space import TargetConfiguration
    from coalora.train.configs import TARGET_TRAIN_FORMATS

    out = []
    for path in sorted((ROOT / "results" / "configs" / "compare").glob("ilp-*.json"), key=lambda p: float(p.stem[4:])):
        out.append(("coalora", f"NF-k {path.stem}", space.load(str(path))))
    for target, formats in TARGET_TRAIN_FORMATS.items():
        for kind, fmts in (("trained", formats), ("unseen", UNSEEN[target])):
            for f in fmts:
                c = TargetConfiguration(space, target, [get_target(target).format_for(m.shape, f) for m in space.matrices])
                out.append((target, f"{f} ({kind})", c))
        table = get_target_costs(space, target) if BUDGETS[target] else None
        for b in BUDGETS[target]:
            out.append((target, f"ILP @ {b} bits", allocate_target(table, b, "ilp").config))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=checkpoint_arg, action="append", required=True,
                    help="NAME=PATH of a checkpoint to compare (repeat); PATH as `coalora eval --checkpoint` takes it")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    ap.add_argument("--task", default="sst2", help="the task whose test part is scored (default sst2; lambada: "
                    "bits per byte, for an lm-recipe checkpoint)")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test rows (smaller runs; the report names the row count)")
    ap.add_argument("--records", type=Path, default=None, help="default results/targets_compare.jsonl "
                    "(sst2), else results/targets_compare_TASK.jsonl")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    ap.add_argument("--plot", type=Path, default=None, help="default docs/targets_compare.png (sst2), else "
                    "docs/targets_compare_TASK.png")
    args = ap.parse_args()
    suffix = "" if args.task == "sst2" else f"_{args.task}"
    args.records = args.records or ROOT / "results" / f"targets_compare{suffix}.jsonl"
    args.plot = args.plot or ROOT / "docs" / f"targets_compare{suffix}.png"

    from tqdm import tqdm

    from coalora.data import load_split, task_spec
    from coalora.eval.harness import iter_eval
    from coalora.lora import CoaLoraModel, load_checkpoint
    from coalora.lora.checkpoint import checkpoint_label, resolve_checkpoint
    from coalora.models import load_model
    from coalora.results import ResultRecord, append_record, read_records
    from coalora.space import ConfigSpace
    from coalora.version import code_version

    t_all = time.time()
    model, tok = load_model(args.model, dtype=torch.float32)
    space = ConfigSpace.from_model(model, args.model)
    points = configurations(space)
    split = load_split(args.task, "test", args.seed)
    if args.limit:
        split = split.head(args.limit)
    folders = {name: Path(resolve_checkpoint(path)) for name, path in args.checkpoint}
    metas = {name: json.loads((f / "checkpoint.json").read_text()) for name, f in folders.items()}
    sha = {name: m["tensors"]["sha256"] for name, m in metas.items()}
    labels = {name: checkpoint_label(folders[name], m) for name, m in metas.items()}  # portable names
    known = {(r.method, r.config_hash, r.split_hash, r.extra.get("checkpoint_sha256")): r.to_dict()
             for r in (read_records(args.records) if args.records.exists() else [])}
    results: dict[tuple[str, str], dict] = {}
    methods = ["none", *folders]
    todo = []
    for m in methods:
        for _, _, c in points:
            rec = known.get((m, c.hash, split.manifest_hash, sha.get(m)))
            if rec is None:
                todo.append((m, c))
            else:
                results[(m, c.hash)] = rec

    def score(method: str, evaluator, config) -> None:
        t0 = time.time()
        est = None
        for est in iter_eval(evaluator, tok, split, stream=False):
            pass
        rec = ResultRecord.from_estimate(est, config=config, model=args.model, split=split, method=method,
                                         seed=args.seed, checkpoint=labels.get(method),
                                         seconds=time.time() - t0,
                                         extra={"bench": "targets_compare", "checkpoint_sha256": sha.get(method)})
        append_record(args.records, rec)
        results[(method, config.hash)] = rec.to_dict()

    bar = tqdm(total=len(todo), desc=f"score ({len(methods) * len(points) - len(todo)} reused)", unit="eval",
               file=sys.stderr)
    if any(m == "none" for m, _ in todo):
        base = CoaLoraModel.for_base(model, args.model)
        for _, c in (j for j in todo if j[0] == "none"):
            base.set_configuration(c)
            score("none", base, c)
            bar.update(1)
        base.unwrap()
        del base
    for name in folders:
        jobs = [c for m, c in todo if m == name]
        if not jobs:
            continue
        wrapped, _, _ = load_checkpoint(folders[name], model=model, tokenizer=tok)
        for c in jobs:
            wrapped.set_configuration(c)
            score(name, wrapped, c)
            bar.update(1)
        wrapped.unwrap()
    bar.close()

    report = render(args, points, methods, folders, sha, results, split, code_version(), time.time() - t_all)
    write_section(args.results, report, *markers(args.task))
    plot(args.plot, points, methods, results, f"{args.task} test {task_spec(args.task).metric}")
    print(report)
    return 0


def render(args, points, methods, folders, sha, results, split, version, wall) -> str:
    from coalora.data import task_spec

    cmd = " ".join(["bench/targets_compare.py", *(f"--checkpoint {n}={p}" for n, p in args.checkpoint)]
                   + ([f"--task {args.task}"] if args.task != "sst2" else [])
                   + ([f"--limit {args.limit}"] if args.limit else []))
    metric = task_spec(args.task).metric
    lines = [
        "## θ over the deployment targets (issue 14, item 2)" if args.task == "sst2" else
        f"## The lm checkpoint on {args.task} (issue 17, item 5)", "",
        f"Command: `.venv/bin/python {cmd}` (code {version}; {wall / 60:.1f} min on the 2-core CPU described in "
        f"docs/benchmarks.md, reusing points already in `{args.records.relative_to(ROOT)}`).", "",
        f"{args.task} test part, {len(split)} rows (split {split.manifest_hash}), {metric} ± "
        f"{'binomial' if metric == 'accuracy' else 'delta-method'} stderr, bf16 compute, "
        "each target's exact simulation (docs/targets.md). Checkpoints: "
        + "; ".join(f"`{n}` = {folders[n].relative_to(ROOT) if folders[n].is_relative_to(ROOT) else folders[n]} "
                    f"(tensors sha256 {sha[n][:12]})" for n in folders) + ". "
        "\"trained\": a format the targets-aware training draws; \"unseen\": one it never draws.", "",
        "| group | configuration | bits | " + " | ".join("no adapter" if m == "none" else m for m in methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for group, label, c in points:
        cells = []
        for m in methods:
            r = results.get((m, c.hash))
            cells.append("-" if r is None else f"{r['value']:.3f} ± {r['stderr']:.3f}")
        lines.append(f"| {group} | {label} | {c.avg_bits:.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean {metric} per group{'' if metric == 'accuracy' else ' (lower is better)'}:", "",
              "| group | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for group in dict.fromkeys(g for g, _, _ in points):
        cs = [c for g, _, c in points if g == group]
        means = [sum(results[(m, c.hash)]["value"] for c in cs) / len(cs) for m in methods]
        lines.append(f"| {group} ({len(cs)}) | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += ["", f"![targets comparison]({args.plot.name})"]
    return "\n".join(lines)


def write_section(path: Path, report: str, begin: str, end: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{report}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def plot(path: Path, points, methods, results, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(g for g, _, _ in points))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), sharey=True)
    for ax, group in zip(axes, groups):
        cs = [(label, c) for g, label, c in points if g == group]
        for m in methods:
            xs = [c.avg_bits for _, c in cs]
            ys = [results[(m, c.hash)]["value"] for _, c in cs]
            es = [results[(m, c.hash)]["stderr"] for _, c in cs]
            ax.errorbar(xs, ys, yerr=es, fmt="o", ms=4, capsize=2, label="no adapter" if m == "none" else m, alpha=0.8)
        ax.set_title(group)
        ax.set_xlabel("bits per weight (the runtime's bytes)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if "bits_per_byte" in ylabel:  # one 2.5-bit point near 10 would flatten every difference
        axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
