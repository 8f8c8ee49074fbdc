"""Non-dominated filtering, segmented Pareto selection (docs/design.md, "Search") and hypervolume.

Convention: both objectives are MINIMISED here (f1 = task loss or error, f2 = avg_bits);
`hypervolume` alone takes accuracy (maximised), because that is what comparison tables show.
"""

from __future__ import annotations

from typing import Sequence

import torch

from coalora.errors import ConfigError
from coalora.quant.setting import all_settings

_BPP = [s.bits_per_param for s in all_settings()]
BITS_MIN: float = min(_BPP)  # 2.0322...: every matrix at nf2/s2-bf16/64x256
BITS_MAX: float = max(_BPP)  # 8.625: every matrix at nf8/s8-fp32/16x16
DEFAULT_SEGMENTS = 40


def _as_1d(x: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} contains NaN or inf values")
    return t


def non_dominated(points: torch.Tensor) -> torch.Tensor:
    """Mask of the points no other point dominates (all columns minimised).

    `points`: (n, m). p dominates q when p <= q in every column and p < q in one; equal
    points do not dominate each other, so duplicates are all kept. -> (n,) bool.
    """
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.ndim != 2:
        raise ConfigError(f"points must be an (n, m) array, got shape {tuple(p.shape)}")
    le = (p[:, None, :] <= p[None, :, :]).all(-1)  # (n, n): row i weakly better than column j
    lt = (p[:, None, :] < p[None, :, :]).any(-1)
    dominated = (le & lt).any(0)  # column j is dominated by some row i
    return ~dominated


def segmented_pareto(
    bits: Sequence[float] | torch.Tensor,
    f1: Sequence[float] | torch.Tensor,
    n_segments: int = DEFAULT_SEGMENTS,
    bit_range: tuple[float, float] = (BITS_MIN, BITS_MAX),
) -> list[int]:
    """Indices of the points non-dominated in (f1, bits) within their own bit segment.

    The range `bit_range` is cut into `n_segments` equal segments (ours: the whole space,
    2.032 ... 8.625 bits, so segments do not move between epochs); a point below or above
    the range falls into the first or last segment. Keeping the local front of every
    segment keeps the training set spread from low to high bits. -> sorted indices.
    """
    b, f = _as_1d(bits, "bits"), _as_1d(f1, "f1")
    if b.shape != f.shape:
        raise ConfigError(f"bits has {b.numel()} values but f1 has {f.numel()}")
    if int(n_segments) != n_segments or n_segments < 1:
        raise ConfigError(f"n_segments {n_segments!r} must be a positive integer")
    lo, hi = map(float, bit_range)
    if not hi > lo:
        raise ConfigError(f"bit_range {bit_range!r} must be (low, high) with low < high")
    seg = ((b - lo) / (hi - lo) * n_segments).floor().clamp(0, n_segments - 1).long()  # (n,)
    keep: list[int] = []
    for s in seg.unique().tolist():
        idx = torch.nonzero(seg == s).reshape(-1)
        mask = non_dominated(torch.stack([f[idx], b[idx]], dim=1))
        keep.extend(idx[mask].tolist())
    return sorted(keep)


def hypervolume(
    bits: Sequence[float] | torch.Tensor,
    accuracy: Sequence[float] | torch.Tensor,
    bit_range: tuple[float, float] = (BITS_MIN, BITS_MAX),
) -> float:
    """Hypervolume of an accuracy-vs-bits front, in [0, 1]. Our normalisation:

    * accuracy is used as is (in [0, 1]; values outside are clipped);
    * bits are mapped linearly from `bit_range` (default the configuration space,
      2.032 ... 8.625 bits) onto [0, 1] and clipped;
    * reference point: normalised bits 1 (the largest configuration) and accuracy 0.

    The result is the area of {(x, y): some point has bits' <= x <= 1 and y <= accuracy},
    i.e. 1 for a zero-size model with accuracy 1. A point at the largest size adds nothing.
    """
    b, a = _as_1d(bits, "bits"), _as_1d(accuracy, "accuracy")
    if b.shape != a.shape:
        raise ConfigError(f"bits has {b.numel()} values but accuracy has {a.numel()}")
    if b.numel() == 0:
        return 0.0
    lo, hi = map(float, bit_range)
    if not hi > lo:
        raise ConfigError(f"bit_range {bit_range!r} must be (low, high) with low < high")
    x = ((b - lo) / (hi - lo)).clamp(0, 1)  # smaller is better
    y = a.clamp(0, 1)  # larger is better
    order = torch.argsort(x, stable=True)
    area, best_y = 0.0, 0.0
    xs = x[order].tolist() + [1.0]
    ys = y[order].tolist()
    for k in range(len(ys)):
        best_y = max(best_y, ys[k])  # the best accuracy reachable at size <= xs[k]
        area += (xs[k + 1] - xs[k]) * best_y
    return float(area)
