"""Exact storage accounting of the quantizer's packed format (matches PackedMatrix.nbytes)."""

from __future__ import annotations

from coalora.quant.packing import packed_nbytes
from coalora.quant.setting import SCALE_FORMAT_BITS, QuantSetting

OFFSET_BYTES = 4  # one fp32 offset per matrix


def packed_bytes(numel: int, setting: QuantSetting) -> int:
    """Bytes of a matrix of `numel` weights under `setting`, padding and offset included.

    = ceil(nb*B0*b0/8) + ceil(nb*b1/8) + ng*bits(b2)/8 + 4,  nb = ceil(numel/B0), ng = ceil(nb/B1).
    Shape and setting metadata (a few bytes per matrix) are not counted.
    """
    nb = -(-numel // setting.block_size)
    ng = -(-nb // setting.scale_block_size)
    return (
        packed_nbytes(nb * setting.block_size, setting.bits)
        + packed_nbytes(nb, setting.scale_bits)
        + ng * SCALE_FORMAT_BITS[setting.scale_format] // 8
        + OFFSET_BYTES
    )


def formula_bytes(numel: int, setting: QuantSetting) -> float:
    """numel * bpp(c) / 8: the paper's accounting, without padding or the offset."""
    return numel * setting.bits_per_param / 8
