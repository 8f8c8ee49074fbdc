"""Files the app offers for download: configuration JSON, the session table as CSV, adapter
zips. They live in the engine's workdir (by default inside this process's temporary folder,
coalora.tmp.process_tmp, which is removed at exit and swept after a crash), one subfolder
per kind, and each kind keeps only its newest files (KEEP), so a long-running app does not
grow its disk: an export zip of SmolLM2 is ~55 MB, so exports hold at most ~165 MB.
Gradio serves a copy from its own cache, which app.py bounds with Blocks(delete_cache=...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from coalora.space import Configuration

KEEP = {"exports": 3, "tables": 20, "configurations": 200}


def _slot(workdir: Path, kind: str) -> Path:
    """A fresh folder for one download of `kind`, after deleting all but the newest
    KEEP[kind] - 1 earlier ones."""
    root = Path(workdir) / kind
    root.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in root.iterdir()), key=lambda p: p.stat().st_mtime_ns)
    for p in old[: max(0, len(old) - (KEEP[kind] - 1))]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def write_config(workdir: Path, config: Configuration) -> Path:
    """The configuration JSON as a file -> path (reused while it is among the newest)."""
    root = Path(workdir) / "configurations"
    for p in root.glob(f"*/configuration-{config.hash}.json") if root.is_dir() else ():
        os.utime(p.parent)  # used again: keep it among the newest
        return p
    return config.save(_slot(workdir, "configurations") / f"configuration-{config.hash}.json")


def write_text(workdir: Path, name: str, text: str) -> Path:
    """A small text download (the session table as CSV) -> path."""
    path = _slot(workdir, "tables") / name
    path.write_text(text)
    return path


def export_folder(workdir: Path) -> Path:
    """A fresh folder for one adapter export (older exports beyond KEEP are deleted)."""
    return _slot(workdir, "exports")
