"""The committed bad-input corpus (generate.py writes it; test_reliability_corpus.py runs it).

Reusable by other front ends (the app's handlers): config_cases() yields (name, bytes) of
every malformed configuration file; cases() yields every row as a dict.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterator

CORPUS = Path(__file__).resolve().parent / "corpus.jsonl"


def cases(kind: str | None = None) -> Iterator[dict]:
    """Every case (optionally of one kind: config, argv, path, pool), "data" decoded to bytes."""
    with open(CORPUS) as f:
        for line in f:
            row = json.loads(line)
            if kind is None or row["kind"] == kind:
                if "data" in row:
                    row["data"] = base64.b64decode(row["data"])
                yield row


def config_cases() -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every malformed configuration file of the corpus."""
    for row in cases("config"):
        yield row["name"], row["data"]
