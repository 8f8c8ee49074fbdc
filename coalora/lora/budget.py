"""Byte budgets of every inference-time cache of a CoaLoraModel, set in one place (issue 13;
docs/design.md, "Data flow" and "App").

    from coalora.lora import budget
    budget.BUDGET = budget.MemoryBudget(prefix_bytes=0)   # before building a model: no prefix reuse

A CoaLoraModel reads `budget.current()` when it is built (arguments given to it win):

- `switcher_cache_bytes`: the WeightSwitcher's LRU of fake-quantized weights (coalora.lora.switcher).
  The live configuration's weights are entries of this cache, so a budget of at least one
  configuration (424.7 MB in fp32 for SmolLM2-135M's 106.2M target weights) keeps them from
  being held twice; the rest holds recent slider settings (one block: 14.2 MB).
- `merged_bytes`: the cap on the merged inference weights (one copy of all target weights in
  the compute dtype, coalora.lora.model): 212.3 MB in bf16, 424.7 MB in fp32 for SmolLM2-135M.
  A model whose merged copy would exceed the cap computes unmerged (on a CPU without native
  bf16 the eval runs fp32, and SmolLM2-135M then stays unmerged under the default).
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
embeddings (tied head) 113.2 + the switcher's fp32 originals 424.7 + switcher cache 448 MiB
(469.8, holding the live configuration's 424.7) + merged bf16 212.3 + prefix cache 320 MiB
(335.5) = 1,555 MB of tensors at most. NOT under 2 GB yet: `bench/prefix.py --rss` measured
the app's engine (gradio imported) at 406 MB after imports, 1,453 MB once loaded (before
any configuration) and 2.75-2.8 GB resident after evaluations (docs/benchmarks.md, "Prefix
reuse (issue 13)"); the ~1.2 GB beyond the tensors above is not yet accounted for. The
trainer sets its own switcher budget (`cache_gb`, 4 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class MemoryBudget:
    """Byte budgets of the caches a CoaLoraModel keeps for inference (0 switches one off)."""

    switcher_cache_bytes: int = 448 * MiB
    merged_bytes: int = 256 * MiB
    prefix_bytes: int = 320 * MiB
    prefix_stride: int = 3  # keep the input of every 3rd block (and the last block's output)


BUDGET = MemoryBudget()


def current() -> MemoryBudget:
    """The module-level budget new models are built with (replace `BUDGET` to change it)."""
    return BUDGET
