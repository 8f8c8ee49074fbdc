"""Strict JSON reading for anything a user hands coalora (configuration files, uploads).

One place decides what counts as acceptable JSON, and every refusal is a ConfigError with
one line that names the source (the path as the user gave it, or a label such as
"configuration"), never a traceback:

- files: only regular files (a FIFO, device or folder is refused before it is read, so
  nothing blocks), at most `max_bytes` bytes;
- bytes: UTF-8 (a leading UTF-8 byte-order mark is ignored, as RFC 8259 allows);
- syntax: standard JSON only (NaN / Infinity are refused), no duplicate object keys,
  integers of at most MAX_INT_DIGITS digits, nesting at most `max_depth` deep.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from typing import Any

from coalora.errors import ConfigError

MAX_BYTES = 16 * 2**20  # 16 MiB: a configuration of any supported model is a few tens of KiB
MAX_DEPTH = 64  # configurations nest 3 deep
MAX_INT_DIGITS = 100  # no field holds a number anywhere near this long
_BOM = b"\xef\xbb\xbf"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_bytes(path: str | os.PathLike, source: str | None = None, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file `path` (ConfigError for anything else, or above max_bytes).

    The file is opened non-blocking and checked with fstat, so a FIFO is refused rather than
    waited on, even if it replaces a regular file between a check and the open.
    """
    given = os.fspath(path)
    source = source or f"file {given!r}"
    if given == "":
        raise ConfigError(f"{source}: the path is empty; give a file name")
    try:
        fd = os.open(given, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise ConfigError(f"cannot read {source}: it is a folder, not a file") from None
        raise ConfigError(f"cannot read {source}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"cannot read {source}: it is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise ConfigError(f"{source} is {st.st_size:,} bytes; at most {max_bytes:,} are accepted")
        chunks, total = [], 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as e:
                raise ConfigError(f"cannot read {source}: {e.strerror or e}") from None
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise ConfigError(f"{source} is more than {max_bytes:,} bytes; at most {max_bytes:,} are accepted")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"the key {_short(k)} appears twice in one object; each key may appear once")
        out[k] = v
    return out


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"it holds an integer of {digits:,} digits; numbers may have at most {MAX_INT_DIGITS}")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {_short(text)} is too large for a float")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not standard JSON; numbers must be finite")


class _Refused(Exception):
    """Raised inside the json hooks; turned into a ConfigError naming the source."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _depth_ok(data: Any, max_depth: int) -> bool:
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def loads(data: bytes | str, source: str = "input", max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON from bytes (UTF-8) or text; ConfigError naming `source` otherwise."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > max_bytes:
            raise ConfigError(f"{source} is {len(data):,} bytes; at most {max_bytes:,} are accepted")
        if data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            hint = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
            raise ConfigError(f"{source} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                              f"cannot be decoded{hint}") from None
    elif isinstance(data, str):
        text = data[1:] if data.startswith("\ufeff") else data
        if len(text) > max_bytes:
            raise ConfigError(f"{source} is {len(text):,} characters; at most {max_bytes:,} are accepted")
    else:
        raise ConfigError(f"{source}: expected JSON text, got {type(data).__name__}")
    if not text.strip():
        raise ConfigError(f"{source} is empty: it holds no JSON")
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int,
                           parse_float=_parse_float, parse_constant=_parse_constant)
    except _Refused as e:
        raise ConfigError(f"{source} is not accepted: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests arrays or objects too deeply; at most {max_depth} levels are accepted") from None
    except ValueError as e:  # any other conversion limit of the json module
        raise ConfigError(f"{source} is not accepted: {str(e).splitlines()[0][:200]}") from None
    if not _depth_ok(value, max_depth):
        raise ConfigError(f"{source} nests arrays or objects too deeply; at most {max_depth} levels are accepted")
    return value


def load(path: str | os.PathLike, source: str | None = None, max_bytes: int = MAX_BYTES,
         max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse the regular file `path` strictly (see the module doc)."""
    source = source or f"file {os.fspath(path)!r}"
    return loads(read_bytes(path, source, max_bytes), source, max_bytes, max_depth)
