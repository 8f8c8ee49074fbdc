"""Quantizer speed on SmolLM2-135M, side by side with bitsandbytes NF4 in one run.

    .venv/bin/python bench/quant.py [--repeats 5]

Prints a markdown table (paste into docs/benchmarks.md). Ratios are measured in the same
run; absolute times depend on the machine (printed in the header).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hostinfo import cpu_name  # noqa: E402  (bench/hostinfo.py; bench/ is sys.path[0] when run as a script)
from coalora.models import load_model  # noqa: E402
from coalora.quant import QuantSetting, dequantize, fake_quantize, quantize  # noqa: E402
from coalora.space import ConfigSpace  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, lookup tables)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    args = ap.parse_args()

    import bitsandbytes.functional as bnb

    model, _ = load_model("smollm2-135m", quiet=True)
    space = ConfigSpace.from_model(model, "smollm2-135m")
    modules = dict(model.named_modules())
    weights = [modules[m.name].weight.detach() for m in space.matrices]
    n_total = sum(w.numel() for w in weights)
    mlp = modules[space.matrices[4].name].weight.detach()  # 1536 x 576

    print(f"machine: {machine()}")
    print(f"model: smollm2-135m, {len(weights)} matrices, {n_total / 1e6:.1f}M weights; median of {args.repeats}\n")
    print("| what | time | throughput |")
    print("|---|---|---|")
    for bits in (2, 3, 4, 8):
        s = QuantSetting(bits=bits, block_size=64)
        t = median_time(lambda: dequantize(*quantize(mlp, s)), args.repeats)
        print(f"| quantize+dequantize NF{bits}, block 64, one 1536x576 matrix | {t * 1e3:.1f} ms | {mlp.numel() / t / 1e6:.0f} M weights/s |")

    nf4 = space.preset("nf4")
    rand = space.sample(1, seed=0)[0]
    rows = {}
    for label, config in [("nf4", nf4), (f"random ({rand.avg_bits:.2f} bits)", rand)]:
        pairs = [(w, s) for w, (_, s) in zip(weights, config.items())]
        rows[f"quantize (packed) all 210 matrices, {label}"] = median_time(lambda: [quantize(w, s) for w, s in pairs], args.repeats)
        rows[f"fake_quantize (no packing) all 210 matrices, {label}"] = median_time(lambda: [fake_quantize(w, s) for w, s in pairs], args.repeats)
        rows[f"quantize+dequantize all 210 matrices, {label}"] = median_time(lambda: [dequantize(*quantize(w, s)) for w, s in pairs], args.repeats)
    # bitsandbytes NF4 (block 64, fp32 absmax, no double quantization): its CPU path.
    rows["bitsandbytes quantize_4bit+dequantize_4bit nf4 all 210 matrices"] = median_time(
        lambda: [bnb.dequantize_4bit(*bnb.quantize_4bit(w, blocksize=64, quant_type="nf4"), quant_type="nf4") for w in weights],
        args.repeats,
    )
    rows["ours, same job (nf4 block 64, fp32 scales, no double quantization)"] = median_time(
        lambda: [dequantize(*quantize(w, QuantSetting(bits=4, block_size=64), double_quant=False)) for w in weights],
        args.repeats,
    )
    for k, t in rows.items():
        print(f"| {k} | {t:.2f} s | {n_total / t / 1e6:.0f} M weights/s |")
    ours = rows["quantize+dequantize all 210 matrices, nf4"]
    same = rows["ours, same job (nf4 block 64, fp32 scales, no double quantization)"]
    ref = rows["bitsandbytes quantize_4bit+dequantize_4bit nf4 all 210 matrices"]
    print(f"\nratio ours (double-quantized nf4) / bitsandbytes nf4: {ours / ref:.2f}x")
    print(f"ratio ours (same job as bitsandbytes) / bitsandbytes nf4: {same / ref:.2f}x")


if __name__ == "__main__":
    main()
