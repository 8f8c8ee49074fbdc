"""Load this folder as a torchao model (per-module IntxWeightOnlyConfig) with its LoRA adapter.

Written by `coalora export --target torchao`; needs only torch, transformers, torchao and
peft (not coalora). The folder holds:

    base/                the unquantized base model (transformers format)
    adapter/             the peft LoRA adapter, tuned for exactly these formats
    formats.json         {"dtype": ..., "modules": {module name: torchao format}}
    fqn_to_config.json   torchao's FqnToConfig for the quantized modules (config_to_dict)

torchao's quantize_ quantizes each listed module with its own IntxWeightOnlyConfig; modules
in format bf16 / fp32 keep an ordinary Linear whose weights are rounded to that dtype.

    python load_torchao.py "Review: a gripping, funny film\\nSentiment:"   # next-token top 5

or, from Python:

    import importlib.util
    spec = importlib.util.spec_from_file_location("load_torchao", "OUT/load_torchao.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    model, tokenizer = mod.load("OUT")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FLOAT_FORMATS = {"bf16": torch.bfloat16, "fp32": torch.float32}


def load(folder: str | Path = HERE, adapter: bool = True, dtype: torch.dtype | None = None):
    """-> (model in eval mode, tokenizer): base/ quantized by torchao's quantize_ with
    fqn_to_config.json, and adapter/ on top (peft wraps the quantized Linear modules)."""
    from torchao.core.config import config_from_dict
    from torchao.quantization import quantize_
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    spec = json.loads((folder / "formats.json").read_text())
    dtype = dtype or getattr(torch, spec["dtype"])
    model = AutoModelForCausalLM.from_pretrained(folder / "base", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder / "base")
    with torch.no_grad():
        for name, fmt in spec["modules"].items():
            if fmt in FLOAT_FORMATS:  # rounded, kept in the model's dtype: one model, one dtype
                w = model.get_submodule(name).weight
                w.copy_(w.to(FLOAT_FORMATS[fmt]).to(w.dtype))
    recipe = config_from_dict(json.loads((folder / "fqn_to_config.json").read_text()))
    quantize_(model, recipe, filter_fn=None)  # FqnToConfig names its modules itself
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
