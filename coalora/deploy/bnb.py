"""`coalora export --target bnb`: a folder transformers + bitsandbytes + peft load as a mixed
per-module model (docs/deploy.md, "bnb").

    base/          the unquantized base (bitsandbytes quantizes it at load, with its own code)
    adapter/       the peft adapter for this configuration (B' = B (I + U))
    formats.json   {"dtype": ..., "modules": {module name: bnb format}}
    load_bnb.py    the loader (coalora/deploy/runtime/load_bnb.py, copied): replaces each
                   module by Linear4bit / Linear8bitLt, then attaches the adapter

Why a loader script: BitsAndBytesConfig applies one format to every Linear, so a per-module
mix cannot be written as a quantization_config.
"""

from __future__ import annotations

from pathlib import Path

from coalora.deploy.base import module_formats, write_base_and_adapter

LOADER = Path(__file__).parent / "runtime" / "load_bnb.py"


def write_bnb(model, config, folder: Path) -> tuple[list[str], list[str]]:
    """Write the bnb export into `folder` -> (approximations, commands)."""
    dtype = write_base_and_adapter(model, config, folder, LOADER)
    formats = set(module_formats(config).values())
    approx = [
        "The weights are exact: bitsandbytes quantizes base/ at load with its own functions, as "
        "coalora's simulation does (tests/test_targets.py proves them bit-identical).",
        f"The base is loaded in {dtype.removeprefix('torch.')}, the dtype coalora simulated the formats in.",
    ]
    if formats & {"nf4", "fp4", "nf4-dq", "fp4-dq"}:
        approx.append("4-bit on CPU: Linear4bit dequantizes to the compute dtype, but on an AVX512-BF16 CPU in eval "
                      "mode it runs its own gemv kernel: outputs may differ from coalora's in the last bits.")
    if "int8" in formats:
        approx.append("int8 (LLM.int8): bitsandbytes also quantizes the activations to int8 (outlier columns >= 6.0 "
                      "in float); coalora's simulation computes in float with the same int8 weights.")
    if formats & {"fp16", "bf16"}:
        approx.append("fp16 / bf16 modules hold their weights rounded to that dtype but stored in the model's dtype, "
                      "so the whole model runs in one dtype; the report's bytes count them at 2 bytes per weight.")
    commands = [
        "pip install torch transformers bitsandbytes peft",
        "python load_bnb.py \"Review: a gripping, funny film\\nSentiment:\"   # next-token top 5",
        "# in Python: model, tokenizer = load_bnb.load('.')   (see load_bnb.py)",
    ]
    return approx, commands

