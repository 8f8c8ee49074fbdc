"""GPU check (issue 13, item 6): `make gpu-check`, one command for a machine with a CUDA GPU.

    .venv/bin/python bench/gpu_check.py [--skip-latency] [--json results/gpu_check.json]
    .venv/bin/python bench/gpu_check.py --dry-run-on-cpu     # this script's parity code, CPU against CPU

Without a CUDA GPU it prints why (a CPU-only torch build, or no GPU found) and that nothing
was checked, and exits 0. With one:

1. Parity, CUDA against CPU, the default checkpoint (SmolLM2-135M + the shipped adapter) on
   the quick-eval rows (coalora.eval.harness.quick_split: SST-2, 174 dev rows), at nf4, nf3
   and one seeded random configuration:
   - fp32 (autocast off, TF32 off): next-token log-probabilities of the first 32 prompts,
     max |CUDA - CPU| <= 1e-3; the quick eval's per-row answers identical;
   - bf16 autocast (what `--device cuda` runs): the quick eval's accuracy within 3 rows of the
     CPU's bf16 accuracy and at most 4 rows answered differently (bf16 sums in another order
     on each device; near-tied rows may flip, see docs/benchmarks.md);
   and the switcher's quantized weights bit-identical on both devices (they are computed on
   the CPU and copied).
2. The latency bench: the app started with COALORA_DEVICE=cuda, bench/app_latency.py with
   8 changes for 1 and 4 clients (--skip-latency leaves it out).
Exit status 1 when a parity check fails.

Not run on a GPU by this project (no GPU here); written to be the first thing to run where one is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FP32_ATOL = 1e-3
BF16_ACC_ROWS = 3
BF16_ROWS_DIFFERENT = 4


def logprobs(model, tokenizer, split, n: int):
    """Next-token log-probs (n, V) float32 of the first n quick-eval prompts, fp32, on the model's device."""
    from coalora.eval import scoring
    from coalora.eval.harness import make_prompt, pad_token_id, token_ids

    seqs = [token_ids(tokenizer, make_prompt(split.task, r, "coalora").prompt, True) for r in split.rows[:n]]
    return scoring.last_token_logprobs(model, seqs, pad_token_id(tokenizer)).cpu()


def quick(model, tokenizer, split, dtype: str):
    from coalora.eval import iter_eval

    est = None
    for est in iter_eval(model, tokenizer, split, dtype=dtype, stream=False):
        pass
    return est.value, est.scores


def parity(configs: dict, device: str = "cuda") -> list[dict]:
    import torch

    from coalora.device import place
    from coalora.eval.harness import quick_split
    from coalora.lora import load_for_eval

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    split = quick_split("sst2")
    cpu = load_for_eval("default", "smollm2-135m")
    gpu = load_for_eval("default", "smollm2-135m")
    place(gpu.model, torch.device(device))
    rows = []
    for name, make in configs.items():
        c = make(cpu.model.space)
        cpu.model.set_configuration(c)
        gpu.model.set_configuration(c)
        same_w = all(torch.equal(a.base_layer.weight.cpu(), b.base_layer.weight)
                     for a, b in zip(gpu.model.adapted.values(), cpu.model.adapted.values()))
        with torch.no_grad():
            d32 = float((logprobs(gpu.model, gpu.tokenizer, split, 32) - logprobs(cpu.model, cpu.tokenizer, split, 32))
                        .abs().max())
        r = {"config": name, "avg_bits": round(c.avg_bits, 3), "weights_identical": same_w, "fp32_max_abs_logprob": d32}
        for dt in ("fp32", "bf16"):
            t = time.perf_counter()
            a_cpu, s_cpu = quick(cpu.model, cpu.tokenizer, split, dt)
            t_cpu = time.perf_counter() - t
            t = time.perf_counter()
            a_gpu, s_gpu = quick(gpu.model, gpu.tokenizer, split, dt)
            if device == "cuda":
                torch.cuda.synchronize()
            t_gpu = time.perf_counter() - t
            r[dt] = {"cpu_acc": a_cpu, "cuda_acc": a_gpu, "rows_different": sum(x != y for x, y in zip(s_cpu, s_gpu)),
                     "cpu_s": round(t_cpu, 2), "cuda_s": round(t_gpu, 2)}
        n = len(split)
        r["ok"] = (same_w and d32 <= FP32_ATOL and r["fp32"]["rows_different"] == 0
                   and abs(r["bf16"]["cpu_acc"] - r["bf16"]["cuda_acc"]) * n <= BF16_ACC_ROWS + 1e-9
                   and r["bf16"]["rows_different"] <= BF16_ROWS_DIFFERENT)
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def latency(out: Path | None) -> int:
    """Start the app on CUDA (as `make app`, COALORA_DEVICE=cuda), run bench/app_latency.py, stop it."""
    from soak import free_port, start_app, wait_serving

    import tempfile

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="coalora-gpu-check-"))
    os.environ["COALORA_DEVICE"] = "cuda"
    proc = start_app(port, workdir, sys.executable)
    try:
        wait_serving(f"http://127.0.0.1:{port}", proc, 600)
        cmd = [sys.executable, str(ROOT / "bench" / "app_latency.py"), "--url", f"http://127.0.0.1:{port}",
               "--changes", "8", "--clients", "1,4", "--budget", "300"]
        if out is not None:
            cmd += ["--json", str(out)]
        return subprocess.call(cmd, cwd=ROOT)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-latency", action="store_true", help="parity only")
    ap.add_argument("--json", type=Path, default=None, help="write the parity rows here")
    ap.add_argument("--dry-run-on-cpu", action="store_true",
                    help="run the parity code with the CPU on both sides (checks this script where there is no "
                         "GPU; everything must then match exactly); nf4 only, no latency bench")
    args = ap.parse_args()
    if args.dry_run_on_cpu:
        rows = parity({"nf4": lambda s: s.preset("nf4")}, device="cpu")
        exact = all(r["ok"] and r["fp32_max_abs_logprob"] == 0 and r["bf16"]["rows_different"] == 0 for r in rows)
        print(f"dry run on the CPU: {'passed' if exact else 'FAILED'}")
        sys.exit(0 if exact else 1)

    from coalora.device import cuda_status

    why = cuda_status()
    if why is not None:
        print(f"gpu-check: no CUDA GPU ({why}); nothing was checked. Run `make gpu-check` on a machine with one.")
        return
    import torch

    print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    configs = {"nf4": lambda s: s.preset("nf4"), "nf3": lambda s: s.preset("nf3"),
               "random (seed 0)": lambda s: s.sample(1, seed=0)[0]}
    rows = parity(configs)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
    ok = all(r["ok"] for r in rows)
    print(f"parity: {'passed' if ok else 'FAILED'} ({sum(r['ok'] for r in rows)}/{len(rows)} configurations)")
    rc = 0 if args.skip_latency else latency(args.json.with_name("gpu_app_latency.json") if args.json else None)
    sys.exit(0 if ok and rc == 0 else 1)


if __name__ == "__main__":
    main()
