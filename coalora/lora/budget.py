"""Byte budgets of every inference-time cache of a CoaLoraModel, set in one place (issue 13;
docs/design.md, "Data flow" and "App").

    from coalora.lora import budget
    budget.BUDGET = budget.MemoryBudget(prefix_bytes=0)   # before building a model: no prefix reuse

A CoaLoraModel reads `budget.current()` when it is built (arguments given to it win):

- `switcher_cache_bytes`: the WeightSwitcher's LRU of fake-quantized weights (coalora.lora.switcher),
  float32. With lean inference (`lean_inference`, the default) the live configuration is not
  held here but only merged, so this only spares re-quantizing recent settings when a merge
  misses or the unmerged path runs (one block: 14.2 MB).
- `merged_bytes`: the cap on one configuration's merged inference weights (all target weights
  in the compute dtype, coalora.lora.model): 212.3 MB in bf16, 424.7 MB in fp32 for
  SmolLM2-135M. A model whose merged copy would exceed the cap computes unmerged (on a CPU
  without native bf16 the eval runs fp32, and SmolLM2-135M then stays unmerged under the default).
- `merged_cache_bytes`: the LRU of merged weights by (matrix, setting): the live
  configuration's (always kept) plus recent ones, so a switch back to a configuration seen
  lately (an undone slider move, another session's) re-quantizes and re-merges nothing.
  288 MiB = 302 MB: the live 212 MB plus ~12 blocks of other settings (7.1 MB per block in bf16).
- `prefix_bytes`, `prefix_stride`: the LRU of hidden states entering decoder blocks
  (coalora.lora.prefix), keeping every `prefix_stride`-th boundary and the last block's
  output. One configuration of the SmolLM2 quick eval (SST-2, 128 rows, 6 batches of 7,119
  padded tokens in all) costs 7,119 x 576 hidden x 4 bytes (the residual stream stays fp32
  under bf16 autocast) = 16.4 MB per boundary: 492 MB for all 30 boundaries, 246 MB for the
  15 kept at stride 2, 164 MB for the 10 kept at stride 3. The app's quick eval on 174 dev
  rows (harness.quick_split) filled 320 MiB at stride 2, hence stride 3 by default. The
  budget must hold one configuration's kept boundaries (else the LRU evicts each boundary
  just before the next evaluation needs it); the rest keeps recent slider moves' suffixes.

Defaults and the arithmetic for the app on SmolLM2-135M (steady state; MB = 10^6 bytes):
embeddings (tied head) 113.2 + the switcher's originals in their exact Q4_1 form 66.4
(`compact_originals`) + switcher cache 16 MiB (16.8) + merged LRU 288 MiB (302, holding the
live configuration's 212.3) + prefix cache 320 MiB (335.5) + adapter 20 = ~854 MB of tensors
at most; the process around them (python, torch, gradio, the GP: heap, libraries, stacks)
measured ~0.7 GB more (docs/app.md, "Memory"). The allocator settings below keep glibc from
holding freed memory on top of that.
The trainer sets its own switcher budget (`cache_gb`, 4 GiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass
from typing import Mapping

MiB = 1 << 20


@dataclass(frozen=True)
class MemoryBudget:
    """Byte budgets of the caches a CoaLoraModel keeps for inference (0 switches one off)."""

    switcher_cache_bytes: int = 16 * MiB
    merged_bytes: int = 256 * MiB
    # LRU of merged weights by (matrix, setting, ...): the live configuration's are entries,
    # the rest makes switching back (another session's configuration, an undone slider move)
    # a lookup, with no re-quantizing and no re-merging
    merged_cache_bytes: int = 288 * MiB
    # The live configuration only as the merged inference weights (lazy switching; the
    # quantized weights are made again when the unmerged path reads them).
    lean_inference: bool = True
    # The switcher's originals in an exactly recoverable compact form (Q4_1 blocks, bf16, fp16).
    compact_originals: bool = True
    prefix_bytes: int = 320 * MiB
    prefix_stride: int = 3  # keep the input of every 3rd block (and the last block's output)
    # glibc malloc (the heap the tensors live in; see `configure_allocator`): at most this many
    # arenas (0: glibc's default, 8 per core), and the heap trimmed after every app evaluation.
    malloc_arena_max: int = 2
    trim_after_eval: bool = True


BUDGET = MemoryBudget()


def current() -> MemoryBudget:
    """The module-level budget new models are built with (replace `BUDGET` to change it)."""
    return BUDGET


def from_env(environ: Mapping[str, str], base: MemoryBudget | None = None) -> MemoryBudget:
    """`base` (default: the current budget) with the prefix cache set by COALORA_PREFIX_MIB
    (an integer >= 0 of MiB; 0 turns prefix reuse off), when that variable is set. More
    prefix cache lets concurrent sessions keep their own prefixes (4 clients: 20.3 changes
    a minute at 1024 MiB vs 16.1 at 320, for ~2.35 GB resident; docs/benchmarks.md)."""
    from dataclasses import replace

    from coalora.errors import ConfigError

    base = base or current()
    text = environ.get("COALORA_PREFIX_MIB")
    if text is None or not text.strip():
        return base
    try:
        mib = int(text.strip())
    except ValueError:
        mib = -1
    if mib < 0 or mib > 1 << 20:
        raise ConfigError(f"COALORA_PREFIX_MIB has value {text!r}; allowed: an integer of MiB from 0 to 1048576 "
                          f"(default {base.prefix_bytes // MiB})")
    return replace(base, prefix_bytes=mib * MiB)


# ---- the allocator under the tensors (glibc malloc) ---------------------------------------
# torch's CPU tensors come from malloc. Measured in the app's engine (bench/memory.py, 8
# evaluations on 8 worker threads, as gradio runs streaming handlers): glibc made 16 arenas
# (8 per core, one per thread that allocates while another holds an arena) and kept 1.8 GB
# freed but not returned to the system, more than all the caches together; its mmap
# threshold had risen to its 32 MiB maximum, so every tensor came from the arenas.
# Two arenas and a malloc_trim(0) after each evaluation return that memory.
_M_ARENA_MAX = -8  # mallopt parameter numbers from glibc's malloc.h


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (musl, macOS, Windows): then the allocator is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def configure_allocator(limits: MemoryBudget | None = None) -> bool:
    """Cap glibc's malloc arenas at `malloc_arena_max` -> True when applied. Call it before the
    process starts its threads (app.py does, first thing): arenas already made stay, and
    MALLOC_ARENA_MAX in the environment, when set, is left to win."""
    import os

    limits = limits or current()
    libc = _libc()
    if libc is None or limits.malloc_arena_max <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, limits.malloc_arena_max))


def trim_heap(limits: MemoryBudget | None = None) -> bool:
    """Give the free pages of every malloc arena back to the system (glibc malloc_trim(0)),
    when `trim_after_eval` -> True when it ran. The app calls it after each evaluation: the
    activations and superseded weights of the last one are free by then."""
    limits = limits or current()
    libc = _libc()
    if libc is None or not limits.trim_after_eval:
        return False
    libc.malloc_trim(0)
    return True
