"""torchao target: `IntxWeightOnlyConfig` int1..int8 per group or per row (docs/targets.md, "torchao").

A format is what `torchao.quantization.quantize_(model, IntxWeightOnlyConfig(...))` (torchao
0.18.0, config version 2, the only packing it offers, IntxPackingFormat.UNPACKED_TO_INT8)
stores for one nn.Linear weight, with

    weight_dtype=torch.int{b}, granularity=PerGroup(g) (`-g{g}`) or PerAxis(0) (`-row`),
    mapping_type=SYMMETRIC (default) or ASYMMETRIC (`-asym`), scale_dtype=torch.bfloat16.

scale_dtype is fixed at bf16 so that a format has one size whatever dtype the model is
loaded in; for a bf16 model (SmolLM2's torch_dtype) that is exactly the default config
(scale_dtype=None keeps the weight's dtype). The weight becomes an IntxUnpackedToInt8Tensor:

| component  | dtype | shape           | note                                              |
|------------|-------|-----------------|---------------------------------------------------|
| qdata      | int8  | (out, in)       | one byte per weight whatever b: nothing is packed |
| scale      | bf16  | (out, in / g)   | one per group                                     |
| zero_point | int8  | (out, in / g)   | stored even when symmetric (all 0 then)           |

so every b stores 8 + 24/g bits per weight: the bit width changes the error, not the size.

Simulated with our own torch code, which repeats torchao's op order (choose_qparams_affine,
quantize_affine, _adjust_scale_dtype_in_intx_unpacked_tensor, dequantize_affine) so that
simulating needs no torchao import; tests/test_targets_torchao.py proves qdata, scale,
zero_point and the dequantized weight equal to what quantize_ puts in an nn.Linear, bit for bit.
"""

from __future__ import annotations

import math

import torch

from coalora.quant.targets.base import Target, TargetFormat

VERSION = "0.18.0"  # the torchao whose arithmetic this repeats (requirements.txt pins it)
BITS = (1, 2, 3, 4, 5, 6, 7, 8)
GROUPS = (32, 64, 128, 256)  # torchao's usual group sizes; a group must divide in_features
ROW = 0  # TargetFormat.block_size of the per-row (PerAxis(0)) formats: the whole row is one group
SCALE_DTYPE = torch.bfloat16
UNQUANTISED = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _name(bits: int, group: int, asym: bool) -> str:
    return f"int{bits}-{'row' if group == ROW else f'g{group}'}{'-asym' if asym else ''}"


def parse(fmt: str) -> tuple[int, int, bool]:
    """A quantized format's (bits, group size or ROW, asymmetric); `fmt` is a known format."""
    parts = fmt.split("-")
    group = ROW if parts[1] == "row" else int(parts[1][1:])
    return int(parts[0][3:]), group, len(parts) == 3


def qrange(bits: int) -> tuple[int, int]:
    """torchao's _DTYPE_TO_QVALUE_BOUNDS for torch.int{bits}: [-2^(b-1), 2^(b-1) - 1]."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


FORMATS: dict[str, TargetFormat] = {}
for _asym in (False, True):
    for _bits in BITS:
        for _group in (*GROUPS, ROW):
            _where = "per row" if _group == ROW else f"per {_group}"
            _zp = "int8 zero point" if _asym else "int8 zero point (0)"
            FORMATS[_name(_bits, _group, _asym)] = TargetFormat(
                _name(_bits, _group, _asym), _group,
                f"int{_bits} {'asymmetric' if _asym else 'symmetric'} codes held in int8, bf16 scale and {_zp} {_where}",
            )
FORMATS["bf16"] = TargetFormat("bf16", 1, "unquantised bfloat16 (the module left as it is)")
FORMATS["fp32"] = TargetFormat("fp32", 1, "unquantised float32 (the module left as it is)")


def quantize(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What IntxUnpackedToInt8Tensor.from_hp (+ the bf16 scale_dtype adjustment) stores for
    `weight` (out, in) fp32/bf16/fp16 in the quantized format `fmt`:
    -> (qdata (out, in) int8, scale (out, in/g) bf16, zero_point (out, in/g) int8)."""
    bits, group, asym = parse(fmt)
    out, inp = weight.shape
    g = inp if group == ROW else group
    qmin, qmax = qrange(bits)
    x = weight.reshape(out, inp // g, g)
    # choose_qparams_affine, in the weight's dtype (eps: its smallest normal)
    min_neg = torch.min(torch.amin(x, dim=-1), torch.zeros((), dtype=x.dtype))
    max_pos = torch.max(torch.amax(x, dim=-1), torch.zeros((), dtype=x.dtype))
    eps = torch.finfo(weight.dtype).smallest_normal
    if asym:
        scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=eps)
        zero = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax)
    else:
        scale = torch.clamp(torch.max(-min_neg, max_pos) / (float(qmax - qmin) / 2), min=eps)
        zero = torch.full_like(scale, int((qmax + qmin + 1) / 2))
    scale = scale.to(SCALE_DTYPE)  # scale_dtype: a cast after the fact, then qdata from the cast scale
    zero = zero.to(torch.int8)
    # quantize_affine: clamp(round(w * (1 / scale)) + zero_point)
    q = torch.clamp(torch.round(x * (1.0 / scale[..., None])) + zero[..., None], qmin, qmax)
    return q.reshape(out, inp).to(torch.int8), scale, zero


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """dequantize_affine as IntxUnpackedToInt8Tensor.dequantize calls it: (q - zero_point) * scale,
    in `dtype` (the weight's dtype), -> (out, in) `dtype`."""
    out, inp = qdata.shape
    x = qdata.reshape(out, scale.shape[1], -1).to(dtype)
    x = (x - zero[..., None].to(dtype)) * scale[..., None]
    return x.reshape(out, inp).to(dtype)


class TorchaoTarget(Target):
    """The torchao target (docs/targets.md, "torchao")."""

    name = "torchao"
    formats = FORMATS

    def _shape_problem(self, fmt: str, shape: tuple[int, ...]) -> str | None:
        # quantize_ applies IntxWeightOnlyConfig to nn.Linear weights (2-D here).
        if len(shape) != 2 or min(shape) < 1:
            return "needs a non-empty 2-D (out, in) weight"
        bs = FORMATS[fmt].block_size
        if bs > 1 and shape[1] % bs:
            return f"needs a row length (in_features) that is a multiple of its group size {bs}, got {shape[1]}"
        return None

    def _simulate(self, weight: torch.Tensor, fmt: str) -> torch.Tensor:
        """-> (out, in) in weight's dtype (IntxUnpackedToInt8Tensor.dequantize(), what its
        F.linear computes with); bf16 / fp32: w.to(that dtype)."""
        if fmt in UNQUANTISED:
            return weight.to(UNQUANTISED[fmt])
        if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            weight = weight.float()
        return dequantize(*quantize(weight, fmt), weight.dtype)

    def _storage_bytes(self, shape: tuple[int, ...], fmt: str) -> int:
        """Quantized: n int8 codes + 3 bytes (bf16 scale, int8 zero point) per group;
        bf16: 2n; fp32: 4n."""
        n = math.prod(shape)
        if fmt in UNQUANTISED:
            return n * UNQUANTISED[fmt].itemsize
        bs = FORMATS[fmt].block_size or shape[1]
        return n + 3 * (n // bs)


TORCHAO = TorchaoTarget()
