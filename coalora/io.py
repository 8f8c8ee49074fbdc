"""Atomic file and folder writes: a reader never sees a half-written artefact.

Temporary siblings are named `.<name>.coalora-<pid>-...` (coalora.tmp.sibling_prefix); a
write first removes such siblings of its target that a killed process left (sweep_siblings),
so a crash costs disk space only until the next write of the same output. An OSError while
writing (disk full, permission denied) becomes a WriteError: one line, exit status 2.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from coalora.errors import CoaloraError, OutputExistsError
from coalora.tmp import sibling_prefix, sweep_siblings


class WriteError(CoaloraError, OSError):
    """An output could not be written (disk full, no permission, a file where a folder should be)."""


# Errors of the output's file system (not of whatever the caller reads while writing it).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def _write_error(path: Path, e: OSError) -> WriteError:
    return WriteError(f"cannot write {str(path)!r}: {e.strerror or e}")


def plain_mode() -> int:
    """The permission bits a plain open() gives a new file under the current umask."""
    umask = os.umask(0)  # reading the umask means setting it; restored at once
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same folder and os.replace."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder and os.replace
    (the file gets plain permissions, not mkstemp's owner-only ones)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_siblings(path)
        fd, tmp = tempfile.mkstemp(prefix=sibling_prefix(path), suffix=".tmp", dir=path.parent)
        os.fchmod(fd, plain_mode())  # mkstemp makes the file owner-only
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, CoaloraError):
            raise _write_error(path, e) from None
        raise
    return path


@contextmanager
def atomic_folder(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` in one rename.

    On any error the temporary folder is removed and `path` is left as it was; after a
    SIGKILL the next atomic_folder(path) removes it (see the module doc).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_siblings(path)
        tmp = Path(tempfile.mkdtemp(prefix=sibling_prefix(path), suffix=".tmp", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result is an ordinary folder
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise OutputExistsError(f"output {str(path)!r} already exists; pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=sibling_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, CoaloraError) and e.errno in _OUTPUT_ERRNOS:
            raise _write_error(path, e) from None
        raise
