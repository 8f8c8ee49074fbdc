"""GGUF / llama.cpp target: ggml tensor types (docs/targets.md, "gguf").

Simulated with the `gguf` package's numpy reference (gguf.quants.quantize / dequantize,
which mirror llama.cpp's quantize_row_*_ref / dequantize_row_* C code): the weights are
dequantize(quantize(w)) in float32, as llama.cpp dequantizes the stored blocks.

Only types the pinned gguf 0.19.0 can quantize are formats here. k-quants (Q2_K..Q6_K),
the IQ* types, NVFP4, Q1_0 and Q8_1/Q8_K raise NotImplementedError in its quantize, so
they are excluded (tests/test_targets.py::test_gguf_excluded_types_cannot_quantize).

A type's block runs along a row: the row length (in_features, GGUF's ne[0]) must be a
multiple of its block size, else llama-quantize silently falls back to another type; here
that is refused. SmolLM2's 576-wide rows take only the 32-blocked types and the
unquantised ones; the 256-blocked TQ1_0 / TQ2_0 fit the 1536-wide down_proj only.
"""

from __future__ import annotations

import math

import torch

from coalora.quant.targets.base import Target, TargetFormat

# name: (block size in weights, block bytes) = gguf.GGML_QUANT_SIZES (checked by a test);
# kept here so that storage accounting does not import gguf.
TYPE_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q5_1": (32, 24),
    "Q5_0": (32, 22),
    "Q4_1": (32, 20),
    "Q4_0": (32, 18),
    "MXFP4": (32, 17),
    "TQ2_0": (256, 66),
    "TQ1_0": (256, 54),
}
_DESCRIPTION = {
    "F32": "unquantised float32",
    "F16": "unquantised float16",
    "BF16": "unquantised bfloat16",
    "Q8_0": "8-bit, fp16 scale per 32",
    "Q5_1": "5-bit, fp16 scale and min per 32",
    "Q5_0": "5-bit, fp16 scale per 32",
    "Q4_1": "4-bit, fp16 scale and min per 32",
    "Q4_0": "4-bit, fp16 scale per 32",
    "MXFP4": "4-bit e2m1, e8m0 scale per 32",
    "TQ2_0": "ternary, 2 bits per weight, fp16 scale per 256",
    "TQ1_0": "ternary, base-3 packed, fp16 scale per 256",
}
FORMATS: dict[str, TargetFormat] = {
    name: TargetFormat(name, bs, _DESCRIPTION[name]) for name, (bs, _) in TYPE_SIZES.items()
}


def _quant_type(fmt: str):
    # `gguf` here is the top-level package (absolute import), not this module.
    import gguf

    return gguf.GGMLQuantizationType[fmt]


def quantize_blocks(weight: torch.Tensor, fmt: str):
    """gguf.quants.quantize: weight (out, in) -> the stored blocks as a numpy array
    ((out, in/bs*block_bytes) uint8, or (out, in) float for F32 / F16)."""
    import gguf.quants

    return gguf.quants.quantize(weight.to(torch.float32).numpy(), _quant_type(fmt))


class GgufTarget(Target):
    """The GGUF / llama.cpp target (docs/targets.md, "gguf")."""

    name = "gguf"
    formats = FORMATS

    def _shape_problem(self, fmt: str, shape: tuple[int, ...]) -> str | None:
        if len(shape) != 2 or min(shape) < 1:
            return "needs a non-empty 2-D (out, in) weight"
        bs = TYPE_SIZES[fmt][0]
        if shape[1] % bs:
            return f"needs a row length (in_features) that is a multiple of {bs}, got {shape[1]}"
        return None

    def _simulate(self, weight: torch.Tensor, fmt: str) -> torch.Tensor:
        """-> (out, in) float32: gguf.quants.dequantize of the stored blocks."""
        import gguf.quants

        blocks = quantize_blocks(weight, fmt)
        return torch.from_numpy(gguf.quants.dequantize(blocks, _quant_type(fmt)).copy())

    def _storage_bytes(self, shape: tuple[int, ...], fmt: str) -> int:
        """numel / block size * block bytes (legal shapes hold whole blocks, no padding)."""
        bs, nbytes = TYPE_SIZES[fmt]
        return math.prod(shape) // bs * nbytes


GGUF = GgufTarget()
