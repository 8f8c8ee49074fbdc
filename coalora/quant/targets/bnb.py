"""bitsandbytes target: the formats `Linear4bit` / `Linear8bitLt` store (docs/targets.md, "bnb").

Simulated with bitsandbytes' own functions on CPU (bitsandbytes.functional), called
exactly as the module path calls them, so the weights are bit-identical by construction;
tests/test_targets.py proves them equal to what a quantized Params4bit / Int8Params holds.

| format         | runtime                                             | stored                                  |
|----------------|-----------------------------------------------------|-----------------------------------------|
| nf4, fp4       | Linear4bit, blocksize 64, compress_statistics=False | 4-bit codes + fp32 absmax per 64        |
| nf4-dq, fp4-dq | Linear4bit, blocksize 64, compress_statistics=True  | 4-bit codes + uint8 absmax codes per 64 |
|                |                                                     | + fp32 scale per 256 blocks + fp32 mean |
| int8           | Linear8bitLt (LLM.int8), has_fp16_weights=False     | int8 codes + fp32 absmax per row (SCB)  |
| fp16, bf16     | an ordinary nn.Linear in that dtype                 | the weights                             |
"""

from __future__ import annotations

import math

import torch

from coalora.quant.targets.base import Target, TargetFormat

BLOCKSIZE = 64  # transformers' BitsAndBytesConfig default (bnb_4bit_blocksize is not exposed)
NESTED_BLOCKSIZE = 256  # bnb's double quantisation of the absmax: blocks of 256 (quantize_4bit)
QUANT_MAP_BYTES = 16 * 4  # quant_map: the 16 fp32 levels, saved per 4-bit tensor
NESTED_QUANT_MAP_BYTES = 256 * 4  # nested_quant_map: the 256 fp32 dynamic-map levels, per -dq tensor

FORMATS: dict[str, TargetFormat] = {
    "nf4": TargetFormat("nf4", BLOCKSIZE, "4-bit NormalFloat, fp32 absmax per 64 weights"),
    "fp4": TargetFormat("fp4", BLOCKSIZE, "4-bit float (e2m1), fp32 absmax per 64 weights"),
    "nf4-dq": TargetFormat("nf4-dq", BLOCKSIZE, "nf4 with the absmax double-quantised (compress_statistics)"),
    "fp4-dq": TargetFormat("fp4-dq", BLOCKSIZE, "fp4 with the absmax double-quantised (compress_statistics)"),
    "int8": TargetFormat("int8", 1, "LLM.int8 weights: int8 per weight, fp32 absmax per row"),
    "fp16": TargetFormat("fp16", 1, "unquantised float16"),
    "bf16": TargetFormat("bf16", 1, "unquantised bfloat16"),
}
FOUR_BIT = ("nf4", "fp4", "nf4-dq", "fp4-dq")


def _functional():
    # Imported lazily: bitsandbytes is slow and chatty to import, and storage accounting
    # (the CLI) must not need it.
    import bitsandbytes.functional as F

    return F


def quantize_4bit(weight: torch.Tensor, fmt: str):
    """bitsandbytes.functional.quantize_4bit as Params4bit calls it for `fmt`.
    weight (out, in) bf16/fp16/fp32 -> (packed (ceil(n/2), 1) uint8, bnb QuantState)."""
    return _functional().quantize_4bit(
        weight,
        blocksize=BLOCKSIZE,
        compress_statistics=fmt.endswith("-dq"),
        quant_type=fmt[:3],
        quant_storage=torch.uint8,
    )


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What Int8Params._quantize stores: weight (out, in) -> (CB (out, in) int8, SCB (out,) fp32).
    Why fp16 first: Int8Params casts the weight to float16 before int8_vectorwise_quant."""
    cb, scb, _ = _functional().int8_vectorwise_quant(weight.to(torch.float16))
    return cb, scb


class BnbTarget(Target):
    """The bitsandbytes target (docs/targets.md, "bnb")."""

    name = "bnb"
    formats = FORMATS

    def _shape_problem(self, fmt: str, shape: tuple[int, ...]) -> str | None:
        # Linear4bit / Linear8bitLt wrap nn.Linear weights only.
        if len(shape) != 2 or min(shape) < 1:
            return "needs a non-empty 2-D (out, in) weight"
        return None

    def _simulate(self, weight: torch.Tensor, fmt: str) -> torch.Tensor:
        """-> (out, in): weight.dtype for 4-bit and unchanged input (as dequantize_4bit
        returns it before the compute-dtype cast); float32 for int8 (int8_vectorwise_dequant);
        the format's dtype for fp16 / bf16."""
        F = _functional()
        if fmt in FOUR_BIT:
            packed, state = quantize_4bit(weight, fmt)
            return F.dequantize_4bit(packed, state)
        if fmt == "int8":
            cb, scb = quantize_int8(weight)
            return F.int8_vectorwise_dequant(cb, scb)
        return weight.to(torch.float16 if fmt == "fp16" else torch.bfloat16)

    def _storage_bytes(self, shape: tuple[int, ...], fmt: str) -> int:
        """4-bit: ceil(n/2) code bytes + 4*nb (fp32 absmax), or with -dq nb uint8 absmax codes
        + 4*ceil(nb/256) fp32 nested absmax + 4 (fp32 offset), nb = ceil(n/64).
        int8: n + 4*out. fp16/bf16: 2n. Code tables: `metadata_bytes`."""
        n = math.prod(shape)
        if fmt in FOUR_BIT:
            nb = -(-n // BLOCKSIZE)
            if fmt.endswith("-dq"):
                scales = nb + 4 * -(-nb // NESTED_BLOCKSIZE) + 4
            else:
                scales = 4 * nb
            return -(-n // 2) + scales
        if fmt == "int8":
            return n + 4 * shape[0]
        return 2 * n

    def metadata_bytes(self, fmt: str) -> int:
        """Per-tensor code tables a saved state dict also holds (quant_map, nested_quant_map);
        the JSON `quant_state.bitsandbytes__*` blob (tens of bytes) is not counted."""
        if fmt not in FOUR_BIT:
            return 0
        return QUANT_MAP_BYTES + (NESTED_QUANT_MAP_BYTES if fmt.endswith("-dq") else 0)


BNB = BnbTarget()
