"""The one result record type: every evaluated point (CLI, search, reports, app) is a
`ResultRecord`, stored one JSON object per line.

Appending is safe: each record is written with a single `write` of one complete line while
holding an exclusive `flock`, and if the file's last line was torn by a crash (no final
newline) a newline is written first, so a new record never merges into broken text.
Readers skip lines that are not valid JSON (a torn last line) with a warning.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from coalora.errors import CoaloraError

RECORD_FORMAT = "coalora.result/v1"
DEFAULT_RECORDS = Path("results") / "records.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ResultRecord:
    """One measured point: a model under one quantization configuration on one task.

    config_hash / config_path / config: the configuration's content hash, the file it came
    from (or preset name), and optionally the inline JSON object; all None for "none" (the
    weights as loaded), in which case avg_bits and packed_bytes are None too.
    method: "base" (quantized base, no adapter), "coalora", "qlora", "shared-lora", ...
    checkpoint: adapter checkpoint folder or None. split / split_hash: the data manifest
    (coalora.data) and its short hash. dtype: compute precision ("bf16" or "fp32").
    """

    task: str
    metric: str
    value: float
    stderr: float
    n: int
    model: str
    method: str = "base"
    checkpoint: str | None = None
    config_hash: str | None = None
    config_path: str | None = None
    config: dict[str, Any] | None = None
    avg_bits: float | None = None
    packed_bytes: int | None = None
    seed: int = 0
    split: dict[str, Any] = field(default_factory=dict)
    split_hash: str = ""
    seconds: float | None = None
    dtype: str | None = None
    code_version: str = ""
    time: str = field(default_factory=utc_now)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = RECORD_FORMAT

    def __post_init__(self) -> None:
        if not self.code_version:
            from coalora.version import code_version

            self.code_version = code_version()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One line of strict JSON (no newline inside; NaN/inf written as null)."""
        return json.dumps(_finite(self.to_dict()), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_estimate(cls, est: Any, *, config: Any, model: str, split: Any, method: str = "base",
                      checkpoint: str | None = None, config_path: str | None = None, seed: int | None = None,
                      seconds: float | None = None, extra: dict[str, Any] | None = None) -> "ResultRecord":
        """The record of one measurement: an eval Estimate (coalora.eval.harness) of `model`
        under `config` (a Configuration, or None for the weights as loaded) on `split` (a
        coalora.data.Split). The one place a measured point becomes a record."""
        return cls(
            task=split.task, metric=est.metric, value=est.value, stderr=est.stderr, n=est.n, model=model,
            method=method, checkpoint=checkpoint,
            config_hash=None if config is None else config.hash, config_path=config_path,
            config=None if config is None else config.to_dict(),
            avg_bits=None if config is None else config.avg_bits,
            packed_bytes=None if config is None else config.packed_bytes,
            seed=split.seed if seed is None else seed, split=split.manifest, split_hash=split.manifest_hash,
            seconds=est.seconds if seconds is None else seconds, dtype=est.dtype,
            extra={**est.extra, **(extra or {})},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResultRecord":
        """Build from a dict; unknown keys go into `extra` (newer writers stay readable)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            kwargs["extra"] = {**kwargs.get("extra", {}), **unknown}
        missing = [k for k in ("task", "metric", "value", "stderr", "n", "model") if k not in kwargs]
        if missing:
            raise CoaloraError(f"result record lacks field(s) {', '.join(missing)}")
        return cls(**kwargs)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def append_record(path: str | Path, record: ResultRecord | dict[str, Any]) -> Path:
    """Append one record as one line to the JSON-lines file `path` (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = record if isinstance(record, ResultRecord) else ResultRecord.from_dict(record)
    line = (rec.to_json() + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # concurrent writers take turns
        size = os.fstat(fd).st_size
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # the last line was torn: start on a fresh line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return path


def iter_records(path: str | Path) -> Iterable[ResultRecord]:
    """Records of a JSON-lines file in order; unreadable lines are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                yield ResultRecord.from_dict(json.loads(text))
            except (json.JSONDecodeError, CoaloraError, TypeError) as e:
                warnings.warn(f"{path}:{lineno}: skipped an unreadable result line ({e})", stacklevel=2)


def read_records(path: str | Path) -> list[ResultRecord]:
    """All readable records of `path` ([] if the file does not exist)."""
    return list(iter_records(path))


def write_records(path: str | Path, records: Iterable[ResultRecord]) -> Path:
    """Replace `path` with these records, one JSON line each (temporary name, then rename)."""
    from coalora.io import atomic_write_text

    return atomic_write_text(Path(path), "".join(r.to_json() + "\n" for r in records))


def latest_per_config(path: str | Path, *, task: str, model: str, method: str, split_hash: str) -> list[ResultRecord]:
    """The last record of each configuration in `path` that was measured for `model` /
    `method` on `task` on exactly the rows `split_hash`, sorted by avg_bits ([] without a
    file). How the app reads its precomputed baselines: never a point measured on other rows."""
    latest: dict[str, ResultRecord] = {}
    for r in iter_records(path):
        if (r.task == task and r.model == model and r.method == method and r.split_hash == split_hash
                and r.avg_bits is not None and r.config_hash):
            latest[r.config_hash] = r
    return sorted(latest.values(), key=lambda r: r.avg_bits)
