"""The code version stamped on every result record and checkpoint."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from coalora import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (and '-dirty') when run from a checkout.

    Example: '0.1.0+g1a2b3c4' or '0.1.0+g1a2b3c4.dirty'; just '0.1.0' outside git.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return __version__
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        )
        suffix = ".dirty" if dirty.stdout.strip() else ""
        return f"{__version__}+g{sha.stdout.strip()}{suffix}"
    except (OSError, subprocess.SubprocessError):
        return __version__
