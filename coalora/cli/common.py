"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
from pathlib import Path

from coalora.models import DEFAULT_MODEL, EMBEDDED
from coalora.space import PRESET_HELP


_SOURCES = "a local model folder, or a Hugging Face id already in the local cache (never downloaded)"
CHECKPOINT_MODEL_HELP = (
    "where to load the checkpoint's base model from (default: the model recorded in the checkpoint): "
    "a local model folder or a Hugging Face id already in the local cache, e.g. when its recorded hub id is "
    "not cached here or its folder moved; refused, naming both models and fingerprints, when its projections "
    "(structure fingerprint) or weights differ from the ones the checkpoint was trained on"
)


def add_model_arg(p: argparse.ArgumentParser, checkpoint: str = "none") -> None:
    """--model, the same for every command (coalora.models.resolve_model_path reads it).

    checkpoint "none": the command has no --checkpoint; --model is the base model (default
    smollm2-135m). "required": the command always takes a checkpoint; --model (default None:
    the checkpoint's recorded base) is where that base is loaded from (load_checkpoint's
    `base_model`, checkpoint_space). "optional": with --checkpoint as "required", without it
    the base model (None then means smollm2-135m; model_name_or_default)."""
    if checkpoint == "none":
        p.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"base model: {', '.join(EMBEDDED)} (embedded, the default), {_SOURCES}")
    elif checkpoint == "required":
        p.add_argument("--model", default=None, help=CHECKPOINT_MODEL_HELP)
    elif checkpoint == "optional":
        p.add_argument("--model", default=None,
                       help=f"without --checkpoint, the base model: {', '.join(EMBEDDED)} (embedded, the default), "
                       f"{_SOURCES}. With --checkpoint, {CHECKPOINT_MODEL_HELP}")
    else:
        raise ValueError(f"checkpoint={checkpoint!r}: none, required or optional")


def model_name_or_default(name: str | None) -> str:
    """--model of a command without a checkpoint given: the name, or the embedded default."""
    return name if name is not None and str(name).strip() else DEFAULT_MODEL


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """--device {auto,cpu,cuda} (coalora.device): eval, train and search share it."""
    from coalora.device import DEVICE_HELP

    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def config_help() -> str:
    presets = "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items())
    return f"a preset name or a configuration JSON file (see README). Presets: {presets}"


# ---- output paths: checked before any work starts --------------------------------------------
def _nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (as the user wrote it, never resolved)."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, option: str, shown: str) -> None:
    """The folder that will hold `path` exists or can be made, and accepts new files."""
    from coalora.errors import CoaloraError

    parent = path.parent
    base = _nearest_existing(parent)
    if not base.is_dir():
        what = "a file" if base.is_file() else "not a folder"
        raise CoaloraError(f"{option} {shown} cannot be written: {str(base)!r} is {what}, not a folder")
    # Probe with a real file: os.access says yes to root even on /proc or a read-only mount.
    try:
        fd, probe = tempfile.mkstemp(prefix=".coalora-probe-", dir=base)
    except OSError as e:
        raise CoaloraError(f"{option} {shown} cannot be written: cannot create files in {str(base)!r} "
                           f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_writable_file(path: str | os.PathLike, option: str, append: bool = False) -> Path:
    """Refuse an output file path that cannot be written (CoaloraError: one line naming the
    option): empty, an existing folder or non-regular file, under a file, or in a folder
    that refuses new files. `append`: the file is opened for appending (records)."""
    from coalora.errors import CoaloraError

    given = os.fspath(path)
    if not str(given).strip():
        raise CoaloraError(f"{option} is empty; give a file name")
    p = Path(given)
    shown = repr(str(given))
    if os.path.lexists(p):
        st = os.stat(p) if p.exists() else None
        if st is None:
            raise CoaloraError(f"{option} {shown} is a broken symbolic link")
        if stat.S_ISDIR(st.st_mode):
            raise CoaloraError(f"{option} {shown} is a folder; give a file name (e.g. {str(p / 'out.json')!r})")
        if not stat.S_ISREG(st.st_mode):
            raise CoaloraError(f"{option} {shown} exists and is not a regular file (a FIFO, socket or device)")
        if append:
            try:
                fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            except OSError as e:
                raise CoaloraError(f"{option} {shown} cannot be written: {e.strerror or e}") from None
            os.close(fd)
            return p
    _check_parent(p, option, shown)
    return p


def check_new_folder(path: str | os.PathLike, option: str, force: bool = False) -> Path:
    """Refuse an output folder path that cannot be created (CoaloraError / OutputExistsError):
    empty, existing (unless `force`, and then it must be a folder), under a file, or in a
    folder that refuses new entries."""
    from coalora.errors import CoaloraError, OutputExistsError

    given = os.fspath(path)
    if not str(given).strip():
        raise CoaloraError(f"{option} is empty; give a folder name")
    p = Path(given)
    shown = repr(str(given))
    if os.path.lexists(p):
        if not force:
            raise OutputExistsError(f"output folder {shown} already exists; pass --force to replace it")
        if not p.is_dir():
            raise CoaloraError(f"{option} {shown} exists and is not a folder; --force replaces folders only")
    if p.name in ("", ".", ".."):
        raise CoaloraError(f"{option} {shown} names no new folder; give a folder name")
    _check_parent(p, option, shown)
    return p
