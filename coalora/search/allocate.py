"""A configuration for a bit budget by the integer program of LQ-LoRA (docs/design.md, "Search").

    minimise   sum_i sum_c F(i, c) x_ic
    subject to sum_c x_ic = 1 for every matrix i          (exactly one setting each)
               sum_i sum_c (n_i / N) bpp(c) x_ic <= budget (average bits per weight)
               x_ic in {0, 1}

solved by scipy.optimize.milp (HiGHS). Two exact reductions come first:
- settings that another setting beats on both cost and bits are removed per matrix (an
  optimum never needs them): 432 -> a few dozen columns per matrix;
- Lagrangian reduced-cost fixing: with a bit price lam >= 0, every feasible x has
  cost(x) >= LB + sum_i rc(i, x_i), where LB = sum_i min_c (F + lam w)(i, c) - lam * budget
  and rc(i, c) = (F + lam w)(i, c) - min_c' (F + lam w)(i, c') >= 0. So a column with
  LB + rc(i, c) > UB (the cost of a known feasible configuration, from the Lagrangian
  heuristic below) is in no configuration better than that one and is dropped.
When UB - LB is already within the asked relative gap (default 1e-3 of the total error, on
SmolLM2 the usual case), the heuristic's configuration is returned as is: proven that close
to the optimum, in milliseconds; otherwise HiGHS solves the reduced program (bench/search.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

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


def _shown(value) -> str:
    """A short repr for messages (a 5,000-digit int cannot even be repr'd)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return "an integer that large"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_budget(budget: float, min_bits: float, max_bits: float | None = None,
                 cheapest: str = "nf2 with 2-bit scales, bf16, blocks 64x256") -> float:
    """A finite budget between the cheapest setting's bits per weight (`min_bits`) and the
    most precise one's (`max_bits`, default coalora.search.pareto.BITS_MAX = 8.625), else
    ConfigError. The one budget check of the CLI and the app; `cheapest` names the cheapest
    configuration in the message (a target's differs)."""
    from coalora.search.pareto import BITS_MAX

    top = BITS_MAX if max_bits is None else max_bits
    if isinstance(budget, bool):
        raise ConfigError(f"budget {budget!r} is not a number; give average bits per weight, e.g. 3.5")
    try:
        b = float(budget)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"budget {_shown(budget)} is not a usable number; give average bits per weight "
                          f"between {min_bits:.4f} and {top:.4f}, e.g. 3.5") from None
    if not math.isfinite(b):
        raise ConfigError(f"budget {_shown(budget)} is not finite; give average bits per weight between "
                          f"{min_bits:.4f} and {top:.4f}, e.g. 3.5")
    if b < min_bits:
        raise ConfigError(
            f"budget {b:g} bits per weight is impossible: the cheapest setting needs {min_bits:.4f} "
            f"({cheapest}); the minimum budget is {min_bits:.4f}"
        )
    if b > top + 1e-9:
        raise ConfigError(f"budget {b:g} bits per weight is above the most precise setting ({top:.4f}); "
                          f"the budget range is {min_bits:.4f} .. {top:.4f}")
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


def allocate_ilp(costs: CostTable, budget: float, time_limit: float = 30.0, mip_rel_gap: float = 1e-3) -> Allocation:
    """The configuration of least total quantization error with avg_bits <= `budget`, proven
    optimal up to `mip_rel_gap` (relative to its total error; 0 asks for the exact optimum).

    Raises ConfigError for a budget below the cheapest setting (naming the minimum).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    t0 = time.perf_counter()
    space = costs.space
    bpp = costs.bits_per_param
    budget = check_budget(budget, float(bpp.min()))
    share = _shares(space).numpy()  # n_i / N
    errors = costs.errors.to(torch.float64)
    scale = float(errors.mean()) or 1.0  # keep typical objective coefficients O(1) for the solver
    errors = errors / scale
    incumbent, lam = _lagrangian(errors, bpp, share, budget)
    rows = torch.arange(space.n_matrices)
    upper = float(errors[rows, incumbent].sum())  # UB: the incumbent's cost
    rc, lower = _reduced_costs(errors, bpp, share, budget, lam)  # (M, S), LB
    if upper - lower <= mip_rel_gap * abs(upper):
        # The incumbent is already proven within the asked optimality gap: no branch and bound.
        return _allocation(costs, incumbent.numpy(), budget, "within mip_rel_gap of the Lagrangian bound "
                           "(no branch and bound needed)", (upper - lower) / max(abs(upper), 1e-300), t0)
    slack = upper - lower + 1e-9 * max(1.0, abs(upper))  # float tolerance: keep borderline columns
    cols = [np.union1d(c[rc[i, c] <= slack], [int(incumbent[i])])  # the incumbent stays feasible
            for i, c in enumerate(pareto_settings(errors, bpp))]
    # Flatten the kept (matrix, setting) pairs into one variable vector.
    mat_of = np.concatenate([np.full(len(c), i) for i, c in enumerate(cols)])
    set_of = np.concatenate(cols)
    err = errors.numpy()[mat_of, set_of]
    weight = share[mat_of] * bpp.numpy()[set_of]
    n_var = len(set_of)
    one_each = csr_matrix((np.ones(n_var), (mat_of, np.arange(n_var))), shape=(space.n_matrices, n_var))
    # The cheapest configuration must stay feasible at budget == min_bits (its avg_bits is exact).
    limit = max(budget - _BUDGET_MARGIN, float(bpp.min()))
    cons = [LinearConstraint(one_each, 1, 1), LinearConstraint(weight[None, :], -np.inf, limit)]
    res = milp(err, integrality=np.ones(n_var), bounds=Bounds(0, 1), constraints=cons,
               options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap})
    if res.x is None:
        raise ConfigError(f"the integer program found no configuration for budget {budget:g} ({res.message})")
    x = res.x.reshape(-1)
    chosen = np.full(space.n_matrices, -1)
    for i in range(space.n_matrices):
        members = np.flatnonzero(mat_of == i)
        chosen[i] = set_of[members[np.argmax(x[members])]]  # the one variable at 1 (robust to 0.9999)
    gap = float(getattr(res, "mip_gap", float("nan")) or 0.0)
    # HiGHS stops within its gap: spend any slack it left, and never return worse than the incumbent.
    chosen = _greedy_fill(errors, bpp, torch.as_tensor(share), budget, torch.as_tensor(chosen)).numpy()
    if float(errors[rows, torch.as_tensor(chosen)].sum()) > upper:
        chosen = incumbent.numpy()
    return _allocation(costs, chosen, budget, str(res.message), gap, t0)


def _allocation(costs: CostTable, chosen: np.ndarray, budget: float, status: str, gap: float, t0: float) -> Allocation:
    space = costs.space
    config = Configuration(space, tuple(costs.settings[int(j)] for j in chosen), costs.family)
    avg = config.avg_bits
    if avg > budget:  # cannot happen with the margin above; fail loudly rather than overspend
        raise RuntimeError(f"ILP result has avg_bits {avg!r} > budget {budget!r}")
    total = float(costs.errors.to(torch.float64)[torch.arange(space.n_matrices), torch.as_tensor(chosen)].sum())
    return Allocation(config, budget, avg, total, status, gap, time.perf_counter() - t0)


def _shares(space) -> torch.Tensor:
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    return numel / numel.sum()  # (M,) n_i / N


def _reduced_costs(errors: torch.Tensor, bpp: torch.Tensor, share: np.ndarray, budget: float,
                   lam: float) -> tuple[np.ndarray, float]:
    """-> (rc (M, S), LB): the reduced costs at bit price `lam` and the Lagrangian lower bound
    on the cost of every configuration within the budget (module doc)."""
    w = torch.as_tensor(share)[:, None] * bpp[None, :]  # (M, S) avg-bit contribution
    penal = errors + lam * w
    best = penal.min(dim=1).values  # (M,)
    return (penal - best[:, None]).numpy(), float(best.sum()) - lam * budget


def cheapest_price(over: Callable[[float], bool], iterations: int = 60, limit: float = 1e15) -> float:
    """The smallest price lam >= 0 (to `iterations` halvings) at which `over(lam)` - "the
    per-matrix choices at this price overspend" - is False, searched up to `limit`. `over`
    must be monotone: a higher price never spends more. The Lagrangian allocators (here and
    in target_alloc) share it."""
    lo, hi = 0.0, 1.0
    while over(hi) and hi < limit:
        hi *= 10
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if over(mid) else (lo, mid)
    return hi


def _lagrangian(errors: torch.Tensor, bpp: torch.Tensor, share: np.ndarray | torch.Tensor, budget: float,
                iterations: int = 60) -> tuple[torch.Tensor, float]:
    """-> (feasible per-matrix setting indices (M,), the bit price lam of the relaxation).

    For a price lam >= 0 on bits, every matrix independently takes
    argmin_c F(i, c) + lam * (n_i / N) * bpp(c); avg_bits falls as lam rises, so a bisection
    finds the cheapest price that meets the budget; _greedy_fill then spends the slack.
    """
    share = torch.as_tensor(share, dtype=torch.float64)
    n = errors.shape[0]

    def choose(lam: float) -> torch.Tensor:
        return torch.argmin(errors + lam * share[:, None] * bpp[None, :], dim=1)  # (M,)

    def bits(idx: torch.Tensor) -> float:
        return float((share * bpp[idx]).sum())

    hi = cheapest_price(lambda lam: bits(choose(lam)) > budget, iterations, 1e15)
    idx = choose(hi)
    if bits(idx) > budget:  # only when even the cheapest choice overspends (budget ~ min)
        idx = torch.full((n,), int(torch.argmin(bpp)))
    return _greedy_fill(errors, bpp, share, budget, idx), hi


def _greedy_fill(errors: torch.Tensor, bpp: torch.Tensor, share: torch.Tensor, budget: float,
                 idx: torch.Tensor) -> torch.Tensor:
    """Spend the slack: repeatedly take the single-matrix change with the best error drop per
    bit that still fits, until none does. idx (M,) is updated in place and returned."""
    rows = torch.arange(errors.shape[0])
    for _ in range(4 * errors.shape[0]):
        slack = budget - float((share * bpp[idx]).sum())
        extra = share[:, None] * (bpp[None, :] - bpp[idx][:, None])  # (M, S) added avg bits
        gain = errors[rows, idx][:, None] - errors  # (M, S) error reduction
        ok = (extra > 0) & (extra <= slack - 1e-12) & (gain > 0)
        if not ok.any():
            break
        ratio = torch.where(ok, gain / extra.clamp_min(1e-30), torch.full_like(gain, -1.0))
        i, s = divmod(int(torch.argmax(ratio)), ratio.shape[1])
        idx[i] = s
    return idx


def allocate_lagrangian(costs: CostTable, budget: float, iterations: int = 60) -> Configuration:
    """A fast, deterministic near-optimal allocation: the Lagrangian relaxation of the ILP
    plus a greedy fill of the slack (see _lagrangian). Milliseconds, no solver, the same
    answer on every machine (the ILP with a time limit is not): used for training sets.
    """
    space = costs.space
    bpp = costs.bits_per_param  # (S,)
    budget = check_budget(budget, float(bpp.min()))
    err = costs.errors.to(torch.float64)
    idx, _ = _lagrangian(err / (err.max() or 1.0), bpp, _shares(space), budget, iterations)
    config = Configuration(space, tuple(costs.settings[j] for j in idx.tolist()), costs.family)
    if config.avg_bits > budget:  # float rounding of the running sum; never overspend
        raise RuntimeError(f"Lagrangian allocation has avg_bits {config.avg_bits!r} > budget {budget!r}")
    return config


# ---- one entry point for the CLI and the app ----------------------------------------------
METHODS = ("fast", "ilp", "gp")
METHOD_HELP = {
    "fast": "Lagrangian relaxation of the integer program (milliseconds; needs the cost table)",
    "ilp": "the integer program, proven within 0.1% of the least total quantization error (HiGHS)",
    "gp": "the configuration the GP fitted on evaluated configurations predicts best (or the "
          "precomputed front's best point under the budget)",
}


@dataclass(frozen=True)
class Allocated:
    """What `allocate` chose: the configuration, a one-line note and JSON-ready details."""

    config: Configuration
    method: str
    note: str
    details: dict


def allocate(source, budget: float, method: str = "ilp", candidates=()) -> Allocated:
    """A configuration with avg_bits <= `budget` (bits per weight) by `method` (METHODS).

    source: a CostTable for "fast" / "ilp"; for "gp" a fitted coalora.search.gp.Surrogate
    (candidates: evaluated configurations to start from) or a PredictedFront (its best
    point that fits). ConfigError for an unknown method, a budget outside the range of the
    space, or a source of the wrong kind.
    """
    from coalora.search.pareto import BITS_MIN

    if method not in METHODS:
        raise ConfigError(f"allocation method {method!r} is unknown; allowed values are {', '.join(METHODS)}")
    b = check_budget(budget, BITS_MIN)
    t0 = time.perf_counter()
    if method in ("fast", "ilp"):
        if not isinstance(source, CostTable):
            raise ConfigError(f"allocation method {method!r} needs the model's quantization-error table")
        if method == "ilp":
            res = allocate_ilp(source, b)
            return Allocated(res.config, method, f"ILP (HiGHS): {res.avg_bits:.4f} bits, {res.seconds:.1f} s",
                             res.to_dict())
        cfg = allocate_lagrangian(source, b)
        secs = time.perf_counter() - t0
        return Allocated(cfg, method, f"fast allocation (Lagrangian relaxation of the ILP): {cfg.avg_bits:.4f} bits, "
                         f"{secs:.2f} s", {"method": method, "budget": b, "avg_bits": cfg.avg_bits, "seconds": secs})
    from coalora.search.front import PredictedFront, allocate_gp
    from coalora.search.gp import Surrogate

    if isinstance(source, Surrogate):
        point = allocate_gp(source, b, candidates=candidates)
        return Allocated(point.config, method,
                         f"GP ({source.n_observations} observations): predicted f1 {point.mean:.4f} ± {point.std:.4f}",
                         {"method": method, "budget": b, "avg_bits": point.avg_bits, "predicted_f1": point.mean,
                          "predicted_std": point.std, "n_observations": source.n_observations})
    if isinstance(source, PredictedFront):
        fits = [p for p in source.points if p.avg_bits <= b]
        if not fits:
            cheapest = min((p.avg_bits for p in source.points), default=float("nan"))
            raise ConfigError(f"the predicted front has no configuration within {b:g} bits; "
                              f"its cheapest point needs {cheapest:.4f}")
        p = min(fits, key=lambda p: p.mean)
        return Allocated(p.config, method, f"precomputed GP front: point for budget {p.budget:g} ({p.avg_bits:.4f} bits)",
                         {"method": method, "budget": b, "avg_bits": p.avg_bits, "predicted_f1": p.mean,
                          "predicted_std": p.std, "source": "predicted front"})
    raise ConfigError("method 'gp' needs a GP: no pool of evaluated configurations and no predicted front "
                      "are available; use method 'fast' or 'ilp'")
