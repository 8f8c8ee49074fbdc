"""Multiple-choice scoring variants on the real model (why our PIQA / ARC-Easy differ from
the reference numbers in docs/results.md, "Zero-shot accuracy of the base model"). Not a test; prints one line per run.

    .venv/bin/python bench/mc_variants.py piqa 200 qa      # our prompt "Question: ...\\nAnswer:"
    .venv/bin/python bench/mc_variants.py piqa 200 plain   # the bare goal as context
    .venv/bin/python bench/mc_variants.py arc_easy 200 qa

Rows: the first N of the task's seeded "all" order (as bench/zero_shot_table.py); bf16
autocast; the same forward scores three rules: summed log-likelihood ("sum"), divided by the
continuation's tokens ("tok") or by its UTF-8 bytes ("byte", the harness's rule).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coalora.data import load_split  # noqa: E402
from coalora.eval import scoring  # noqa: E402
from coalora.eval.prompts import make_prompt  # noqa: E402
from coalora.models import load_model  # noqa: E402

model, tok = load_model(quiet=True)
task, n, fmt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = load_split(task, "all").head(n).rows
res = {"sum": 0, "tok": 0, "byte": 0}
t = time.time()
units = []
for r in rows:
    p = make_prompt(task, r)
    ctx = r["goal"].strip() if (fmt == "plain" and task == "piqa") else p.contexts[0]
    units.append((tok(ctx).input_ids, [tok(c, add_special_tokens=False).input_ids for c in p.continuations], p))
for i in range(0, len(units), 8):
    b = units[i : i + 8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scoring.shared_context_logprobs(model, [u[0] for u in b], [u[1] for u in b])
    for (c, xs, p), s in zip(b, out):
        s = s.tolist()
        for name, norm in (("sum", [1] * len(xs)), ("tok", [len(x) for x in xs]), ("byte", [len(x.encode()) for x in p.continuations])):
            v = [a / d for a, d in zip(s, norm)]
            res[name] += int(max(range(len(v)), key=v.__getitem__) == p.label)
print(task, fmt, {k: v / len(rows) for k, v in res.items()}, f"{time.time() - t:.0f} s", flush=True)
