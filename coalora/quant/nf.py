"""Block-wise NF-k (and INT-k) quantization with double-quantized scales (docs/design.md, "Configuration space").

Layout: the matrix is flattened row-major and cut into blocks of B0 = block_size weights.
  * first-level scale s_j = max |w| over block j                          (n_blocks,)
  * offset o = min_j s_j                                                   one fp32 scalar
  * second-level scale t_g = max (s_j - o) over group g of B1 = scale_block_size scales,
    rounded through the float format b2 = scale_format                     (n_groups,)
  * scale code q_j = round((s_j - o) (2^b1 - 1) / t_g), clamped to [0, 2^b1 - 1]
  * s_hat_j = q_j t_g / (2^b1 - 1) + o;  weight code = nearest codebook level to w / s_hat_j

Padding rule (ours): the flattened matrix is padded with zeros to a whole number of blocks
(zeros encode exactly, since every NF codebook has an exact 0); a last, partial group of
scales simply has fewer than B1 members. Stored, and counted by `storage.packed_bytes`:
n_blocks*B0 weight codes, n_blocks scale codes, n_groups second-level scales, the offset.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from coalora.quant.packing import pack_codes, unpack_codes
from coalora.quant.setting import SCALE_FORMAT_DTYPE, QuantSetting

NF_P = 0.9677083  # the NF4 quantile offset of QLoRA / bitsandbytes
FAMILIES = ("nf", "int")


@functools.lru_cache(maxsize=None)
def _codebook(bits: int, family: str) -> torch.Tensor:
    if family == "nf":
        half = 2 ** (bits - 1)
        left = torch.linspace(1 - NF_P, 0.5, half, dtype=torch.float64)[:-1]  # drop 0.5
        right = torch.linspace(0.5, NF_P, half + 1, dtype=torch.float64)
        sigma = 1.0 / torch.special.ndtri(torch.tensor(NF_P, dtype=torch.float64))
        levels = sigma * torch.special.ndtri(torch.cat([left, right]))
        levels[half - 1] = 0.0  # ndtri(0.5) is 0 up to rounding; make it exact
    elif family == "int":
        # INT-k: 2^k evenly spaced levels on [-1, 1] (symmetric absmax; no exact zero).
        levels = torch.linspace(-1.0, 1.0, 2**bits, dtype=torch.float64)
    else:
        raise ValueError(f"unknown quantizer family {family!r}; known: {', '.join(FAMILIES)}")
    return levels.to(torch.float32)


def codebook(bits: int, family: str = "nf") -> torch.Tensor:
    """The 2^bits sorted levels in [-1, 1] of an NF-k (or INT-k) codebook, float32."""
    return _codebook(bits, family).clone()


@functools.lru_cache(maxsize=None)
def _midpoints(bits: int, family: str) -> torch.Tensor:
    lv = _codebook(bits, family)
    return (lv[1:] + lv[:-1]) / 2


@functools.lru_cache(maxsize=None)
def _level_lut(bits: int, family: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A uniform grid of k bins over [-1, 1], each at most half the smallest midpoint gap, so a
    bin widened by a quarter bin on each side (more than any float rounding of the bin
    computation) holds at most one midpoint. -> (k, mid (k,) float32: that midpoint, +inf
    where none; codes (2k,) int64 and values (2k,) float32: the level of slot 2j (x <= mid[j])
    and of slot 2j + 1 (x > mid[j])). The first and last bins reach to -inf and +inf."""
    mid = _midpoints(bits, family).to(torch.float64)
    gap = float((mid[1:] - mid[:-1]).min()) if mid.numel() > 1 else 2.0
    k = 1
    while 2.0 / k > gap / 2:
        k *= 2
    w = 2.0 / k
    lo = torch.linspace(-1.0, 1.0, k + 1, dtype=torch.float64)[:-1] - w / 4
    lo[0] = -math.inf
    hi = lo + 1.5 * w
    hi[-1] = math.inf
    inside = (mid[None, :] >= lo[:, None]) & (mid[None, :] <= hi[:, None])  # (k, n_mid)
    assert int(inside.sum(dim=1).max()) <= 1, "a widened bin holds two midpoints"
    below = torch.searchsorted(mid, lo + w / 4)  # midpoints below each bin's own left edge
    has = inside.any(dim=1)
    code_lo = torch.where(has, inside.to(torch.int64).argmax(dim=1), below)
    codes = torch.stack([code_lo, code_lo + has.to(torch.int64)], dim=1).reshape(-1)  # (2k,)
    mid_of = torch.where(has, mid[code_lo.clamp(max=mid.numel() - 1)], torch.tensor(math.inf, dtype=torch.float64))
    return k, mid_of.to(torch.float32), codes, _codebook(bits, family)[codes]


def _level_slots(x: torch.Tensor, bits: int, family: str) -> torch.Tensor:
    """(numel,) int32 slot of each x in `_level_lut`'s tables: 2 * (grid bin) + (x > its midpoint)."""
    k, mid, _, _ = _level_lut(bits, family)
    x = x.reshape(-1)
    j = x.mul(k / 2).add_(k / 2).clamp_(0, k - 1).to(torch.int32)  # grid bin of each x
    above = x > torch.index_select(mid.to(x.device), 0, j)
    return j.mul_(2).add_(above)  # in place: int32 and index_select are ~2.4x faster than int64 gathers


def nearest_level(x: torch.Tensor, bits: int, family: str = "nf") -> torch.Tensor:
    """Index of the nearest codebook level (ties to the lower), = torch.bucketize(x, midpoints).

    Why not bucketize: its binary search is 2-3x slower for 8 bits. A grid lookup finds the
    one midpoint x must be compared with (`_level_lut`). Exactness against bucketize is
    tested, midpoints and their float neighbours included.
    """
    _, _, codes, _ = _level_lut(bits, family)
    return torch.index_select(codes.to(x.device), 0, _level_slots(x, bits, family)).view(x.shape)


def nearest_values(x: torch.Tensor, bits: int, family: str = "nf") -> torch.Tensor:
    """The nearest codebook level's value, float32 = codebook[nearest_level(x)], looked up from
    the slot directly: no int64 codes, no second gather (fake quantization's hot loop)."""
    _, _, _, values = _level_lut(bits, family)
    return torch.index_select(values.to(x.device), 0, _level_slots(x, bits, family)).view(x.shape)


@dataclass(frozen=True)
class QuantState:
    """What `dequantize` needs besides the packed tensors."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    setting: QuantSetting
    family: str = "nf"
    double_quant: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.setting.block_size)

    @property
    def n_groups(self) -> int:
        return -(-self.n_blocks // self.setting.scale_block_size)


@dataclass(frozen=True)
class PackedMatrix:
    """The stored bytes of one quantized matrix."""

    codes: torch.Tensor  # uint8, n_blocks*B0 codes of b0 bits, bit-packed
    scale_codes: torch.Tensor  # uint8, n_blocks codes of b1 bits (fp32 scales if not double-quantized)
    group_scales: torch.Tensor  # (n_groups,) in the b2 dtype (empty if not double-quantized)
    offset: torch.Tensor  # (1,) fp32 (empty if not double-quantized)

    @property
    def nbytes(self) -> int:
        """Measured size: the sum of the stored tensors' bytes."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale_codes, self.group_scales, self.offset))


def block_view(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """Row-major flatten, zero-pad to whole blocks: -> (n_blocks, B0) float32."""
    w = weight.detach().reshape(-1).to(torch.float32)
    pad = (-w.numel()) % block_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.view(-1, block_size)


def _group_expand(t: torch.Tensor, group: int, n: int) -> torch.Tensor:
    """(n_groups,) -> (n,): each group's value repeated for its members."""
    return t.repeat_interleave(group)[:n]


def _scale_from_codes(q: torch.Tensor, t_exp: torch.Tensor, offset: torch.Tensor, scale_bits: int) -> torch.Tensor:
    # One expression shared by the encoder and the decoder, so both paths are bit-identical.
    return q * t_exp / float(2**scale_bits - 1) + offset


def double_quantize_scales(
    scales: torch.Tensor, setting: QuantSetting
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double-quantize the first-level absmax scales of one matrix (the module docstring's rule).

    scales: (n_blocks,) float32, non-negative and finite. Uses setting.scale_bits (b1),
    scale_block_size (B1) and scale_format (b2); the other fields are ignored.
    -> (q (n_blocks,) float32 integer codes in [0, 2^b1 - 1], t (n_groups,) in the b2 dtype,
        offset (1,) float32 = min scale, s_hat (n_blocks,) float32 reconstructed scales).
    The single implementation: the encoder (`quantize`, `fake_quantize`) and the cost table
    (coalora.search.costs) both call it, so their scales are bit-identical.
    """
    nb = scales.shape[0]
    b1, g = setting.scale_bits, setting.scale_block_size
    offset = scales.min().reshape(1)  # (1,)
    dev = scales - offset  # (nb,)
    ng = -(-nb // g)
    dev_pad = torch.nn.functional.pad(dev, (0, ng * g - nb))  # zeros never raise a max of >= 0 values
    t = dev_pad.view(ng, g).amax(dim=1).to(SCALE_FORMAT_DTYPE[setting.scale_format])  # (ng,)
    t_exp = _group_expand(t.to(torch.float32), g, nb)  # (nb,)
    levels = float(2**b1 - 1)
    safe_t = torch.where(t_exp > 0, t_exp, torch.ones_like(t_exp))
    q = torch.where(t_exp > 0, (dev * levels / safe_t).round(), torch.zeros_like(dev)).clamp_(0, levels)
    return q, t, offset, _scale_from_codes(q, t_exp, offset, b1)


def block_codes(blocks: torch.Tensor, s_hat: torch.Tensor, bits: int, family: str = "nf") -> torch.Tensor:
    """Weight codes of blocks (n, B0) under their scales s_hat (n,): -> (n, B0) int64 level indices.
    A zero scale (an all-zero block) codes w / 1 = 0 exactly."""
    return nearest_level(_unit(blocks, s_hat), bits, family)


def _unit(blocks: torch.Tensor, s_hat: torch.Tensor) -> torch.Tensor:
    """Blocks (n, B0) divided by their scales (n,); a zero scale divides by 1."""
    return blocks / torch.where(s_hat > 0, s_hat, torch.ones_like(s_hat))[:, None]


def block_levels(blocks: torch.Tensor, s_hat: torch.Tensor, bits: int, family: str = "nf") -> torch.Tensor:
    """block_values(block_codes(blocks, s_hat, ...), s_hat, ...) bit for bit, faster: (n, B0) float32."""
    return nearest_values(_unit(blocks, s_hat), bits, family).mul_(s_hat[:, None])


def block_values(codes: torch.Tensor, s_hat: torch.Tensor, bits: int, family: str = "nf") -> torch.Tensor:
    """Inverse of `block_codes`: codes (n, B0) and scales (n,) -> (n, B0) float32 weights."""
    return torch.take(_codebook(bits, family), codes).mul_(s_hat[:, None])


def _scales(weight: torch.Tensor, setting: QuantSetting, double_quant: bool):
    """-> (blocks (n_blocks, B0) float32, q (n_blocks,) float, t (n_groups,) b2 dtype, offset (1,), s_hat (n_blocks,))."""
    blocks = block_view(weight, setting.block_size)  # (nb, B0)
    s = blocks.abs().amax(dim=1)  # (nb,)
    if not torch.isfinite(s).all():
        raise ValueError("cannot quantize a weight that contains NaN or inf")
    if double_quant:
        q, t, offset, s_hat = double_quantize_scales(s, setting)
    else:
        q, t, offset, s_hat = s, torch.empty(0), torch.empty(0), s
    return blocks, q, t, offset, s_hat


def _encode(weight: torch.Tensor, setting: QuantSetting, family: str, double_quant: bool):
    """-> (codes (n_blocks, B0) int64, q (n_blocks,) float, t (n_groups,) b2 dtype, offset (1,), s_hat (n_blocks,))."""
    blocks, q, t, offset, s_hat = _scales(weight, setting, double_quant)
    return block_codes(blocks, s_hat, setting.bits, family), q, t, offset, s_hat


@torch.no_grad()
def quantize(
    weight: torch.Tensor, setting: QuantSetting, family: str = "nf", double_quant: bool = True
) -> tuple[PackedMatrix, QuantState]:
    """Quantize a weight tensor (any shape) -> (packed bytes, state).

    `double_quant=False` stores the first-level absmax scales as fp32 (bitsandbytes-style);
    then scale_bits / scale_format / scale_block_size are ignored.
    """
    codes, q, t, offset, _ = _encode(weight, setting, family, double_quant)
    scale_codes = pack_codes(q.to(torch.uint8), setting.scale_bits) if double_quant else q.to(torch.float32)
    packed = PackedMatrix(
        codes=pack_codes(codes.view(-1), setting.bits),
        scale_codes=scale_codes,
        group_scales=t,
        offset=offset.to(torch.float32),
    )
    state = QuantState(tuple(weight.shape), weight.dtype, setting, family, double_quant)
    return packed, state


@torch.no_grad()
def dequantize(packed: PackedMatrix, state: QuantState) -> torch.Tensor:
    """Inverse of `quantize`: -> tensor of `state.shape` and `state.dtype`."""
    st = state.setting
    nb = state.n_blocks
    codes = unpack_codes(packed.codes, st.bits, nb * st.block_size).view(nb, st.block_size).long()
    if state.double_quant:
        q = unpack_codes(packed.scale_codes, st.scale_bits, nb).to(torch.float32)
        t_exp = _group_expand(packed.group_scales.to(torch.float32), st.scale_block_size, nb)
        s_hat = _scale_from_codes(q, t_exp, packed.offset, st.scale_bits)
    else:
        s_hat = packed.scale_codes
    w = block_values(codes, s_hat, st.bits, state.family)  # (nb, B0)
    return w.reshape(-1)[: state.numel].view(state.shape).to(state.dtype)


@torch.no_grad()
def fake_quantize(
    weight: torch.Tensor, setting: QuantSetting, family: str = "nf", double_quant: bool = True
) -> torch.Tensor:
    """dequantize(*quantize(weight, ...)) without the bit-packing round trip (bit-identical, faster)."""
    blocks, _, _, _, s_hat = _scales(weight, setting, double_quant)
    w = block_levels(blocks, s_hat, setting.bits, family)  # (nb, B0)
    return w.reshape(-1)[: weight.numel()].view(weight.shape).to(weight.dtype)
