"""Load this folder as a mixed-format bitsandbytes model with its LoRA adapter.

Written by `coalora export --target bnb`; needs only torch, transformers, bitsandbytes and
peft (not coalora). The folder holds:

    base/          the unquantized base model (transformers format)
    adapter/       the peft LoRA adapter, tuned for exactly these formats
    formats.json   {"dtype": ..., "modules": {module name: bnb format}}

transformers' BitsAndBytesConfig applies ONE format to every Linear, so each listed module
is replaced by hand: nf4 / fp4 (and their -dq variants, bitsandbytes' double quantisation of
the absmax) become `bnb.nn.Linear4bit` with blocksize 64, int8 becomes `bnb.nn.Linear8bitLt`
(LLM.int8, threshold 6.0 as transformers sets it), fp16 / bf16 keep an ordinary Linear whose
weights are rounded to that dtype. bitsandbytes quantizes each weight when the module is
moved to its device, with its own functions.

    python load_bnb.py "Review: a gripping, funny film\\nSentiment:"   # next-token top 5

or, from Python:

    import importlib.util
    spec = importlib.util.spec_from_file_location("load_bnb", "OUT/load_bnb.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    model, tokenizer = mod.load("OUT")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FOUR_BIT = ("nf4", "fp4", "nf4-dq", "fp4-dq")
BLOCKSIZE = 64
INT8_THRESHOLD = 6.0
FLOAT_FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def quantized_linear(linear: torch.nn.Linear, fmt: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """`linear` in bitsandbytes format `fmt` (weights quantized by bitsandbytes itself)."""
    import bitsandbytes as bnb

    weight = linear.weight.data
    bias = linear.bias is not None
    if fmt in FOUR_BIT:
        new = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
            compress_statistics=fmt.endswith("-dq"), quant_type=fmt[:3], quant_storage=torch.uint8,
        )
        new.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, blocksize=BLOCKSIZE, compress_statistics=fmt.endswith("-dq"),
            quant_type=fmt[:3], quant_storage=torch.uint8,
        )
    elif fmt == "int8":
        new = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False, threshold=INT8_THRESHOLD,
        )
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif fmt in FLOAT_FORMATS:
        # Rounded to fp16 / bf16 and kept in the model's dtype, so one model runs in one dtype.
        linear.weight.data = weight.to(FLOAT_FORMATS[fmt]).to(weight.dtype)
        return linear
    else:
        raise ValueError(f"unknown bitsandbytes format {fmt!r}; known: {', '.join(FOUR_BIT + ('int8',) + tuple(FLOAT_FORMATS))}")
    if bias:
        new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return new.to(weight.device)  # bitsandbytes quantizes here


def load(folder: str | Path = HERE, adapter: bool = True, dtype: torch.dtype | None = None):
    """-> (model in eval mode, tokenizer): base/ with every module of formats.json in its
    bitsandbytes format, and adapter/ on top (peft wraps Linear4bit / Linear8bitLt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    spec = json.loads((folder / "formats.json").read_text())
    dtype = dtype or getattr(torch, spec["dtype"])
    model = AutoModelForCausalLM.from_pretrained(folder / "base", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder / "base")
    for name, fmt in spec["modules"].items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, quantized_linear(getattr(owner, child), fmt, dtype))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder / "adapter"))
    return model.eval(), tokenizer


if __name__ == "__main__":
    text = sys.argv[1] if len(sys.argv) > 1 else "The capital of France is"
    model, tok = load()
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1]
    top = torch.topk(torch.log_softmax(logits.float(), -1), 5)
    for lp, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{tok.decode([i])!r}\t{lp:.3f}")
