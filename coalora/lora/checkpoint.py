"""Checkpoints of a CoaLoraModel: a folder with adapter.safetensors (A, B, θ and anything
else left trainable) and checkpoint.json (metadata). Never pickle: safetensors + JSON only.

checkpoint.json holds: the format tag, the base model (name, structure fingerprint = the
configuration space's, weights fingerprint = hash of a sample of the original weights), the
LoraSpec (rank, alpha, dropout, θ sizes, seed), θ's architecture, the configuration space,
the tensor file's sha256, the code version, and whatever the trainer passes in (training
recipe, data-split manifest, seed ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coalora.errors import CheckpointError, ConfigError, ModelLoadError, ModelMismatchError, OutputExistsError
from coalora.io import atomic_folder, plain_mode
from coalora.lora.model import CoaLoraModel
from coalora.lora.spec import LoraSpec
from coalora.quant.setting import FIELD_VALUES
from coalora.space import ConfigSpace

CHECKPOINT_FORMAT = "coalora.checkpoint/v1"
META_FILE = "checkpoint.json"
TENSOR_FILE = "adapter.safetensors"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "assets" / "checkpoints" / "default"
RESERVED_KEYS = ("format", "base_model", "lora", "theta", "space", "tensors", "code_version")
_SAMPLE = 64  # values per matrix hashed into the weights fingerprint


def weights_fingerprint(model: CoaLoraModel) -> str:
    """16 hex digits: sha256 over the first values of every original target matrix and the
    input embedding, rounded to bf16 first so fp32 and bf16 loads of one model agree."""
    h = hashlib.sha256(model.space.fingerprint.encode())
    tensors = [model.switcher.originals[m.name] for m in model.space.matrices]
    emb = model.model.get_input_embeddings() if hasattr(model.model, "get_input_embeddings") else None
    if emb is not None:
        tensors.append(emb.weight.detach())
    for t in tensors:
        sample = t.reshape(-1)[:_SAMPLE].to(torch.float32).to(torch.bfloat16).cpu()
        h.update(sample.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def _space_description(space: ConfigSpace) -> dict[str, Any]:
    return {
        "model_name": space.model_name,
        "fingerprint": space.fingerprint,
        "n_blocks": space.n_blocks,
        "n_matrices": space.n_matrices,
        "n_params": space.n_params,
        "module_types": sorted({m.module_type for m in space.matrices}),
        "fields": {k: list(v) for k, v in FIELD_VALUES.items()},
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: CoaLoraModel, path: str | Path, metadata: dict[str, Any] | None = None,
                    overwrite: bool = True) -> Path:
    """Write `model`'s trainable tensors and metadata to the folder `path`, atomically.

    `metadata`: JSON-serialisable extras (training recipe, data-split manifest, seed ...);
    the keys in RESERVED_KEYS are written by this function. An existing folder is replaced
    only if it is a coalora checkpoint (and `overwrite`); any other existing path is refused.
    """
    from safetensors.torch import save_file

    from coalora.version import code_version

    path = Path(path)
    metadata = dict(metadata or {})
    clash = sorted(set(metadata) & set(RESERVED_KEYS))
    if clash:
        raise ConfigError(f"metadata key(s) {', '.join(map(repr, clash))} are reserved; reserved keys are {', '.join(RESERVED_KEYS)}")
    if path.exists():
        is_ckpt = path.is_dir() and ((path / META_FILE).exists() or not any(path.iterdir()))
        if not (overwrite and is_ckpt):
            raise OutputExistsError(
                f"checkpoint path {str(path)!r} already exists"
                + ("" if is_ckpt else " and is not a coalora checkpoint folder; choose another path")
            )
    tensors = {n: t.to("cpu").contiguous() for n, t in model.trainable_state_dict().items()}
    with atomic_folder(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": "pt"})
        (tmp / TENSOR_FILE).chmod(plain_mode())  # safetensors writes owner-only files
        meta = {
            "format": CHECKPOINT_FORMAT,
            "base_model": {
                "name": model.space.model_name,
                "fingerprint": model.space.fingerprint,
                "weights_fingerprint": weights_fingerprint(model),
            },
            "lora": model.spec.to_dict(),
            "theta": model.theta.architecture() if model.theta is not None else None,
            "space": _space_description(model.space),
            "tensors": {
                "file": TENSOR_FILE,
                "sha256": _sha256(tmp / TENSOR_FILE),
                "n_tensors": len(tensors),
                "n_params": sum(t.numel() for t in tensors.values()),
            },
            "code_version": code_version(),
            **metadata,
        }
        try:
            text = json.dumps(meta, indent=1, sort_keys=False, allow_nan=False) + "\n"
        except (TypeError, ValueError) as e:
            raise ConfigError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
        (tmp / META_FILE).write_text(text)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """'default' -> DEFAULT_CHECKPOINT; the bare name of another shipped checkpoint ('lm':
    assets/checkpoints/lm) -> its folder, unless a path of that name exists here; otherwise
    the path itself."""
    text = str(path)
    if text == "default":
        return DEFAULT_CHECKPOINT
    shipped = DEFAULT_CHECKPOINT.parent / text
    if Path(text).name == text and not Path(text).exists() and (shipped / META_FILE).is_file():
        return shipped
    return Path(path).expanduser()


def read_metadata(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Validate a checkpoint folder without loading any model -> (folder, metadata).

    Checks: folder exists, checkpoint.json is a JSON object of a known format, the tensor
    file exists, its sha256 matches, and it is a safetensors file.
    """
    folder = resolve_checkpoint(path)
    if not folder.exists():
        hint = " (the default checkpoint has not been trained yet)" if folder == DEFAULT_CHECKPOINT else ""
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist{hint}")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {str(folder)!r} is a file; give the checkpoint folder (with {META_FILE} and {TENSOR_FILE})")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{str(folder)!r} is not a coalora checkpoint: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(meta_path)!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{str(meta_path)!r} must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(meta_path)!r}: unknown metadata format {meta.get('format')!r}; this coalora reads {CHECKPOINT_FORMAT!r}"
        )
    for key in ("base_model", "lora", "tensors"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{str(meta_path)!r}: field {key!r} is missing or not an object")
    name = meta["tensors"].get("file")
    # The tensor file must be a plain safetensors name inside the folder (no paths, no pickles).
    if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{str(meta_path)!r}: tensor file {name!r} must be a '.safetensors' file name inside the folder")
    tensor_path = folder / name
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
    _check_safetensors(tensor_path)
    want = meta["tensors"].get("sha256")
    if want is not None and _sha256(tensor_path) != want:
        raise CheckpointError(f"{str(tensor_path)!r} does not match the sha256 in {META_FILE}: the file was changed or damaged")
    return folder, meta


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a valid safetensors file ({str(e).splitlines()[0]})") from None


def base_model_source(meta: dict[str, Any], base_model: str | None = None) -> str:
    """Where a checkpoint's base model is loaded from: `base_model` (the `--model` of a command
    that takes a checkpoint: a local folder or a cached hub id) or, when None or empty, the
    name recorded in the checkpoint (base_model.name)."""
    recorded = (meta.get("base_model") or {}).get("name")
    name = base_model if base_model is not None and str(base_model).strip() else recorded
    if not name:
        raise CheckpointError("the checkpoint does not record its base model's name; give --model (a local folder "
                              "or a cached hub id of the model it was trained on)")
    return str(name)


def checkpoint_space(folder: str | Path, meta: dict[str, Any], base_model: str | None = None) -> ConfigSpace:
    """The configuration space of a checkpoint's base model from that model's config alone (no
    weights: coalora.models.build_space_for), named as base_model_source names it.
    ModelMismatchError (one line naming both models and structure fingerprints) when
    `base_model` has other projections than the checkpoint was trained on."""
    from coalora.models import build_space_for

    name = base_model_source(meta, base_model)
    with _hint_model_option(folder, meta, name):
        space = build_space_for(name)
    _check_structure(space, Path(folder), meta)
    return space


@contextlib.contextmanager
def _hint_model_option(folder: str | Path, meta: dict[str, Any], name: str):
    """A ModelLoadError for the base model a checkpoint records (not one given with --model)
    says that --model can load it from elsewhere."""
    try:
        yield
    except ModelLoadError as e:
        if name != (meta.get("base_model") or {}).get("name"):
            raise
        raise ModelLoadError(f"{e}. Checkpoint {checkpoint_label(Path(folder), meta)!r} records this base model; "
                             "give --model (the app: COALORA_MODEL) with a local folder or cached hub id of it") from None


def _check_structure(space: ConfigSpace, folder: Path, meta: dict[str, Any]) -> None:
    base = meta.get("base_model") or {}
    space.check_fingerprint(base.get("fingerprint"), f"checkpoint {checkpoint_label(folder, meta)!r}", base.get("name"),
                            made="was trained on")


def load_checkpoint(path: str | Path = "default", dtype: torch.dtype = torch.float32,
                    model: torch.nn.Module | None = None, tokenizer: Any = None,
                    quiet: bool = True, base_model: str | None = None) -> tuple[CoaLoraModel, Any, dict[str, Any]]:
    """Load a checkpoint onto its base model -> (CoaLoraModel, tokenizer, metadata).

    Without `model`, the base model is loaded with coalora.models.load_model in `dtype` from
    `base_model` (a local folder or a cached hub id: the `--model` of eval, search, predict,
    export and the app) or, when None, from the name recorded in the checkpoint. An
    overriding `base_model` is checked against the checkpoint's structure fingerprint from
    its config alone, before any weight is loaded; the model's space is named `base_model`
    (so cost tables and result records name where it was loaded from).
    A given `model` must be an unwrapped HF model with its original weights (it is wrapped in
    place; on a mismatch it is left as it was); the returned tokenizer is then `tokenizer`
    (None unless given); `base_model` then only names its space.
    Refuses: missing folder or files, unknown format, non-safetensors or altered tensor
    file, and a base model whose structure or weights fingerprint differs.
    """
    from safetensors.torch import load_file

    folder, meta = read_metadata(path)
    spec = _lora_spec(folder, meta)
    base = meta["base_model"]
    if model is None:
        from coalora.models import load_model

        name = base_model_source(meta, base_model)
        if name != base.get("name"):  # another source: refuse other projections before loading weights
            checkpoint_space(folder, meta, name)
        with _hint_model_option(folder, meta, name):
            model, tokenizer = load_model(name, dtype=dtype, quiet=quiet)
    else:
        name = base_model or base.get("name")
    space = ConfigSpace.from_model(model, name)
    _check_structure(space, folder, meta)
    wrapped = CoaLoraModel(model, space, spec)
    try:
        fp = weights_fingerprint(wrapped)
        if base.get("weights_fingerprint") not in (None, fp):
            raise ModelMismatchError(
                f"checkpoint {str(folder)!r} was trained on other weights than those of {name!r} "
                f"(weights fingerprint {base.get('weights_fingerprint')} vs {fp}); load its base model "
                f"{base.get('name')!r} (or a copy of it with --model)"
            )
        _load_tensors(wrapped, load_file(str(folder / meta["tensors"]["file"])), folder)
    except BaseException:
        wrapped.unwrap()  # leave a caller's model as it was
        raise
    return wrapped, tokenizer, meta


@dataclass(frozen=True)
class LoadedModel:
    """What `load_for_eval` returns: the model every caller configures the same way."""

    model: CoaLoraModel
    tokenizer: Any
    method: str  # the training method of the checkpoint ("coalora", "lora", "shared"), or "base"
    checkpoint: str | None  # checkpoint_label(...) or None: never a server path
    meta: dict[str, Any]


def training_method(meta: dict[str, Any]) -> str:
    """How a checkpoint was trained ("coalora", "lora", "shared"; coalora when it does not say)."""
    return str((meta.get("training") or {}).get("method", "coalora"))


def _lora_spec(folder: Path, meta: dict[str, Any]) -> LoraSpec:
    """The checkpoint's LoraSpec; CheckpointError naming the file when its section is bad."""
    try:
        return LoraSpec.from_dict(meta["lora"])
    except ConfigError as e:
        raise CheckpointError(f"{str(folder)!r}: bad 'lora' section in {META_FILE}: {e}") from None


def training_task(meta: dict[str, Any]) -> str:
    """The task a checkpoint was trained on (lambada for the lm recipe): what its quick eval,
    pool and front measure by default; sst2 for a checkpoint that does not say."""
    return str((meta.get("training") or {}).get("task") or "sst2")


def checkpoint_label(folder: Path, meta: dict[str, Any]) -> str:
    """How results name a checkpoint: its folder name ('default' for the shipped one) and the
    first 16 hex digits of its tensor file's sha256, e.g. 'default@sha256:1a2b...'."""
    name = "default" if Path(folder).resolve() == DEFAULT_CHECKPOINT.resolve() else Path(folder).name
    sha = str((meta.get("tensors") or {}).get("sha256") or "")[:16]
    return f"{name}@sha256:{sha}" if sha else name


def load_for_eval(checkpoint: str | Path | None, model_name: str | None = None, dtype: torch.dtype = torch.float32,
                  quiet: bool = True) -> LoadedModel:
    """A checkpoint on its base model, or (checkpoint None) the base model `model_name`
    (None: coalora.models.DEFAULT_MODEL) with a zero adapter (CoaLoraModel.for_base).
    With a checkpoint, `model_name` is where its base model is loaded from (None: the name it
    records; load_checkpoint's `base_model`): ModelMismatchError when that model's projections
    or weights differ from the ones the checkpoint was trained on."""
    if checkpoint is None:
        from coalora.models import DEFAULT_MODEL, load_model

        model_name = model_name or DEFAULT_MODEL
        base, tok = load_model(model_name, dtype=dtype, quiet=quiet)
        return LoadedModel(CoaLoraModel.for_base(base, model_name), tok, "base", None, {})
    model, tok, meta = load_checkpoint(checkpoint, dtype=dtype, quiet=quiet, base_model=model_name)
    folder = resolve_checkpoint(checkpoint)
    method = training_method(meta)
    return LoadedModel(model, tok, method, checkpoint_label(folder, meta), meta)


# What makes two adapters interchangeable on one model (LoraSpec.seed and init only start training).
_SPEC_STRUCTURE = ("rank", "alpha", "dropout", "use_theta", "theta_hidden", "theta_embed", "theta_inputs")


def load_alongside(loaded: LoadedModel, checkpoint: str | Path) -> tuple[LoadedModel, dict[str, torch.nn.Parameter]]:
    """Another checkpoint for the model `loaded` already holds, without a second base model:
    -> (its LoadedModel, sharing the model and tokenizer; its parameters by name, for
    CoaLoraModel.use_adapter). The model keeps computing with its own adapter until then.
    CheckpointError / ModelMismatchError when the checkpoint was trained on another base
    (structure or weights fingerprint) or its adapter has another structure (LoraSpec)."""
    from safetensors.torch import load_file

    model = loaded.model
    folder, meta = read_metadata(checkpoint)
    label = checkpoint_label(folder, meta)
    _check_structure(model.space, folder, meta)
    have = (loaded.meta.get("base_model") or {}).get("weights_fingerprint")
    want = meta["base_model"].get("weights_fingerprint")
    if None not in (have, want) and have != want:
        raise ModelMismatchError(f"checkpoint {label!r} was trained on other weights (fingerprint {want}) than the "
                                 f"loaded one's {loaded.checkpoint!r} ({have}); it needs its own base model")
    spec = _lora_spec(folder, meta)
    differ = [f"{k} {getattr(spec, k)!r} vs {getattr(model.spec, k)!r}" for k in _SPEC_STRUCTURE
              if getattr(spec, k) != getattr(model.spec, k)]
    if differ:
        raise CheckpointError(f"checkpoint {label!r} has another adapter structure than {loaded.checkpoint!r} "
                              f"({'; '.join(differ)}): it cannot share one model")
    tensors = load_file(str(folder / meta["tensors"]["file"]))
    own = dict(model.named_trainable_parameters())
    _check_tensors(own, tensors, folder)
    params = {n: torch.nn.Parameter(tensors[n].to(p.device, p.dtype), requires_grad=p.requires_grad)
              for n, p in own.items()}
    method = training_method(meta)
    return LoadedModel(model, loaded.tokenizer, method, label, meta), params


def _check_tensors(params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """CheckpointError unless `tensors` has exactly the names and shapes of `params`."""
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise CheckpointError(f"tensors of {str(folder)!r} do not fit the model: {', '.join(parts)}")
    for n, p in params.items():
        t = tensors[n]
        if t.shape != p.shape:
            raise CheckpointError(f"tensor {n!r} of {str(folder)!r} has shape {tuple(t.shape)}, the model needs {tuple(p.shape)}")


def _load_tensors(model: CoaLoraModel, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    params = dict(model.named_trainable_parameters())
    _check_tensors(params, tensors, folder)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])


def load_weights(model: CoaLoraModel, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's tensors into an existing CoaLoraModel (e.g. to resume training)
    -> metadata. Checks the folder (read_metadata) and the structure fingerprint; the
    tensors must match the model's trainable parameters exactly."""
    from safetensors.torch import load_file

    folder, meta = read_metadata(path)
    model.space.check_fingerprint(meta["base_model"].get("fingerprint"), f"checkpoint {checkpoint_label(folder, meta)!r}",
                                  meta["base_model"].get("name"), made="was trained on")
    _load_tensors(model, load_file(str(folder / meta["tensors"]["file"])), folder)
    return meta
