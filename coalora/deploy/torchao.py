"""`coalora export --target torchao`: a folder that transformers + torchao + peft load with
each module in its own IntxWeightOnlyConfig (docs/deploy.md, "torchao").

    base/                 the unquantized base (torchao's quantize_ quantizes it at load)
    adapter/              the peft adapter for this configuration (B' = B (I + U))
    formats.json          {"dtype": ..., "modules": {module name: torchao format}}
    fqn_to_config.json    the recipe: a torchao FqnToConfig (module -> IntxWeightOnlyConfig),
                          serialized with torchao's own config_to_dict
    load_torchao.py       the loader (coalora/deploy/runtime/load_torchao.py, copied):
                          quantize_(model, recipe), then the adapter with peft
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from coalora.deploy.base import module_formats, write_base_and_adapter

LOADER = Path(__file__).parent / "runtime" / "load_torchao.py"
RECIPE_FILE = "fqn_to_config.json"


def intx_config(fmt: str):
    """torchao's IntxWeightOnlyConfig for a quantized torchao format (coalora/quant/targets/torchao.py)."""
    from torchao.quantization import IntxWeightOnlyConfig, MappingType
    from torchao.quantization.granularity import PerAxis, PerGroup

    from coalora.quant.targets import torchao as tao

    bits, group, asym = tao.parse(fmt)
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"),
        granularity=PerAxis(0) if group == tao.ROW else PerGroup(group),
        mapping_type=MappingType.ASYMMETRIC if asym else MappingType.SYMMETRIC,
        scale_dtype=tao.SCALE_DTYPE,
    )


def fqn_to_config(formats: dict[str, str]) -> dict:
    """The FqnToConfig of the quantized modules, as torchao's config_to_dict writes it
    (unquantised modules are left out: the loader rounds them to their dtype)."""
    from torchao.core.config import config_to_dict
    from torchao.quantization import FqnToConfig

    from coalora.quant.targets import torchao as tao

    return config_to_dict(FqnToConfig({m: intx_config(f) for m, f in formats.items() if f not in tao.UNQUANTISED}))


def write_torchao(model, config, folder: Path) -> tuple[list[str], list[str]]:
    """Write the torchao export into `folder` -> (approximations, commands)."""
    from coalora.quant.targets import torchao as tao

    dtype = write_base_and_adapter(model, config, folder, LOADER)
    formats = module_formats(config)
    (folder / RECIPE_FILE).write_text(json.dumps(fqn_to_config(formats), indent=1) + "\n")
    approx = [
        "The weights are exact: torchao quantizes base/ at load (quantize_ with fqn_to_config.json), and "
        "tests/test_targets_torchao.py proves coalora's simulation bit-identical to quantize_'s tensors.",
        f"The base is loaded in {dtype}, the dtype coalora simulated the formats in.",
        "torchao's IntxWeightOnlyConfig linear dequantizes and calls F.linear (weight-only: the activations are "
        "not quantized); the adapter runs unmerged through peft's torchao LoRA layer, so logits differ from "
        "coalora's merged weights only in float rounding.",
        "Storage: torchao holds every code in one int8 byte (nothing is bit-packed on CPU in torchao "
        f"{tao.VERSION}); the report's bytes count what it holds.",
    ]
    if set(formats.values()) & set(tao.UNQUANTISED):
        approx.append("bf16 / fp32 modules hold their weights rounded to that dtype but stored in the model's dtype.")
    commands = [
        f"pip install torch transformers peft torchao=={tao.VERSION}",
        "python load_torchao.py \"Review: a gripping, funny film\\nSentiment:\"   # next-token top 5",
        "# in Python: model, tokenizer = load_torchao.load('.')   (see load_torchao.py)",
    ]
    return approx, commands
