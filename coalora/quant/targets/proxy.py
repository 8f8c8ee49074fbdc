"""θ's input for a target format: the nearest NF-k setting (docs/targets.md, "θ under a target").

θ (coalora/lora/hypernet.py) embeds the 5 fields of a QuantSetting; it has never seen a
bitsandbytes or GGUF format. Until θ is retrained over the targets (issue #14, part 2, not
done), a target configuration feeds θ, per matrix, the QuantSetting closest to its format,
field by field:

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
bf16, block_size the group (32, 64) or 64 for 128, 256 and per-row groups, scale_block 16;
the asymmetric formats take the same setting (NF-k has no zero point).

This is an approximation: θ's adjustment for, say, GGUF Q5_1 is the one it learned for
NF4 with 8-bit scales in fp16 per 32 weights. It is a stand-in, not a trained input.
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
