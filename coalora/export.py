"""Export one configuration of a CoaLoraModel as a standard peft LoRA adapter folder.

Since M_i = I + U_i sits between B and A, the configuration's adapter is an ordinary LoRA
with B'_i = B_i M_i (docs/design.md, "Algorithm"). OUT gets:
  adapter_config.json          peft LoraConfig (r, lora_alpha, target module types)
  adapter_model.safetensors    lora_A / lora_B' weights under peft's key names
  configuration.json           the quantization configuration (coalora format)
  README.md                    how to load it, and what it needs: the base quantized by
                               coalora under that configuration
Files are written to a temporary folder and renamed; their content depends only on the
checkpoint, the configuration and the code version (no timestamps), so exporting the same
configuration twice gives identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from coalora.errors import OutputExistsError
from coalora.io import atomic_folder, plain_mode
from coalora.lora.model import CoaLoraModel
from coalora.space import Configuration

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONFIGURATION_FILE = "configuration.json"
PEFT_PREFIX = "base_model.model."  # peft's key prefix for the wrapped base model


def peft_state_dict(model: CoaLoraModel, config: Configuration) -> dict[str, torch.Tensor]:
    """{peft key: tensor}: lora_A (r, in) and B' = B (I + U) (out, r), float32, per matrix."""
    folded = model.folded_B(config)
    out: dict[str, torch.Tensor] = {}
    for name, layer in model.adapted.items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().float().cpu().contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = folded[name].detach().float().cpu().contiguous()
    return out


def peft_config_dict(model: CoaLoraModel) -> dict[str, Any]:
    """The adapter_config.json object, built by peft's own LoraConfig (sets made sorted lists)."""
    from peft import LoraConfig

    types = sorted({m.module_type for m in model.space.matrices})
    cfg = LoraConfig(
        r=model.spec.rank,
        lora_alpha=model.spec.alpha,
        lora_dropout=model.spec.dropout,
        target_modules=types,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=model.space.model_name,
        inference_mode=True,
    )
    d = cfg.to_dict()
    # A set's order changes between processes; sorted lists keep the file identical.
    return {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}


def _readme(model: CoaLoraModel, config: Configuration) -> str:
    from coalora.version import code_version

    name = model.space.model_name
    return f"""# CoA-LoRA adapter for one quantization configuration

Base model: `{name}` (structure fingerprint {model.space.fingerprint})
Configuration: hash {config.hash}, {config.avg_bits:.4f} bits per weight on average over the
{model.space.n_matrices} quantized projections ({config.packed_bytes:,} packed bytes; embeddings,
norms, LM head and adapter not counted). Rank {model.spec.rank}, alpha {model.spec.alpha:g}.
Written by coalora {code_version()}.

This is a standard peft LoRA adapter (`{ADAPTER_CONFIG}`, `{ADAPTER_WEIGHTS}`), with
θ's adjustment for this configuration folded in (B' = B (I + U)). It was tuned for the base
model **quantized by coalora under `{CONFIGURATION_FILE}`**: load it like this.

```python
from peft import PeftModel
from coalora.models import load_model
from coalora.lora.switcher import WeightSwitcher
from coalora.space import ConfigSpace

base, tokenizer = load_model("{name}")
space = ConfigSpace.from_model(base, "{name}")
config = space.load("OUT/{CONFIGURATION_FILE}")
WeightSwitcher(base, space).apply(config)        # quantize the base under this configuration
model = PeftModel.from_pretrained(base, "OUT")   # OUT = this folder
```

`coalora.export.load_peft_export("OUT")` does the same in one call.

Plain `PeftModel.from_pretrained` on an unquantized base also loads, but gives different
logits: the adapter corrects this configuration's quantization error, not another one's.
"""


def export_peft(model: CoaLoraModel, config: Configuration, out_dir: str | Path, force: bool = False) -> Path:
    """Write the peft adapter folder of `config` to `out_dir` (refused if it exists, unless `force`)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    model._check_space(config)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder {str(out)!r} already exists; pass --force (force=True) to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {str(out)!r} is a file; give a folder path")
    tensors = peft_state_dict(model, config)
    with atomic_folder(out, overwrite=force) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_WEIGHTS).chmod(plain_mode())  # safetensors writes owner-only files
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_config_dict(model), indent=2, sort_keys=True) + "\n")
        config.save(tmp / CONFIGURATION_FILE)
        (tmp / "README.md").write_text(_readme(model, config))
    return out


def export_name(model_name: str, config: Configuration, tag: str = "") -> str:
    """A file-name-safe export name: coalora-<model>[-<tag>]-<configuration hash>."""
    import re

    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_name).name)
    return f"coalora-{model}{'-' + tag if tag else ''}-{config.hash}"


def zip_folder(src: Path, zpath: Path, compresslevel: int | None = None,
               extra: dict[str, str] | None = None) -> Path:
    """Every file under `src` into the zip `zpath` below a top folder named as `src`, plus
    `extra` {name: text} at the zip's root -> zpath."""
    import zipfile

    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as z:
        for f in sorted(src.rglob("*")):
            z.write(f, f"{src.name}/{f.relative_to(src)}")
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return zpath


def export_zip(model: CoaLoraModel, config: Configuration, folder: str | Path, model_name: str) -> Path:
    """`config`'s peft adapter folder plus its configuration JSON as one zip inside `folder`
    (a fresh folder the caller owns and later deletes) -> the zip's path. The zip's name
    says the model and the configuration hash."""
    folder = Path(folder)
    name = export_name(model_name, config)
    out = export_peft(model, config, folder / name)
    return zip_folder(out, folder / f"{name}.zip", extra={f"{name}.configuration.json": config.to_json()})


def load_peft_export(out_dir: str | Path, base_model: torch.nn.Module | None = None,
                     dtype: torch.dtype = torch.float32):
    """Load an exported folder the way its README says -> (PeftModel, tokenizer or None).

    `base_model`: an unquantized HF model (quantized here, in place); default: load the
    model named in adapter_config.json with coalora.models.load_model.
    """
    from peft import PeftModel

    from coalora.lora.switcher import WeightSwitcher
    from coalora.space import ConfigSpace

    out = Path(out_dir)
    name = json.loads((out / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    tokenizer = None
    if base_model is None:
        from coalora.models import load_model

        base_model, tokenizer = load_model(name, dtype=dtype, quiet=True)
    space = ConfigSpace.from_model(base_model, name)
    config = space.load(out / CONFIGURATION_FILE)
    WeightSwitcher(base_model, space).apply(config)
    return PeftModel.from_pretrained(base_model, str(out)), tokenizer
