"""What a metric's direction is, decided in one place.

The search minimises f1 ("error"): f1 = 1 - value for metrics where higher is better
(accuracy and its variants), else the value itself (loss, bits per byte, perplexity).
"""

from __future__ import annotations

HIGHER_IS_BETTER: frozenset[str] = frozenset({"accuracy", "acc", "acc_norm", "f1_score", "matthews"})


def higher_is_better(metric: str) -> bool:
    """True for accuracy-like metrics (case-insensitive), False for losses and rates."""
    return str(metric).lower() in HIGHER_IS_BETTER


def to_error(metric: str, value: float) -> float:
    """A metric value -> the search's f1 (lower is better): 1 - value or value."""
    return 1.0 - value if higher_is_better(metric) else value


def from_error(metric: str, f1: float) -> float:
    """The search's f1 -> the metric value (inverse of to_error)."""
    return 1.0 - f1 if higher_is_better(metric) else f1
