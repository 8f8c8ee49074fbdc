"""Prefix reuse (issue 13; docs/design.md, "Data flow" and "Evaluation"): keep the hidden
states entering each decoder block for recently evaluated configurations and recompute a
forward only from the first block whose inputs are not cached.

Why it is exact: the hidden state entering block b is a function of the batch (input ids,
attention mask, positions) and of the matrices of blocks < b only (each matrix's quantized
weight and θ's M_i depend only on that matrix's own setting). A slider
that moves block b leaves every boundary <= b unchanged, so the forward starts at block b
with the cached hidden state and runs the same kernels on the same inputs as a full forward:
the logits are bit-identical (tests/test_prefix.py checks torch.equal in fp32 and bf16).

Keys (`boundary_keys`): boundary j (the hidden state entering block j, j = 1..n; j = n is the
last block's output, before the final norm) is keyed by a chain of digests,
    key_0 = H(batch digest, global state)      key_j = H(key_{j-1}, state of block j-1)
global state: compute dtype, merged or unmerged path, weights' dtype and device, adapter on or
off and θ's parameter versions; block state: each matrix's (setting, family) and, with the
adapter on, the identities and version counters of its A and B. Content-keyed, so sessions
and configurations share boundaries (a->b->a hits), and an optimizer step or a load changes
the key.

How blocks are skipped (`PrefixCache.run`): for the duration of one forward each decoder
layer's `forward` is replaced by an instance attribute: layers before the first uncached
boundary return the cached tensor (the last of them is the one the next layer sees), the
others run their own forward and their output is stored under its boundary's key. The
wrapped HF model's own forward still runs everything between the layers (embedding, rotary
embeddings, causal mask, final norm, head), so nothing of it is reproduced here.

Memory: an LRU bounded in bytes, keeping every `stride`-th boundary and the last
(coalora.lora.budget: 320 MiB, stride 3 by default). The budget must hold one configuration's
kept boundaries for all batches of the evaluation (the quick eval's batches come back in the
same order for every configuration; an LRU smaller than that cycle would evict each entry
just before it is needed). A hit refreshes
every cached boundary of the current prefix chain, so eviction takes the suffixes of
configurations left behind first. Reuse applies to inference forwards only (grad disabled,
eval mode, θ not in the graph) without a KV cache (`use_cache=False`) and without
positional arguments or extra keyword arguments: the label tasks' last-token scoring and
lambada's sequence NLL. Multiple-choice scoring builds a KV cache in the context forward,
which skipped layers would leave unfilled, so it always runs the full forward.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

# keyword arguments a reusable forward may have (anything else: the full forward)
REUSABLE_KWARGS = frozenset({"input_ids", "attention_mask", "position_ids", "use_cache", "logits_to_keep", "return_dict"})


def _h(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


def tensor_digest(*tensors: torch.Tensor | None) -> bytes:
    """A digest of the exact values, dtypes and shapes of `tensors` (None allowed)."""
    parts = []
    for t in tensors:
        if t is None:
            parts.append(b"none")
            continue
        t = t.detach().contiguous().cpu()
        parts.append(f"{t.dtype}{tuple(t.shape)}".encode())
        parts.append(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return _h(*parts)


def boundary_keys(batch_digest: bytes, global_state: Any, block_states: Sequence[Any]) -> list[bytes]:
    """[key_0, key_1, ..., key_n]: key_j identifies the hidden state entering block j."""
    keys = [_h(batch_digest, repr(global_state).encode())]
    for state in block_states:
        keys.append(_h(keys[-1], repr(state).encode()))
    return keys


def find_layers(model: nn.Module, block_of: dict[str, int], n_blocks: int) -> nn.ModuleList | None:
    """The ModuleList of `model`'s decoder layers: n_blocks entries, and every matrix named in
    `block_of` (name -> block index) lives in entry `block`. None if there is no such list."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_blocks and name:
            if all(m.startswith(f"{name}.{b}.") for m, b in block_of.items()):
                return mod
    return None


class PrefixCache:
    """LRU {boundary key: hidden states (B, L, H)} bounded by `budget_bytes` (0: off).

    stride: boundaries kept are those entering blocks stride, 2·stride, ... and the last
    block's output (a change at block b then recomputes from the kept boundary <= b: up to
    stride - 1 extra blocks, for 1/stride of the memory)."""

    def __init__(self, budget_bytes: int, stride: int = 1):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.budget_bytes, self.stride = int(budget_bytes), int(stride)
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.nbytes = 0
        self.stats = {"forwards": 0, "reused": 0, "blocks_skipped": 0, "blocks_run": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def put(self, key: bytes, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.budget_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.numel() * old.element_size()
        self._entries[key] = value
        self.nbytes += size
        while self.nbytes > self.budget_bytes:
            _, gone = self._entries.popitem(last=False)
            self.nbytes -= gone.numel() * gone.element_size()
            self.stats["evicted"] += 1

    def run(self, layers: nn.ModuleList, keys: Sequence[bytes], call: Callable[[], Any]) -> Any:
        """Run `call()` (the full model forward) with the decoder `layers` before the last
        cached boundary skipped; store the hidden states every other layer produces.
        keys: `boundary_keys(...)`, len(layers) + 1 entries."""
        n = len(layers)
        assert len(keys) == n + 1
        start_at, cached = 0, None
        for j in range(n, 0, -1):
            cached = self._entries.get(keys[j])
            if cached is not None:
                start_at = j
                break
        for j in range(1, start_at + 1):  # keep the whole prefix chain of this configuration fresh
            if keys[j] in self._entries:
                self._entries.move_to_end(keys[j])
        self.stats["forwards"] += 1
        self.stats["reused"] += start_at > 0
        self.stats["blocks_skipped"] += start_at
        self.stats["blocks_run"] += n - start_at
        swaps = []
        for i, layer in enumerate(layers):
            if i < start_at:
                swaps.append((layer, _Cached(cached)))
            elif (i + 1) % self.stride == 0 or i + 1 == n:
                swaps.append((layer, _Recording(layer.forward, self, keys[i + 1])))
        with forwards_replaced(swaps):
            return call()


@contextmanager
def forwards_replaced(swaps: Sequence[tuple[nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """For the block, each module's `forward` is the given callable (an instance attribute);
    afterwards each module's own state is back (its earlier instance attribute, or none)."""
    saved = [(module, module.__dict__.get("forward")) for module, _ in swaps]
    try:
        for module, fn in swaps:
            module.forward = fn
        yield
    finally:
        for module, old in saved:
            if old is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = old


class _Cached:
    """A skipped layer: returns the cached hidden states (only the last skipped one's output is used)."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value


class _Recording:
    """A layer that runs and stores its output (a plain tensor: the hidden states) under `key`."""

    def __init__(self, forward: Callable[..., Any], cache: PrefixCache, key: bytes):
        self.forward, self.cache, self.key = forward, cache, key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):  # layers returning tuples (older transformers) are never skipped
            self.cache.put(self.key, out)
        return out
