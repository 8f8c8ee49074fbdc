"""Byte budgets of every inference-time cache of a CoaLoraModel, set in one place (issue 13;
docs/design.md, "Data flow" and "App").

    from coalora.lora import budget
    budget.BUDGET = budget.MemoryBudget(prefix_bytes=0)   # before building a model: no prefix reuse

A CoaLoraModel reads `budget.current()` when it is built (arguments given to it win):

- `switcher_cache_bytes`: the WeightSwitcher's LRU of fake-quantized weights (coalora.lora.switcher).
  The live configuration's weights are entries of this cache, so a budget of at least one
  configuration (425 MB in fp32 for SmolLM2-135M) keeps them from being counted twice;
  whatever is left holds recent slider settings (one block of SmolLM2-135M: 14.2 MB).
- `merged_bytes`: the cap on the merged inference weights (one copy of all target weights in
  the compute dtype, coalora.lora.model): 212 MB in bf16, 425 MB in fp32 for SmolLM2-135M.
  A model whose merged copy would exceed it computes unmerged.
- `prefix_bytes`: the LRU of hidden states entering each decoder block (coalora.lora.prefix).
  One configuration of the SmolLM2 quick eval (SST-2, 128 rows: 5,052 padded tokens) costs
  5,052 tokens x 576 hidden x 4 bytes (fp32: the residual stream stays fp32 under bf16
  autocast) = 11.6 MB per block boundary, x 30 boundaries = 349 MB. Slider moves share the
  boundaries before the moved block, so one budget of ~1.1 configurations serves them.

Defaults and the arithmetic for the app on SmolLM2-135M (steady state, MB = 10^6 bytes):
embeddings (tied head) 113 + the switcher's fp32 originals 425 + switcher cache 512 MiB
(537; holds the live configuration's 425) + merged bf16 212 + prefix cache 384 MiB (403)
= 1,690 MB of tensors, plus the Python process (torch, transformers, gradio, botorch, data:
~250-300 MB measured by bench/prefix.py --rss), under 2 GB (2,000 MB). The trainer sets its
own switcher budget (`cache_gb`, 4 GiB by default).
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
    prefix_stride: int = 2  # keep the input of every 2nd block (and the last block's output)


BUDGET = MemoryBudget()


def current() -> MemoryBudget:
    """The module-level budget new models are built with (replace `BUDGET` to change it)."""
    return BUDGET
