"""A configuration for a bit budget by the integer program of method.md section 2 (LQ-LoRA).

    minimise   sum_i sum_c F(i, c) x_ic
    subject to sum_c x_ic = 1 for every matrix i          (exactly one setting each)
               sum_i sum_c (n_i / N) bpp(c) x_ic <= budget (average bits per weight)
               x_ic in {0, 1}

solved by scipy.optimize.milp (HiGHS). Settings that another setting beats on both cost and
bits are removed per matrix first: an optimum never needs them, and the program shrinks
from 432 to a few dozen columns per matrix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from coalora.errors import ConfigError
from coalora.search.costs import CostTable
from coalora.space import Configuration

# HiGHS meets the budget row up to its feasibility tolerance (1e-7 absolute); solve against a
# budget this much lower so the exact avg_bits never exceeds the asked budget.
_BUDGET_MARGIN = 1e-6


@dataclass(frozen=True)
class Allocation:
    """The ILP's answer: the configuration, its exact avg_bits and the solver's bookkeeping."""

    config: Configuration
    budget: float
    avg_bits: float
    total_error: float
    status: str
    mip_gap: float
    seconds: float

    def to_dict(self) -> dict:
        return {"method": "ilp", "budget": self.budget, "avg_bits": self.avg_bits,
                "total_error": self.total_error, "status": self.status, "mip_gap": self.mip_gap,
                "seconds": self.seconds}


def check_budget(budget: float, min_bits: float) -> float:
    """A finite budget at least the cheapest setting's bits per weight, else ConfigError."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise ConfigError(f"budget {budget!r} is not a number; give average bits per weight, e.g. 3.5") from None
    if not math.isfinite(b):
        raise ConfigError(f"budget {budget!r} is not finite; give average bits per weight, e.g. 3.5")
    if b < min_bits:
        raise ConfigError(
            f"budget {b:g} bits per weight is impossible: the cheapest setting needs {min_bits:.4f} "
            f"(nf2 with 2-bit scales, bf16, blocks 64x256); the minimum budget is {min_bits:.4f}"
        )
    return b


def pareto_settings(errors: torch.Tensor, bpp: torch.Tensor) -> list[np.ndarray]:
    """Per matrix, the column indices not beaten on both error and bits by another column.

    `errors`: (n_matrices, n_settings); `bpp`: (n_settings,). -> one index array per matrix.
    """
    order = torch.argsort(bpp, stable=True).numpy()
    e = errors.numpy()[:, order]  # columns by increasing bits
    keep = []
    for row in e:
        # Keep a column when its error is below every cheaper column's (running minimum).
        best = np.minimum.accumulate(np.concatenate([[np.inf], row[:-1]]))
        keep.append(order[row < best])
    return keep


def allocate_ilp(costs: CostTable, budget: float, time_limit: float = 30.0, mip_rel_gap: float = 1e-4) -> Allocation:
    """The configuration of least total quantization error with avg_bits <= `budget`.

    Raises ConfigError for a budget below the cheapest setting (naming the minimum).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    space = costs.space
    bpp = costs.bits_per_param
    budget = check_budget(budget, float(bpp.min()))
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    share = (numel / numel.sum()).numpy()  # n_i / N
    cols = pareto_settings(costs.errors.to(torch.float64), bpp)
    # Flatten the kept (matrix, setting) pairs into one variable vector.
    mat_of = np.concatenate([np.full(len(c), i) for i, c in enumerate(cols)])
    set_of = np.concatenate(cols)
    err = costs.errors.to(torch.float64).numpy()[mat_of, set_of]
    scale = float(err.mean()) or 1.0  # keep typical objective coefficients O(1) for the solver
    weight = share[mat_of] * bpp.numpy()[set_of]
    n_var = len(set_of)
    one_each = csr_matrix((np.ones(n_var), (mat_of, np.arange(n_var))), shape=(space.n_matrices, n_var))
    # The cheapest configuration must stay feasible at budget == min_bits (its avg_bits is exact).
    limit = max(budget - _BUDGET_MARGIN, float(bpp.min()))
    cons = [LinearConstraint(one_each, 1, 1), LinearConstraint(weight[None, :], -np.inf, limit)]
    res = milp(err / scale, integrality=np.ones(n_var), bounds=Bounds(0, 1), constraints=cons,
               options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    if res.x is None:
        raise ConfigError(f"the integer program found no configuration for budget {budget:g} ({res.message})")
    x = res.x.reshape(-1)
    chosen = np.full(space.n_matrices, -1)
    for i in range(space.n_matrices):
        members = np.flatnonzero(mat_of == i)
        chosen[i] = set_of[members[np.argmax(x[members])]]  # the one variable at 1 (robust to 0.9999)
    config = Configuration(space, tuple(costs.settings[j] for j in chosen), costs.family)
    avg = config.avg_bits
    if avg > budget:  # cannot happen with the margin above; fail loudly rather than overspend
        raise RuntimeError(f"ILP result has avg_bits {avg!r} > budget {budget!r}")
    total = float(costs.errors.to(torch.float64)[torch.arange(space.n_matrices), torch.as_tensor(chosen)].sum())
    gap = float(getattr(res, "mip_gap", float("nan")) or 0.0)
    return Allocation(config, budget, avg, total, str(res.message), gap, time.perf_counter() - t0)


def allocate_lagrangian(costs: CostTable, budget: float, iterations: int = 60) -> Configuration:
    """A fast, deterministic near-optimal allocation: the Lagrangian relaxation of the ILP.

    For a price lam >= 0 on bits, every matrix independently takes
    argmin_c F(i, c) + lam * (n_i / N) * bpp(c); avg_bits falls as lam rises, so a bisection
    finds the cheapest price that meets the budget. A greedy pass then spends the slack on
    the upgrades with the best error reduction per bit. Milliseconds, no solver, the same
    answer on every machine (the ILP with a time limit is not): used for training sets.
    """
    space = costs.space
    bpp = costs.bits_per_param  # (S,)
    budget = check_budget(budget, float(bpp.min()))
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    share = numel / numel.sum()  # (M,)
    err = costs.errors.to(torch.float64)
    err = err / (err.max() or 1.0)
    rows = torch.arange(space.n_matrices)

    def choose(lam: float) -> torch.Tensor:
        return torch.argmin(err + lam * share[:, None] * bpp[None, :], dim=1)  # (M,)

    def bits(idx: torch.Tensor) -> float:
        return float((share * bpp[idx]).sum())

    lo, hi = 0.0, 1.0
    while bits(choose(hi)) > budget and hi < 1e12:
        hi *= 10
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bits(choose(mid)) > budget else (lo, mid)
    idx = choose(hi)
    if bits(idx) > budget:  # only when even the cheapest choice overspends (budget ~ min)
        idx = torch.full((space.n_matrices,), int(torch.argmin(bpp)))
    # Greedy fill: repeatedly take the single-matrix change with the best error drop per bit.
    for _ in range(4 * space.n_matrices):
        slack = budget - bits(idx)
        extra = share[:, None] * (bpp[None, :] - bpp[idx][:, None])  # (M, S) added avg bits
        gain = err[rows, idx][:, None] - err  # (M, S) error reduction
        ok = (extra > 0) & (extra <= slack - 1e-12) & (gain > 0)
        if not ok.any():
            break
        ratio = torch.where(ok, gain / extra.clamp_min(1e-30), torch.full_like(gain, -1.0))
        i, s = divmod(int(torch.argmax(ratio)), ratio.shape[1])
        idx[i] = s
    config = Configuration(space, tuple(costs.settings[j] for j in idx.tolist()), costs.family)
    if config.avg_bits > budget:  # float rounding of the running sum; never overspend
        raise RuntimeError(f"Lagrangian allocation has avg_bits {config.avg_bits!r} > budget {budget!r}")
    return config
