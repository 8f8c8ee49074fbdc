"""The unquantized base model's files, copied into an export (hard links where possible)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

from coalora.errors import ModelLoadError

# What transformers needs to load a model and its tokenizer (no pickles, no GGUF, no extras).
BASE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template*",
)


def base_model_dir(name: str) -> Path:
    """The folder the base model `name` loads from (embedded cache, local folder or the
    hub cache's snapshot; never downloaded)."""
    from coalora.models import resolve_model_path

    src, _ = resolve_model_path(name, quiet=True)
    if isinstance(src, Path):
        return src
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(src), local_files_only=True))
    except Exception as e:  # noqa: BLE001  (hub errors have many types; one message for all)
        raise ModelLoadError(f"cannot find {name!r} in the local Hugging Face cache ({e}); give a local folder") from None


def copy_base(name: str, dest: Path) -> None:
    """Copy the model's loadable files into `dest` (hard links when on the same file system:
    the sources are never modified in place, by us or by transformers)."""
    src = base_model_dir(name)
    dest.mkdir(parents=True, exist_ok=True)
    files = [p for p in sorted(src.iterdir()) if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in BASE_PATTERNS)]
    if not any(p.suffix == ".safetensors" for p in files):
        raise ModelLoadError(f"model folder {str(src)!r} has no .safetensors weights; the export copies safetensors only")
    for p in files:
        target = dest / p.name
        try:
            os.link(p.resolve(), target)
        except OSError:
            shutil.copy2(p.resolve(), target)


FORMATS_FILE = "formats.json"


def module_formats(config) -> dict[str, str]:
    """{module name: format} of a TargetConfiguration, in module order."""
    return {m.name: config.format(m.name) for m in config.space.matrices}


def weights_dtype(model) -> str:
    """The dtype the base was loaded in, which the switcher simulates the formats from
    (the input embeddings' dtype: never quantized, never replaced)."""
    return str(model.model.get_input_embeddings().weight.dtype).removeprefix("torch.")


def write_base_and_adapter(model, config, folder: Path, loader: Path) -> str:
    """What the python runtimes (bnb, torchao) load: base/ (the unquantized base: the runtime
    quantizes it at load, with its own code), adapter/ (the peft adapter of `config`),
    formats.json {"target", "dtype", "modules": {module: format}} and the standalone `loader`
    script -> the dtype name the base is to be loaded in."""
    from coalora.export import export_peft

    dtype = weights_dtype(model)
    copy_base(model.space.model_name, folder / "base")
    export_peft(model, config, folder / "adapter")
    spec = {"target": config.target, "dtype": dtype, "modules": module_formats(config)}
    (folder / FORMATS_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    shutil.copyfile(loader, folder / loader.name)
    return dtype
