"""Where the app's resident memory goes (issue 13, item 5): one engine, a breakdown per stage.

    .venv/bin/python bench/memory.py --evals 8 --threads 8
    .venv/bin/python bench/memory.py --evals 8 --threads 8 --allocator glibc   # glibc's defaults

Loads the app's engine in this process the way app.py does (gradio and ui imported,
`Engine.load("default")`), then runs --evals quick evaluations of seeded random
configurations (half whole-configuration changes, half one-block changes), each on one of
--threads worker threads in turn (gradio runs handlers on a pool of worker threads, and
glibc gives each thread that allocates its own malloc arena), and after each prints:

- the process: VmRSS / RssAnon / RssFile (/proc/self/status) and VmHWM (peak);
- glibc malloc (mallinfo2, all arenas): bytes taken from the system by the heap arenas
  (`arena`), by mmap (`mmap`), in use (`used`) and free but kept (`free`), and how many
  arenas exist;
- live torch tensor storages on the CPU, found through the GC and the model's caches and
  counted once per storage, split by owner: model parameters and buffers (the base model:
  embeddings, norms, the live quantized weights), the switcher's originals (compact), the
  switcher's LRU cache, the merged inference weights, the prefix cache, everything else.

--allocator glibc leaves glibc's defaults (no arena cap, no trim) to show what they cost.
tracemalloc does not see torch's allocations, so this counts storages and asks malloc instead.
mallinfo's `free` still counts pages malloc_trim gave back (they stay free chunks); RssAnon
is what the process holds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1e6


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def proc_status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024 / MB
    return out


def mallinfo() -> dict[str, float]:
    """glibc's totals over all arenas (MB) and the number of arenas (from malloc_info's XML)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    return {"arena": m.arena / MB, "mmap": m.hblkhd / MB, "used": m.uordblks / MB, "free": m.fordblks / MB,
            "arenas": _n_arenas(libc)}


def _n_arenas(libc: ctypes.CDLL) -> int:
    import tempfile

    c = ctypes.CDLL(None)
    c.fdopen.restype = ctypes.c_void_p  # a FILE*: the default int return type would truncate it
    c.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    c.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.TemporaryFile("w+") as f:
        fp = c.fdopen(os.dup(f.fileno()), b"w")
        libc.malloc_info(0, fp)
        c.fclose(fp)
        f.seek(0)
        return f.read().count("<heap nr=")


def tensor_owners(engine) -> dict[str, float]:
    """Bytes of live CPU tensor storages by owner (each storage counted once), MB."""
    import torch

    model = engine.model
    seen: dict[int, str] = {}

    def claim(t, owner: str) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            s = t.untyped_storage()
            seen.setdefault(s.data_ptr(), owner) if s.nbytes() else None
            sizes[s.data_ptr()] = s.nbytes()

    sizes: dict[int, int] = {}
    for t in model.switcher._cache.values():
        claim(t, "switcher cache (incl. live weights)")
    for t in model.switcher.originals.held_tensors():  # the compact forms, as held
        claim(t, "switcher originals")
    for t in model._merged.values():  # the live configuration's are entries of the LRU
        claim(t, "merged weights (LRU)")
    for t in model.prefix._entries.values():
        claim(t, "prefix cache")
    for name, t in [*model.model.named_parameters(), *model.model.named_buffers()]:
        claim(t, "embeddings" if "embed" in name or "lm_head" in name else
              "adapter (A, B)" if "lora_" in name else "other parameters")
    if model.theta is not None:
        for t in model.theta.parameters():
            claim(t, "adapter (A, B)")
    gc.collect()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                claim(obj, "other tensors (GC)")
        except Exception:  # noqa: BLE001 - some objects refuse isinstance checks
            pass
    out: dict[str, float] = {}
    for ptr, owner in seen.items():
        out[owner] = out.get(owner, 0.0) + sizes[ptr] / MB
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=8)
    ap.add_argument("--threads", type=int, default=8, help="worker threads the evaluations rotate over")
    ap.add_argument("--allocator", choices=("app", "glibc"), default="app",
                    help="app: as app.py (coalora.lora.budget: 2 malloc arenas, heap trimmed after each "
                         "evaluation); glibc: glibc's defaults (the app before issue 13's memory work)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dataclasses

    import torch

    from coalora.lora import budget

    if args.allocator == "glibc":
        budget.BUDGET = dataclasses.replace(budget.BUDGET, malloc_arena_max=0, trim_after_eval=False)
    budget.configure_allocator()  # first, as app.py's main() does
    print(f"# bench/memory.py  torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', 'unset')}, allocator={args.allocator}, "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = []

    def stage(name: str, engine=None, seconds: float = float("nan")) -> None:
        st, mi = proc_status(), mallinfo()
        owners = tensor_owners(engine) if engine is not None else {}
        rows.append((name, seconds, st, mi, owners))
        tensors = sum(owners.values())
        print(f"{name:<28} {seconds:6.1f}s RSS {st['VmRSS']:6.0f} (anon {st['RssAnon']:6.0f}, file "
              f"{st['RssFile']:4.0f}) peak {st['VmHWM']:6.0f} | malloc arena {mi['arena']:6.0f} mmap {mi['mmap']:6.0f} "
              f"used {mi['used']:6.0f} free {mi['free']:6.0f} arenas {mi['arenas']:2d} | tensors {tensors:6.0f}",
              flush=True)

    stage("start")
    import gradio  # noqa: F401  (the app imports it before the engine)

    import app as app_module
    from ui import layout  # noqa: F401

    stage("imports")
    import tempfile

    # As the app does, every final point becomes a GP observation (background refits), kept in a
    # temp file here so that the app's own observations file is not touched.
    obs = Path(tempfile.mkdtemp(prefix="coalora-memory-")) / "observations.jsonl"
    engines = app_module.load_engines({"COALORA_OBSERVATIONS": str(obs)})  # as the app: every shipped checkpoint
    engine = next(iter(engines.values()))
    stage("engine loaded", engine)
    space = engine.space
    rng = random.Random(args.seed)
    # One single-thread executor per worker; each streamed chunk goes to the next worker in turn,
    # as gradio hands every `next()` of a streaming handler to whichever worker thread is free.
    workers = [ThreadPoolExecutor(max_workers=1) for _ in range(args.threads)]
    threads_used: set[int] = set()
    turn = [0]

    def on_worker(fn):
        w = workers[turn[0] % len(workers)]
        turn[0] += 1
        return w.submit(fn).result()
    config = space.preset("nf4")
    for k in range(args.evals):
        if k == 0:
            what = "nf4"
        elif k % 2:  # a slider: one block to a random bit width
            b = rng.randrange(space.n_blocks)
            bits = rng.choice((2, 3, 4, 8))
            config = config.with_settings({m.name: config.setting(m.name).replace(bits=bits)
                                           for m in space.matrices if m.block == b})
            what = f"block {b} -> {bits} bits"
        else:  # a whole new configuration
            config = space.sample(1, seed=rng.randrange(1 << 30))[0]
            what = "random whole"

        t = time.perf_counter()
        gen = engine.evaluate(config)

        def chunk(g=gen):
            threads_used.add(threading.get_ident())
            return next(g, None)

        while on_worker(chunk) is not None:
            pass
        stage(f"{k + 1}: {what}", engine, time.perf_counter() - t)
    for w in workers:
        w.shutdown()

    print(f"\nthreads that evaluated: {len(threads_used)}")
    print("\n| stage | RSS MB | anon | peak | malloc arena | mmap | used | free | arenas | tensors (owners) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, secs, st, mi, owners in rows:
        own = ", ".join(f"{k} {v:.0f}" for k, v in sorted(owners.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {st['VmRSS']:.0f} | {st['RssAnon']:.0f} | {st['VmHWM']:.0f} | {mi['arena']:.0f} | "
              f"{mi['mmap']:.0f} | {mi['used']:.0f} | {mi['free']:.0f} | {mi['arenas']} | {own} |")


if __name__ == "__main__":
    main()
