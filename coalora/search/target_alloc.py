"""Budget allocation inside a deployment target (docs/targets.md, "Allocation under a target").

The integer program of coalora.search.allocate, with a target's formats as the columns:

    minimise   sum_i sum_f F(i, f) x_if              F = ||W_i - simulate(W_i, f)||^2 (weighted)
    subject to sum_f x_if = 1 for every matrix i     over the formats legal for i's shape only
               sum_i sum_f bytes(i, f) x_if <= cap   the target's storage accounting
               x_if in {0, 1}

where cap is the largest byte count with cap * 8 / N <= budget, so that the configuration's
exact avg_bits (storage_bytes * 8 / N) meets the budget; bytes differ per matrix (bnb int8's
per-row scales, -dq's nested blocks), so the cost is per (matrix, format), not per format.
Only legal formats are columns, so every allocation is legal by construction.

A separate module (not coalora.search.allocate) so that the NF-k allocations, and the
training sets, pool and front built from them, stay bit for bit what they were.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from coalora.errors import ConfigError
from coalora.io import atomic_write_bytes, atomic_write_text
from coalora.quant.targets import get_target
from coalora.search.costs import cached_files, cost_cache_dir, weights_digest
from coalora.space import ConfigSpace, TargetConfiguration

TARGET_COSTS_FORMAT = "coalora.target-costs/v1"


@dataclass(frozen=True)
class StorageTable:
    """What every (matrix, format) pair of a target costs in bytes, from shapes alone.

    `legal`: (n_matrices, n_formats) bool; `nbytes`: (n_matrices, n_formats) int64, the
    target's storage_bytes (0 where illegal); columns in `formats` order (target.formats).
    """

    space: ConfigSpace
    target: str
    formats: tuple[str, ...]
    legal: np.ndarray
    nbytes: np.ndarray

    @classmethod
    def build(cls, space: ConfigSpace, target: str) -> "StorageTable":
        t = get_target(target)
        formats = tuple(t.formats)
        legal = np.zeros((space.n_matrices, len(formats)), dtype=bool)
        nbytes = np.zeros((space.n_matrices, len(formats)), dtype=np.int64)
        for i, m in enumerate(space.matrices):
            ok = set(t.legal_formats(m.shape))
            for j, f in enumerate(formats):
                if f in ok:
                    legal[i, j], nbytes[i, j] = True, t.storage_bytes(m.shape, f, m.name)
        if not legal.any(axis=1).all():
            bad = space.matrices[int(np.flatnonzero(~legal.any(axis=1))[0])]
            raise ConfigError(f"{bad.name} {list(bad.shape)}: no {target} format is legal for this tensor")
        return cls(space, target, formats, legal, nbytes)

    def _extreme_bytes(self, pick) -> int:
        masked = np.where(self.legal, self.nbytes, -1 if pick is np.max else np.iinfo(np.int64).max)
        return int(pick(masked, axis=1).sum())

    @property
    def min_bits(self) -> float:
        """avg bits of the cheapest legal format on every matrix (the smallest budget)."""
        return self._extreme_bytes(np.min) * 8 / self.space.n_params

    @property
    def max_bits(self) -> float:
        """avg bits of the largest legal format on every matrix (the largest useful budget)."""
        return self._extreme_bytes(np.max) * 8 / self.space.n_params

    def cheapest(self) -> str:
        """One line: the formats of the cheapest configuration, e.g. 'gguf MXFP4 x180, TQ1_0 x30'."""
        masked = np.where(self.legal, self.nbytes, np.iinfo(np.int64).max)
        counts = Counter(self.formats[j] for j in masked.argmin(axis=1))
        return f"{self.target} " + ", ".join(f"{f} x{n}" for f, n in counts.most_common())

    def byte_cap(self, budget: float) -> int:
        """The largest byte count b with b * 8 / n_params <= budget (the float test avg_bits uses)."""
        n = self.space.n_params
        b = math.floor(budget * n / 8)
        while (b + 1) * 8 / n <= budget:
            b += 1
        while b > 0 and b * 8 / n > budget:
            b -= 1
        return b


@dataclass(frozen=True)
class TargetCostTable:
    """Quantization error of every (matrix, legal format) pair of one target.

    `errors`: (n_matrices, n_formats) float64, +inf where the format is illegal.
    """

    storage: StorageTable
    errors: torch.Tensor
    weighting: str = "mse"
    weights_digest: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = self.storage.legal.shape
        if tuple(self.errors.shape) != want:
            raise ConfigError(f"target cost table has shape {tuple(self.errors.shape)}; expected {want}")

    @property
    def space(self) -> ConfigSpace:
        return self.storage.space

    @property
    def stem(self) -> str:
        return target_cache_stem(self.space, self.storage.target, self.weighting)

    def save(self, folder: str | Path) -> Path:
        """Write `<stem>.safetensors` and `<stem>.json` atomically into `folder`; -> the .json path."""
        from safetensors.torch import save

        from coalora.version import code_version

        folder = Path(folder)
        atomic_write_bytes(folder / f"{self.stem}.safetensors", save({"errors": self.errors.to(torch.float64).contiguous()}))
        meta = {"format": TARGET_COSTS_FORMAT, "model": self.space.model_name, "fingerprint": self.space.fingerprint,
                "weights_digest": self.weights_digest, "target": self.storage.target, "weighting": self.weighting,
                "formats": list(self.storage.formats), "n_matrices": self.space.n_matrices,
                "code_version": code_version(), **self.meta}
        return atomic_write_text(folder / f"{self.stem}.json", json.dumps(meta, indent=1) + "\n")


def target_cache_stem(space: ConfigSpace, target: str, weighting: str) -> str:
    return f"{space.fingerprint}-{weighting}-target-{target}"


@torch.no_grad()
def compute_target_costs(model: torch.nn.Module, space: ConfigSpace, target: str,
                         fisher: dict[str, torch.Tensor] | None = None, progress: bool = False) -> TargetCostTable:
    """F(i, f) = sum_j f_ij (W_ij - simulate(W_i, f)_ij)^2 for every legal (matrix, format),
    from the weights in float32 (what `coalora eval`'s fp32 model and its switcher simulate);
    `fisher`: optional {matrix name: (out, in)} weights, None = plain MSE.
    -> TargetCostTable with errors (n_matrices, n_formats), +inf where illegal."""
    storage = StorageTable.build(space, target)
    t = get_target(target)
    modules = dict(model.named_modules())
    errors = torch.full(storage.legal.shape, math.inf, dtype=torch.float64)
    t0 = time.perf_counter()
    it: Iterable = list(enumerate(space.matrices))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"{target} quantization error per matrix", unit="matrix")
    for i, m in it:
        w = modules[m.name].weight.detach().to(torch.float32).cpu()
        f = None if fisher is None else fisher[m.name].to(torch.float32).cpu()
        for j, fmt in enumerate(storage.formats):
            if storage.legal[i, j]:
                d2 = (w - t.simulate(w, fmt, m.name).to(torch.float32)).double().square_()  # float64: tiny errors of F16
                errors[i, j] = float((d2 if f is None else d2 * f.double()).sum())
    meta = {"seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads()}
    return TargetCostTable(storage, errors, "fisher" if fisher is not None else "mse", weights_digest(model, space), meta)


def load_target_costs(space: ConfigSpace, target: str, weighting: str = "mse",
                      folders: Iterable[Path] | None = None) -> TargetCostTable | None:
    """The first cached table for (space, target, weighting) in assets/costs, then the disk
    cache; None when there is none (or it was made for other formats)."""
    from safetensors.torch import load_file

    stem = target_cache_stem(space, target, weighting)
    for meta_path, blob_path, meta in cached_files(space, stem, TARGET_COSTS_FORMAT, folders):
        storage = StorageTable.build(space, target)
        if tuple(meta.get("formats", ())) != storage.formats:
            continue  # made for another version of the target's format list: recompute
        extra = {k: meta[k] for k in ("seconds", "code_version", "torch_threads") if k in meta}
        extra["source"] = str(meta_path)
        return TargetCostTable(storage, load_file(str(blob_path))["errors"], weighting, meta.get("weights_digest", ""), extra)
    return None


def get_target_costs(space: ConfigSpace, target: str, model: torch.nn.Module | None = None, weighting: str = "mse",
                     progress: bool = False, save: bool = True) -> TargetCostTable:
    """The target cost table of `space`: cached if possible, else computed (and saved to the
    disk cache). With `model`, a cached table made from other weights is recomputed."""
    from coalora.search.costs import cached_or_computed, check_weighting

    check_weighting(weighting)
    return cached_or_computed(space, model, weighting, lambda: load_target_costs(space, target, weighting),
                              lambda m, fisher: compute_target_costs(m, space, target, fisher=fisher, progress=progress),
                              progress, save)


# ---- allocation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetAllocation:
    """A target configuration for a budget and its bookkeeping."""

    config: TargetConfiguration
    method: str
    budget: float
    total_error: float
    status: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "target": self.config.target, "budget": self.budget,
                "avg_bits": self.config.avg_bits, "storage_bytes": self.config.storage_bytes,
                "total_error": self.total_error, "status": self.status, "seconds": self.seconds,
                "formats": dict(Counter(self.config.formats))}


def check_target_budget(storage: StorageTable, budget: Any) -> float:
    """The budget as a float within [min_bits, max_bits] of the target, else ConfigError."""
    from coalora.search.allocate import check_budget

    return check_budget(budget, storage.min_bits, storage.max_bits, cheapest=storage.cheapest())


def _fill(errors: np.ndarray, nbytes: np.ndarray, legal: np.ndarray, cap: int, idx: np.ndarray) -> np.ndarray:
    """Spend the byte slack: repeatedly take the single-matrix change with the best error drop
    per byte that still fits (exact integer bytes), until none does. -> idx (M,)."""
    rows = np.arange(errors.shape[0])
    for _ in range(4 * errors.shape[0]):
        slack = cap - int(nbytes[rows, idx].sum())
        extra = nbytes - nbytes[rows, idx][:, None]  # (M, F) added bytes
        gain = errors[rows, idx][:, None] - errors  # (M, F) error drop (-inf where illegal)
        ok = legal & (extra > 0) & (extra <= slack) & (gain > 0)
        if not ok.any():
            break
        ratio = np.where(ok, gain / np.maximum(extra, 1), -1.0)
        i, j = divmod(int(np.argmax(ratio)), ratio.shape[1])
        idx[i] = j
    return idx


def _lagrangian(errors: np.ndarray, nbytes: np.ndarray, legal: np.ndarray, cap: int, iterations: int = 60) -> np.ndarray:
    """Per-matrix argmin of F + lam * bytes at the cheapest price lam that fits `cap`
    (bisection), then the slack filled greedily. errors: (M, F) finite scale, inf where illegal."""
    rows = np.arange(errors.shape[0])
    cheapest = np.where(legal, nbytes, np.iinfo(np.int64).max).argmin(axis=1)

    def choose(lam: float) -> np.ndarray:
        return np.where(legal, errors + lam * nbytes, np.inf).argmin(axis=1)

    def used(idx: np.ndarray) -> int:
        return int(nbytes[rows, idx].sum())

    from coalora.search.allocate import cheapest_price

    idx = choose(cheapest_price(lambda lam: used(choose(lam)) > cap, iterations, 1e30))
    if used(idx) > cap:  # only at a budget of about the minimum
        idx = cheapest.copy()
    return _fill(errors, nbytes, legal, cap, idx)


def _normalised(table: TargetCostTable) -> np.ndarray:
    """(M, F) errors scaled to O(1) (mean of the finite ones), inf where illegal."""
    e = table.errors.to(torch.float64).numpy().copy()
    finite = e[np.isfinite(e)]
    scale = float(finite.mean()) if finite.size and finite.mean() > 0 else 1.0
    return e / scale


def _result(table: TargetCostTable, idx: np.ndarray, method: str, budget: float, status: str,
            t0: float) -> TargetAllocation:
    st = table.storage
    config = TargetConfiguration(table.space, st.target, [st.formats[int(j)] for j in idx])  # checks legality
    if config.avg_bits > budget:  # cannot happen with integer byte caps; fail loudly rather than overspend
        raise RuntimeError(f"{method} allocation has avg_bits {config.avg_bits!r} > budget {budget!r}")
    total = float(table.errors.to(torch.float64).numpy()[np.arange(len(idx)), idx].sum())
    return TargetAllocation(config, method, budget, total, status, time.perf_counter() - t0)


def allocate_target_fast(table: TargetCostTable, budget: float) -> TargetAllocation:
    """Lagrangian relaxation + greedy fill over the target's legal formats (milliseconds)."""
    t0 = time.perf_counter()
    st = table.storage
    budget = check_target_budget(st, budget)
    idx = _lagrangian(_normalised(table), st.nbytes, st.legal, st.byte_cap(budget))
    return _result(table, idx, "fast", budget, "Lagrangian relaxation + greedy fill", t0)


def allocate_target_ilp(table: TargetCostTable, budget: float, time_limit: float = 30.0,
                        mip_rel_gap: float = 1e-3) -> TargetAllocation:
    """The integer program (module docstring) over every legal (matrix, format) pair, solved
    by HiGHS within `mip_rel_gap`; never worse than the fast allocation."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    st = table.storage
    budget = check_target_budget(st, budget)
    cap = st.byte_cap(budget)
    errors = _normalised(table)
    incumbent = _lagrangian(errors, st.nbytes, st.legal, cap)
    mat, col = np.nonzero(st.legal)  # one binary variable per legal pair
    n = len(mat)
    one_each = csr_matrix((np.ones(n), (mat, np.arange(n))), shape=(table.space.n_matrices, n))
    size = csr_matrix((st.nbytes[mat, col].astype(np.float64), (np.zeros(n, dtype=int), np.arange(n))), shape=(1, n))
    res = milp(errors[mat, col], integrality=np.ones(n), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(size, -np.inf, cap)],
               options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    rows = np.arange(table.space.n_matrices)
    best, status = incumbent, "Lagrangian incumbent (HiGHS found nothing better)"
    if res.x is not None:
        x = res.x
        chosen = np.array([col[np.flatnonzero(mat == i)[np.argmax(x[mat == i])]] for i in rows])
        # Exact integer bytes decide feasibility (HiGHS meets rows up to a tolerance).
        if int(st.nbytes[rows, chosen].sum()) <= cap:
            chosen = _fill(errors, st.nbytes, st.legal, cap, chosen)
            if errors[rows, chosen].sum() <= errors[rows, incumbent].sum():
                best, status = chosen, str(res.message)
    return _result(table, best, "ilp", budget, status, t0)


def allocate_target(table: TargetCostTable, budget: float, method: str = "ilp") -> TargetAllocation:
    """allocate_target_fast / allocate_target_ilp by name; 'gp' is refused (no target pool)."""
    if method == "fast":
        return allocate_target_fast(table, budget)
    if method == "ilp":
        return allocate_target_ilp(table, budget)
    if method == "gp":
        raise ConfigError(f"--method gp does not support target {table.storage.target!r} yet: its GP is fitted on "
                          "NF-k evaluations (no pool of target configurations); use --method fast or ilp")
    raise ConfigError(f"allocation method {method!r} is unknown; allowed values are fast, ilp")
