"""Batched log-likelihood scoring with any Hugging Face-style causal LM.

The model is anything callable as `model(input_ids=, attention_mask=, position_ids=,
past_key_values=, use_cache=, logits_to_keep=)` returning an object with `.logits`
(and `.past_key_values` when use_cache): a transformers causal LM or a wrapper around one.

Speed tricks (issue 4, item 2):
- sequences are left-padded for "last token only" scoring, with explicit position ids so
  padding does not shift RoPE positions, and `logits_to_keep=1` (one vocab row per sequence);
- a multiple-choice question's shared context is run once with the KV cache on; the cache
  is then repeated per choice (`reorder_cache`) and only the continuations are run;
- batches are formed from length-sorted rows under a padded-token budget;
- bf16 compute (autocast) where the CPU has native bf16, else fp32; log-softmax in fp32.
No Python loop runs per token. Token id lists are plain `list[int]`.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, Sequence

import torch

Ids = list[int]


# ---- precision --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True if the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is 2-4x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return True
    except OSError:
        pass
    return bool(getattr(torch.backends.mkldnn, "is_bf16_supported", lambda: False)())


def _cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument: "cache" (transformers >= 5.2x) or "past_key_values".

    Read from the wrapped transformers model, so wrappers with forward(**kwargs) work too."""
    import inspect

    for m in model.modules():
        if hasattr(m, "config") and hasattr(m, "forward") and "logits_to_keep" in inspect.signature(m.forward).parameters:
            return "cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values"
    return "past_key_values"


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def resolve_dtype(dtype: str, model: torch.nn.Module) -> str:
    """'auto' -> 'bf16' where supported (CUDA, or a CPU with native bf16) else 'fp32'."""
    if dtype not in ("auto", "bf16", "fp32"):
        from coalora.errors import ConfigError

        raise ConfigError(f"dtype {dtype!r} is not one of auto, bf16, fp32")
    try:
        if next(model.parameters()).dtype == torch.bfloat16:
            return "bf16"  # weights already bf16: nothing to decide
    except (StopIteration, AttributeError):
        pass
    if dtype != "auto":
        return dtype
    return "bf16" if model_device(model).type == "cuda" or cpu_has_bf16() else "fp32"


def compute_context(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to bf16 for 'bf16' (a no-op for weights that are bf16 already)."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- batching ---------------------------------------------------------------------------
def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices into `lengths`, sorted by length, cut into batches of at most `batch_size`
    items and `max_tokens` padded tokens (a single over-long item gets its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in batch), default=0))
        if batch and (len(batch) + 1 > batch_size or (len(batch) + 1) * longest > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _pad(seqs: Sequence[Ids], pad_id: int, left: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> input_ids (B, L), attention_mask (B, L) long."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Position of each token counting only real tokens: (B, L); pads get 0."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return pos if offset is None else pos + offset[:, None]


# ---- scoring primitives ----------------------------------------------------------------
@torch.no_grad()
def last_token_logprobs(model, seqs: Sequence[Ids], pad_id: int = 0) -> torch.Tensor:
    """Log-softmax of the next-token logits after each sequence: (B, V) float32.

    One forward of the left-padded batch with logits_to_keep=1."""
    dev = model_device(model)
    ids, mask = _pad(seqs, pad_id, left=True, device=dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False, logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)


LOGPROB_CHUNK_ELEMENTS = 1 << 25  # fp32 temporaries of at most 128 MB each (two live at a time)


def _continuation_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target): logits (N, L, V), targets/mask (N, L) -> (N,).

    In row chunks: each row's arithmetic is the same as over the whole batch (tests: equal
    floats), but the fp32 copy and logsumexp's temporary of a whole lm batch (2,048 tokens x
    49,152 vocabulary, 0.4 GB each) no longer exist at once."""
    n, length, vocab = logits.shape
    rows = max(1, LOGPROB_CHUNK_ELEMENTS // max(1, length * vocab))
    out = []
    for i in range(0, n, rows):
        part = logits[i:i + rows].float()
        lp = part.gather(-1, targets[i:i + rows].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(part, dim=-1)
        out.append((lp * mask[i:i + rows]).sum(-1))
        del part, lp
    return torch.cat(out)


@torch.no_grad()
def shared_context_logprobs(model, contexts: Sequence[Ids], continuations: Sequence[Sequence[Ids]], pad_id: int = 0) -> list[torch.Tensor]:
    """Summed log p(continuation | context) for each question's choices, the context run once.

    contexts: B token lists (each non-empty); continuations: for each context, k_b lists.
    Returns B float32 tensors of shape (k_b,).
    """
    dev = model_device(model)
    k = torch.tensor([len(c) for c in continuations])
    # 1) contexts, left-padded, caching keys/values; keep only the last position's logits.
    c_ids, c_mask = _pad(contexts, pad_id, left=True, device=dev)
    out = model(input_ids=c_ids, attention_mask=c_mask, position_ids=_positions(c_mask), use_cache=True, logits_to_keep=1)
    last = out.logits[:, -1]  # (B, V): predicts each continuation's first token
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    # 2) one cache row per choice.
    rep = torch.repeat_interleave(torch.arange(len(contexts)), k).to(dev)  # (N,)
    cache.reorder_cache(rep)
    flat = [c for cs in continuations for c in cs]
    x_ids, x_mask = _pad(flat, pad_id, left=False, device=dev)  # (N, Lx)
    ctx_len = c_mask.sum(-1)[rep]  # (N,)
    out = model(
        input_ids=x_ids,
        attention_mask=torch.cat([c_mask[rep], x_mask], dim=1),
        position_ids=_positions(x_mask, offset=ctx_len),
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    # Logits predicting continuation token j: context's last for j=0, else position j-1.
    logits = torch.cat([last[rep].unsqueeze(1), out.logits[:, :-1]], dim=1)  # (N, Lx, V)
    scores = _continuation_logprob(logits, x_ids, x_mask)
    return list(scores.split(k.tolist()))


@torch.no_grad()
def sequence_nll(model, seqs: Sequence[Ids], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of tokens 1..L-1 of each sequence, and their count.

    Right-padded batch, all logits kept. Returns (nll (B,) float32, n_tokens (B,) long)."""
    dev = model_device(model)
    ids, mask = _pad(seqs, pad_id, left=False, device=dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
    tmask = mask[:, 1:].float()
    lp = _continuation_logprob(out.logits[:, :-1], ids[:, 1:], tmask)
    return -lp, tmask.sum(-1).long()


@torch.no_grad()
def naive_choice_logprobs(model, contexts: Sequence[Ids], continuations: Sequence[Sequence[Ids]]) -> list[torch.Tensor]:
    """Reference scorer: one unpadded forward of context+continuation per choice.

    Same result as `shared_context_logprobs` up to float rounding; slow (tests, benchmark)."""
    dev = model_device(model)
    result = []
    for ctx, conts in zip(contexts, continuations):
        scores = []
        for cont in conts:
            ids = torch.tensor([list(ctx) + list(cont)], device=dev)
            logits = model(input_ids=ids).logits[0, len(ctx) - 1 : -1]  # (Lx, V)
            lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(ctx):, None]).sum()
            scores.append(lp)
        result.append(torch.stack(scores))
    return result
