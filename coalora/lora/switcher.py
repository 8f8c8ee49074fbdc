"""Switch a live model's target matrices between quantization configurations (the module
surgery under CoaLoraModel.set_configuration; docs/design.md, "Data flow").

Simulated ("fake") quantization: each target nn.Linear gets the dequantized weights of its
setting, computed in float32 from the original weights. Only matrices whose setting changed
since the last call are re-quantized, and results are kept in an LRU cache keyed by
(matrix, setting, family), bounded in bytes (default: coalora.lora.budget's
`switcher_cache_bytes`), so flipping between recent settings is a dictionary lookup.

A TargetConfiguration (bnb, gguf) is applied the same way, each matrix's weights being
Target.simulate of the original weights in the module's dtype (the dtype the runtime
would receive them in), cast back to that dtype: bit for bit what the runtime dequantizes
(docs/targets.md, "Evaluation under a target"). Cache keys are Configuration.weight_keys.

Originals (issue 13, item 5): the original weights are kept in the most compact form they
are exactly recoverable from (`compact_weight`): the 4-bit codes and fp16 scale and minimum
of every 32 weights when the matrix has that structure (a Q4_1 GGUF source, such as the
embedded SmolLM2-135M: 0.625 bytes per weight instead of 4), else bf16 or fp16 when every
value is one, else float32. A compact form is kept only after decoding it gave back every
value bit for bit (torch.equal), and `originals[name]` decodes it (float32) on each access.

Lazy live weights (`lazy=True`, what CoaLoraModel uses; coalora.lora.budget's
`lean_inference`): `apply` only records the settings; a matrix's quantized weights are made
when something needs them: the merged inference weights (CoaLoraModel takes them through
`live` without attaching them to the module, then `release`s the module's copy: in
inference the live configuration is held once, merged, in the compute dtype), or anything
that reads the module's `weight` (the unmerged path: adapter off, training, a model whose
merged copy exceeds its cap; state dicts aside). Reading `weight` of a released module puts
the weights back first (`materialize`), so every caller sees the same tensor values as with
eager switching.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from coalora.lora import budget
from coalora.quant.nf import fake_quantize
from coalora.quant.setting import QuantSetting
from coalora.quant.targets import get_target
from coalora.space import ConfigSpace, Configuration

# (matrix name, *weight key): (name, QuantSetting, family) or (name, target, format)
_Key = tuple

# ---- originals in an exactly recoverable compact form ------------------------------------
Q4_1_BLOCK = 32  # weights per (scale, minimum) pair: GGUF's Q4_1 block


@dataclass(frozen=True)
class CompactWeight:
    """Float32 weights held as something smaller they decode from exactly.

    form "q4_1": w = d_j * q + m_j per block j of 32 consecutive (row-major) weights, q in
    0..15 packed two per byte (`codes`, (n/2,) uint8), d and m fp16 (`scale`, `minimum`,
    (n/32,)); decoded as GGUF's Q4_1 (float32 multiply, then add). form "bf16" / "fp16":
    `codes` is the weights in that dtype (every value exactly representable)."""

    form: str
    shape: tuple[int, ...]
    codes: torch.Tensor
    scale: torch.Tensor | None = None
    minimum: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.scale, self.minimum) if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def decode(self) -> torch.Tensor:
        """The float32 weights (a new tensor)."""
        if self.form != "q4_1":
            return self.codes.to(torch.float32).view(self.shape)
        return _q4_1_decode(self.codes, self.scale, self.minimum).view(self.shape)


@functools.lru_cache(maxsize=None)
def _nibbles(device: torch.device) -> torch.Tensor:
    """(256, 2) float32: the low and the high 4 bits of every byte."""
    byte = torch.arange(256)
    return torch.stack((byte & 15, byte >> 4), dim=1).to(device, torch.float32)


def _q4_1_decode(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    q = torch.nn.functional.embedding(codes.to(torch.int32), _nibbles(codes.device)).view(d.numel(), Q4_1_BLOCK)
    # m + d * q: d * q is exact in float32 (an fp16 scale times a 4-bit code), so fused or
    # not, the sum is rounded once, as GGUF's dequantization does
    return torch.addcmul(m.to(torch.float32).unsqueeze(1), q, d.to(torch.float32).unsqueeze(1)).view(-1)


def _q4_1_encode(w: torch.Tensor) -> CompactWeight | None:
    """The Q4_1 form of float32 `w` when every value is d*q + m of its 32-block, else None."""
    if w.numel() % Q4_1_BLOCK:
        return None
    b = w.reshape(-1, Q4_1_BLOCK)
    lo, hi = torch.aminmax(b, dim=1)
    m = lo.to(torch.float16)  # a block's minimum (its q = 0) must be an fp16 number
    if not torch.equal(m.to(torch.float32), lo):  # (also false for NaN)
        return None
    d = ((hi - lo) / 15).to(torch.float16)  # its maximum at q = 15
    df = d.to(torch.float32)
    q = torch.sub(b, lo.unsqueeze(1)).div_(torch.where(df > 0, df, torch.ones_like(df)).unsqueeze(1)).round_()
    # two codes a byte (in 0..255 when every q is in 0..15; anything else fails the check below)
    codes = torch.addcmul(q[:, 0::2], q[:, 1::2], torch.tensor(16.0)).clamp_(0, 255).to(torch.uint8)
    del q
    out = CompactWeight("q4_1", tuple(w.shape), codes.reshape(-1), d, m)
    return out if torch.equal(out.decode(), w) else None


def compact_weight(w: torch.Tensor) -> torch.Tensor | CompactWeight:
    """`w` (float32) in the smallest form it decodes from bit for bit: Q4_1 blocks, bf16,
    fp16, else a float32 copy. Every compact form is checked by decoding it (torch.equal)."""
    w = w.detach().to(torch.float32)
    if w.device.type == "cpu" and w.numel() and w.dtype == torch.float32:
        q = _q4_1_encode(w)
        if q is not None:
            return q
        for dtype, form in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            low = w.to(dtype)
            if torch.equal(low.to(torch.float32), w):
                return CompactWeight(form, tuple(w.shape), low)
    return w.clone()


class Originals(Mapping):
    """name -> the original weights of a matrix, float32. Held as `compact_weight` made them
    (or as float32 copies with compact=False); a compact one is decoded on each access (a new
    tensor, ~1 ms per million weights), a float32 one is returned as held."""

    def __init__(self, weights: Mapping[str, torch.Tensor], compact: bool = True):
        self._held: dict[str, torch.Tensor | CompactWeight] = {
            n: compact_weight(w) if compact else w.detach().to(torch.float32).clone() for n, w in weights.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        h = self._held[name]
        return h.decode() if isinstance(h, CompactWeight) else h

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def form(self, name: str) -> str:
        """How `name` is held: "q4_1", "bf16", "fp16" or "fp32"."""
        h = self._held[name]
        return h.form if isinstance(h, CompactWeight) else "fp32"

    def held_tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor this holds (memory accounting)."""
        for h in self._held.values():
            yield from (h.tensors() if isinstance(h, CompactWeight) else (h,))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held_tensors())


# ---- modules whose weight may be held back (lazy mode) -------------------------------------
class _SwitchedLinear(nn.Linear):
    """An nn.Linear of a lazy WeightSwitcher: reading `weight` first puts back weights the
    switcher released (`WeightSwitcher.materialize`)."""

    def __getattr__(self, name: str):
        if name == "weight":
            hook = self.__dict__.get("_coalora_materialize")
            if hook is not None:
                hook()
        return super().__getattr__(name)


class WeightSwitcher:
    """Owns the original weights of `space`'s matrices in `model` and applies configurations.

    `apply(config)` makes the modules compute under `config` (`weight.data` replaced in place;
    with `lazy`, when first needed), `apply(None)` restores the originals. Memory: the
    originals (compact: 66 MB for SmolLM2-135M's 106.2M target weights, else 425 MB in
    float32), the cache, and the live quantized weights while attached to the modules.
    """

    def __init__(self, model: torch.nn.Module, space: ConfigSpace, cache_bytes: int | None = None,
                 compact: bool | None = None, lazy: bool = False):
        modules = dict(model.named_modules())
        missing = [m.name for m in space.matrices if m.name not in modules]
        if missing:
            raise ValueError(f"model lacks {len(missing)} matrices of the space, e.g. {missing[0]!r}")
        limits = budget.current()
        self.space = space
        self.modules: dict[str, torch.nn.Linear] = {m.name: modules[m.name] for m in space.matrices}
        self.originals = Originals({n: mod.weight for n, mod in self.modules.items()},
                                   limits.compact_originals if compact is None else compact)
        self.current: dict[str, tuple | None] = {n: None for n in self.modules}  # a weight key or None
        self.cache_bytes = limits.switcher_cache_bytes if cache_bytes is None else cache_bytes
        self._cache: OrderedDict[_Key, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self.stats = {"quantized": 0, "cache_hits": 0}
        self._released: set[str] = set()  # lazy: modules whose weight is a placeholder now
        self.lazy = False
        if lazy:
            self._make_lazy()

    # ---- the weights of one matrix ---------------------------------------------------------
    def param(self, name: str) -> torch.Tensor:
        return self.modules[name]._parameters["weight"]  # not `.weight`: no materialization

    def _quantized(self, name: str, want: tuple) -> torch.Tensor:
        """The weights of matrix `name` under weight key `want` (Configuration.weight_keys)."""
        key = (name, *want)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit
        dtype = self.param(name).dtype
        orig = self.originals[name]
        if isinstance(want[0], QuantSetting):
            w = fake_quantize(orig, *want).to(dtype)
        else:  # (target, format): the runtime's own dequantized weights
            target, fmt = want
            # simulate runs on the CPU (bitsandbytes' CPU path, gguf's numpy): back to the model's device
            w = get_target(target).simulate(orig.to(dtype), fmt, name).to(orig.device, dtype)
        del orig
        self.stats["quantized"] += 1
        size = w.numel() * w.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = w
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return w

    def _compute(self, name: str) -> torch.Tensor:
        """The weights of `name` under its current setting (None: the originals), on the
        module's device, in its dtype."""
        p, want = self.param(name), self.current[name]
        if want is None:
            return self.originals[name].to(p.device, p.dtype)
        return self._quantized(name, want).to(p.device)  # on a GPU: copies of the host cache entries

    def live(self, name: str) -> torch.Tensor:
        """The weights `name` computes with now, without attaching them to the module when
        they are held back (CoaLoraModel merges from this)."""
        return self._compute(name) if name in self._released else self.param(name).data

    # ---- lazy mode --------------------------------------------------------------------------
    def _make_lazy(self) -> None:
        for name, mod in self.modules.items():
            if type(mod) is nn.Linear:  # others (custom __getattr__, quantized layers) stay eager
                mod.__class__ = _SwitchedLinear
                mod.__dict__["_coalora_materialize"] = functools.partial(self.materialize, name)
        self.lazy = True

    def _is_lazy(self, name: str) -> bool:
        return "_coalora_materialize" in self.modules[name].__dict__

    def release(self, name: str | None = None) -> int:
        """Lazy mode: drop the module's copy of the weights of `name` (None: of every matrix);
        they are made again when read -> how many were released."""
        n = 0
        for nm in self.modules if name is None else (name,):
            if nm in self._released or not self._is_lazy(nm):
                continue
            p = self.param(nm)
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            self._released.add(nm)
            n += 1
        return n

    def materialize(self, name: str | None = None) -> None:
        """Put the weights of `name` (None: of every matrix) back on the module if released."""
        for nm in self.modules if name is None else (name,):
            if nm in self._released:
                self.param(nm).data = self._compute(nm)
                self._released.discard(nm)

    def released(self) -> frozenset[str]:
        return frozenset(self._released)

    def make_eager(self) -> None:
        """Undo lazy mode: every weight attached, the modules plain nn.Linear again (unwrap)."""
        self.materialize()
        for mod in self.modules.values():
            if mod.__dict__.pop("_coalora_materialize", None) is not None:
                mod.__class__ = nn.Linear
        self.lazy = False

    # ---- configurations ---------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, config: Configuration | None) -> int:
        """Make the model compute under `config` (None: original weights). -> #matrices changed."""
        if config is not None:
            self.space.check_same(config)
        changed = 0
        keys = (None,) * self.space.n_matrices if config is None else config.weight_keys()
        for m, want in zip(self.space.matrices, keys):
            if self.current[m.name] == want:
                continue
            self.current[m.name] = want
            if self._is_lazy(m.name):
                self._released.discard(m.name)
                self.release(m.name)  # made when first needed
            else:
                self.param(m.name).data = self._compute(m.name)
            changed += 1
        return changed

    def cached_bytes(self) -> int:
        return self._cached_bytes

    def attached_bytes(self) -> int:
        """Bytes of live weights attached to the modules (0 for released ones)."""
        return sum(p.numel() * p.element_size() for p in map(self.param, self.modules))

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
