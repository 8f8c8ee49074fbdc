"""Per-session state kept in gr.State (deep-copied per user; never module-level).

Plain data only: the current configuration as (n_matrices, 5) field indices and the result
records (as dicts) of the points evaluated in this session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_POINTS = 500  # a long demo session keeps its latest points; the table and plot stay light


@dataclass
class SessionState:
    """config: (n_matrices, 5) field indices of the current NF-k configuration (None before the
    first change); target: the current deployment-target configuration, if any; points:
    finished quick-eval records of this session (with its current checkpoint), oldest first; current: the
    latest (possibly still streaming) record of the current configuration; reports: the
    reportable scores on the full test part, asked for explicitly per configuration."""

    config: list[list[int]] | None = None
    # a deployment target's configuration, when one is current: {"target": T, "formats": [...]}
    # (`config` then keeps the last NF-k configuration, restored when target coalora is picked)
    target: dict[str, Any] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    current: dict[str, Any] | None = None
    prediction: tuple[float, float] | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # config hash -> full-test record
    # the checkpoint selector: which of the app's checkpoints the session uses (None: the first),
    # and the points and reports of the others, kept while another one is chosen
    checkpoint: str | None = None
    shelved: dict[str, dict[str, Any]] = field(default_factory=dict)

    def identity(self) -> tuple:
        """What the session evaluates now: checkpoint and configuration (a newer edit changes it)."""
        return (self.checkpoint, self.config,
                None if self.target is None else (self.target["target"], tuple(self.target["formats"])))

    def switch_checkpoint(self, old: str, new: str) -> None:
        """Use checkpoint `new` (`old` the one in use): the points and reports measured with `old`
        are shelved and `new`'s come back; the configuration stays (same model, same space)."""
        if new == old:
            return
        self.shelved[old] = {"points": self.points, "reports": self.reports}
        back = self.shelved.pop(new, {"points": [], "reports": {}})
        self.points, self.reports = back["points"], back["reports"]
        self.current, self.prediction, self.checkpoint = None, None, new

    def add_point(self, record: dict[str, Any]) -> None:
        """Keep a finished record (replacing an earlier one of the same configuration)."""
        self.points = [p for p in self.points if p.get("config_hash") != record.get("config_hash")]
        self.points.append(record)
        del self.points[:-MAX_POINTS]
