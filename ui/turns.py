"""Fair turns for evaluations that share one model (issue 13: concurrency that helps).

Evaluations take turns in the order they started: the oldest runs chunk after chunk until it
ends, so its configuration is applied once, not once per chunk interleaved with others (which
made 8 concurrent evaluations 1.7x slower than the same 8 in sequence). Each evaluation still
holds the model lock for one chunk at a time only, so a newer edit supersedes a running
evaluation at its next chunk boundary. An evaluation whose consumer stops asking for chunks
(a generator left suspended by a dropped client) loses its turn after `stale_s` seconds and
moves to the back, so it can never block the others.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator


class Turns:
    def __init__(self, stale_s: float = 2.0) -> None:
        self.stale_s = stale_s
        self._cond = threading.Condition()
        self._queue: list[object] = []  # active evaluations, the one whose turn it is first
        self._last: dict[object, float] = {}  # when each last finished a chunk (or joined)

    @contextmanager
    def joined(self) -> Iterator[object]:
        """Register one evaluation for as long as the block runs -> its ticket."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._last[ticket] = time.monotonic()
        try:
            yield ticket
        finally:
            with self._cond:
                self._queue.remove(ticket)
                del self._last[ticket]
                self._cond.notify_all()

    def busy(self) -> bool:
        """Whether any evaluation is registered (running or waiting for its turn)."""
        with self._cond:
            return bool(self._queue)

    @contextmanager
    def turn(self, ticket: object) -> Iterator[None]:
        """Wait until it is `ticket`'s turn (or the head has gone stale), run one chunk."""
        with self._cond:
            while self._queue[0] is not ticket:
                head = self._queue[0]
                if time.monotonic() - self._last[head] > self.stale_s:
                    self._queue.remove(head)  # its consumer went away: back of the line
                    self._queue.append(head)
                    continue
                self._cond.wait(timeout=self.stale_s / 4)
        try:
            yield
        finally:
            with self._cond:
                self._last[ticket] = time.monotonic()
                self._cond.notify_all()
