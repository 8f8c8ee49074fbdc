"""Temporary files that a crash cannot leave behind for good.

Every temporary name coalora makes carries the pid of the process that made it:
- process_tmp(): one folder per process under the system temp dir, `coalora-<pid>`,
  removed at exit (atexit); a SIGKILL skips atexit, so the next process_tmp() call of any
  coalora process sweeps the folders of pids that no longer run (sweep_stale);
- sibling_prefix(path): temporary siblings written next to an output (coalora.io's
  atomic writes, the model conversion) are named `.<name>.coalora-<pid>-...`, and
  sweep_siblings(path) removes those whose pid is dead before a new write starts.

A pid is "dead" when os.kill(pid, 0) says no such process. A reused pid only delays the
clean-up (the folder is kept while that unrelated process lives); it never removes the
files of a live coalora process. Processes in other pid namespaces sharing one temp dir
are out of scope (they would see each other's pids as dead).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

TAG = "coalora-"
_FOLDER_RE = re.compile(r"^coalora-(\d+)$")
_state: dict[int, Path] = {}  # pid -> this process's folder (a forked child gets its own)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as existing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # unknown: keep the files
    return True


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return True  # another sweeper got there first
    except OSError:
        return False


def sweep_stale(root: str | Path | None = None) -> list[Path]:
    """Remove the `coalora-<pid>` folders under `root` (default: the system temp dir) whose
    process no longer runs; -> the paths removed."""
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        m = _FOLDER_RE.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if _remove(Path(entry.path)):
                removed.append(Path(entry.path))
    return removed


def process_tmp() -> Path:
    """This process's temporary folder (created on first use, mode 700, removed at exit).

    The first call also sweeps the folders that killed coalora processes left behind.
    """
    pid = os.getpid()
    folder = _state.get(pid)
    if folder is not None and folder.is_dir():
        return folder
    root = Path(tempfile.gettempdir())
    sweep_stale(root)
    folder = root / f"{TAG}{pid}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if pid not in _state:
        atexit.register(_cleanup, pid)
    _state[pid] = folder
    return folder


def _cleanup(pid: int) -> None:
    if os.getpid() == pid and pid in _state:  # never from a forked child
        shutil.rmtree(_state.pop(pid), ignore_errors=True)


def sibling_prefix(path: str | Path) -> str:
    """The name prefix of this process's temporary siblings of `path`: `.<name>.coalora-<pid>-`."""
    return f".{Path(path).name}.{TAG}{os.getpid()}-"


def sweep_siblings(path: str | Path) -> list[Path]:
    """Remove temporary siblings of `path` (see sibling_prefix) left by dead processes."""
    path = Path(path)
    pattern = re.compile(r"^" + re.escape(f".{path.name}.{TAG}") + r"(\d+)-")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            if _remove(Path(entry.path)):
                removed.append(Path(entry.path))
    return removed
