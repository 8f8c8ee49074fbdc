"""NF-k / INT-k quantization with double-quantized scales and exact storage accounting."""

from coalora.quant.nf import FAMILIES, PackedMatrix, QuantState, codebook, dequantize, fake_quantize, quantize
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES, QuantSetting, all_settings
from coalora.quant.storage import formula_bytes, packed_bytes

__all__ = [
    "FAMILIES", "FIELD_NAMES", "FIELD_VALUES", "PackedMatrix", "QuantSetting", "QuantState",
    "all_settings", "codebook", "dequantize", "fake_quantize", "formula_bytes", "packed_bytes", "quantize",
]
