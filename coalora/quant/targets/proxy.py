"""θ's input for a target format (docs/targets.md, "θ under a target").

θ (coalora/lora/hypernet.py) embeds the 5 fields of a QuantSetting. A target format is given
to it in two parts:

1. Its nearest NF-k setting (THETA_PROXY), field by field, which is all a checkpoint trained
   before θ knew the targets (LoraSpec.theta_inputs == "nf") sees:
   - bits: the format's code bits rounded to the nearest of 2, 3, 4, 8 (5-bit types -> 4,
     ternary -> 2, int8 -> 8); unquantised formats take the most precise setting (8);
   - scale_bits: 8 (the most precise code) for every format: bnb's fp32 absmax and GGUF's
     fp16 / e8m0 block scales are not integer codes at all;
   - scale_format: the float format the scales (or, for bnb -dq, the nested absmax) are
     stored in: fp32 for bnb, fp16 for GGUF's scales, bf16 for MXFP4's e8m0 (8 exponent bits);
   - block_size: the format's block along a row (64 for bnb 4-bit, 32 for the GGUF types),
     64 (the largest we have) for per-row int8 and the 256-blocked ternary types;
   - scale_block_size: 256 for bnb -dq (its nested blocks are 256 absmax values), else 16,
     the finest second-level group (the scales are not grouped at all).
   torchao (int1..int8 per group or row, bf16 scales, an int8 zero point): bits rounded as
   above (1 -> 2, 5 -> 4, 6 and 7 -> 8: ties go to the more precise setting), scale_format
   bf16, block_size the group (32, 64) or 64 for 128, 256 and per-row groups, scale_block 16.
2. Two fields that tell the formats apart (theta_inputs == "targets", issue #14 item 2):
   `format`, the format's kind (THETA_FORMATS: coalora's NF-k or integer families, bnb's
   nf4 / fp4 / int8, unquantised floats, GGUF's symmetric and offset legacy types, MXFP4,
   ternary, torchao's symmetric and asymmetric integers), and `exact_bits`, the code width
   the format stores (THETA_BITS: 1 ... 8, and 16 for every unquantised float). With them θ
   can learn, say, Q5_1 apart from NF4, which the proxy alone maps to the same input.
"""

from __future__ import annotations

from coalora.errors import ConfigError
from coalora.quant.setting import QuantSetting

_UNQUANTISED = QuantSetting(8, 8, "fp32", 16, 16)  # the 'max' preset: the most precise NF-k setting

THETA_PROXY: dict[str, dict[str, QuantSetting]] = {
    "bnb": {
        "nf4": QuantSetting(4, 8, "fp32", 64, 16),
        "fp4": QuantSetting(4, 8, "fp32", 64, 16),
        "nf4-dq": QuantSetting(4, 8, "fp32", 64, 256),  # the same structure as coalora's nf4 preset
        "fp4-dq": QuantSetting(4, 8, "fp32", 64, 256),
        "int8": QuantSetting(8, 8, "fp32", 64, 16),
        "fp16": _UNQUANTISED,
        "bf16": _UNQUANTISED,
    },
    "gguf": {
        "F32": _UNQUANTISED,
        "F16": _UNQUANTISED,
        "BF16": _UNQUANTISED,
        "Q8_0": QuantSetting(8, 8, "fp16", 32, 16),
        "Q5_1": QuantSetting(4, 8, "fp16", 32, 16),
        "Q5_0": QuantSetting(4, 8, "fp16", 32, 16),
        "Q4_1": QuantSetting(4, 8, "fp16", 32, 16),
        "Q4_0": QuantSetting(4, 8, "fp16", 32, 16),
        "MXFP4": QuantSetting(4, 8, "bf16", 32, 16),
        "TQ2_0": QuantSetting(2, 8, "fp16", 64, 16),
        "TQ1_0": QuantSetting(2, 8, "fp16", 64, 16),
    },
}


def _torchao_proxies() -> dict[str, QuantSetting]:
    from coalora.quant.targets.torchao import FORMATS, UNQUANTISED, parse

    bits_of = {1: 2, 2: 2, 3: 3, 4: 4, 5: 4, 6: 8, 7: 8, 8: 8}
    out = {}
    for fmt in FORMATS:
        if fmt in UNQUANTISED:
            out[fmt] = _UNQUANTISED
            continue
        bits, group, _ = parse(fmt)
        out[fmt] = QuantSetting(bits_of[bits], 8, "bf16", group if group in (32, 64) else 64, 16)
    return out


THETA_PROXY["torchao"] = _torchao_proxies()


def theta_proxy(target: str, fmt: str) -> QuantSetting:
    """The NF-k setting θ is given for format `fmt` of `target` (module docstring)."""
    try:
        return THETA_PROXY[target][fmt]
    except KeyError:
        raise ConfigError(f"no θ input is defined for {target} format {fmt!r}") from None


# The extra θ inputs of theta_inputs == "targets" (part 2 of the module docstring). Appending
# values is safe; reordering or removing them changes what a trained θ's embedding rows mean.
THETA_FORMATS: tuple[str, ...] = ("nf", "int", "float", "bnb-nf4", "bnb-fp4", "bnb-int8", "gguf-sym",
                                  "gguf-offset", "gguf-mxfp4", "gguf-ternary", "torchao-sym", "torchao-asym")
THETA_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 16)
_FLOAT_FORMATS = {"fp16", "bf16", "fp32", "F32", "F16", "BF16"}
_GGUF_KINDS = {"Q8_0": "gguf-sym", "Q5_0": "gguf-sym", "Q4_0": "gguf-sym", "Q5_1": "gguf-offset",
               "Q4_1": "gguf-offset", "MXFP4": "gguf-mxfp4", "TQ2_0": "gguf-ternary", "TQ1_0": "gguf-ternary"}


def theta_format(target: str, fmt: str) -> tuple[str, int]:
    """(kind in THETA_FORMATS, bits in THETA_BITS) of format `fmt` of deployment target
    `target`. (An NF-k setting is its family, "nf" or "int", with its own bits.)"""
    from coalora.quant.targets.base import format_bits

    theta_proxy(target, fmt)  # unknown formats fail here, naming the target and format
    if fmt in _FLOAT_FORMATS:
        return "float", 16
    if target == "bnb":
        return f"bnb-{fmt.split('-')[0]}", format_bits(fmt)
    if target == "gguf":
        return _GGUF_KINDS[fmt], {"TQ1_0": 1, "TQ2_0": 2}.get(fmt, format_bits(fmt))
    return ("torchao-asym" if fmt.endswith("-asym") else "torchao-sym"), format_bits(fmt)


def theta_format_index(target: str, fmt: str) -> tuple[int, int]:
    """theta_format as row indices into THETA_FORMATS and THETA_BITS."""
    return theta_row(*theta_format(target, fmt))


def theta_row(kind: str, bits: int) -> tuple[int, int]:
    """(kind, bits) as row indices into THETA_FORMATS and THETA_BITS."""
    return THETA_FORMATS.index(kind), THETA_BITS.index(bits)
