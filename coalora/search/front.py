"""The GP-predicted front: for each bit budget of a grid, the configuration the GP predicts
best (lowest f1) among the candidates that fit the budget, with its mean +- 2 sigma.

Candidates: the configurations the GP was trained on, any the caller adds (e.g. the ILP's
allocations), and `n_mutations` seeded random +-1-index neighbours of the training set.
"Best" is therefore best among those candidates, not over the whole space; `polish_steps`
adds greedy +-1 descent on the predicted mean under each budget (slower; used by
`allocate --method gp` for a single budget). The front is saved as JSON for the app.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from coalora.errors import ConfigError
from coalora.search.acquisition import ExactBits, neighbours
from coalora.search.gp import FIELD_SIZES, Surrogate, index_matrix
from coalora.search.pareto import BITS_MIN
from coalora.space import ConfigSpace, Configuration

FRONT_FORMAT = "coalora.predicted_front/v1"
DEFAULT_BUDGETS: tuple[float, ...] = tuple(round(2.25 + 0.25 * k, 2) for k in range(26))  # 2.25 ... 8.5


@dataclass(frozen=True)
class FrontPoint:
    """Best predicted configuration under one budget: f1 mean, latent std (how sure the GP is
    of the expected value), std_pred (where one quick-eval measurement would land: latent and
    the GP's noise; None in fronts saved before it existed) and exact avg_bits."""

    budget: float
    config: Configuration
    mean: float
    std: float
    std_pred: float | None = None

    @property
    def avg_bits(self) -> float:
        return self.config.avg_bits

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "avg_bits": self.avg_bits, "packed_bytes": self.config.packed_bytes,
                "mean": self.mean, "std": self.std, "lower": self.mean - 2 * self.std,
                "upper": self.mean + 2 * self.std,
                **({} if self.std_pred is None else {"std_pred": self.std_pred}), "config_hash": self.config.hash,
                "config": self.config.to_dict()}


@dataclass(frozen=True)
class PredictedFront:
    points: tuple[FrontPoint, ...]
    space: ConfigSpace
    objective: str = "f1"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from coalora.version import code_version

        return {"format": FRONT_FORMAT, "model": self.space.model_name, "fingerprint": self.space.fingerprint,
                "objective": self.objective, "band": "mean +- 2 std of the GP's latent f1",
                "code_version": code_version(), **self.meta, "points": [p.to_dict() for p in self.points]}

    def save(self, path: str | Path) -> Path:
        from coalora.io import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def load_front(path: str | Path, space: ConfigSpace) -> PredictedFront:
    """Read a saved front; raises ModelMismatchError when it was made for another model."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FRONT_FORMAT:
        raise ConfigError(f"{path}: field 'format' is {data.get('format')!r}; expected {FRONT_FORMAT!r}")
    space.check_fingerprint(data.get("fingerprint", ""), f"the predicted front {str(path)!r}", data.get("model"))
    pts = tuple(FrontPoint(p["budget"], space.from_dict(p["config"]), p["mean"], p["std"], p.get("std_pred"))
                for p in data["points"])
    meta = {k: v for k, v in data.items() if k not in ("format", "model", "fingerprint", "objective", "points", "band")}
    return PredictedFront(pts, space, data.get("objective", "f1"), meta)


def mutations(idx: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """`n` random single +-1-index moves of random rows of `idx` (k, D): -> (n, D) long."""
    if n <= 0 or idx.shape[0] == 0:
        return idx[:0]
    g = torch.Generator().manual_seed(seed)
    sizes = FIELD_SIZES.repeat(idx.shape[1] // 5).long()
    rows = idx[torch.randint(idx.shape[0], (n,), generator=g)].clone()  # (n, D)
    col = torch.randint(idx.shape[1], (n,), generator=g)
    step = torch.where(torch.rand(n, generator=g) < 0.5, -1, 1)
    new = rows[torch.arange(n), col] + step
    new = torch.where((new < 0) | (new >= sizes[col]), rows[torch.arange(n), col] - step, new)  # bounce at edges
    rows[torch.arange(n), col] = new
    return rows


def _polish(surrogate: Surrogate, idx: torch.Tensor, budget: float, bits_of: ExactBits, steps: int) -> torch.Tensor:
    """Greedy +-1 descent on the predicted mean, staying within `budget`. (D,) -> (D,)."""
    cur = idx
    cur_mean = float(surrogate.predict_indices(cur[None])[0][0])
    for _ in range(steps):
        nb = neighbours(cur)
        nb = nb[bits_of(nb) <= budget]
        if nb.shape[0] == 0:
            break
        mean, _ = surrogate.predict_indices(nb)
        best = int(torch.argmin(mean))
        if not float(mean[best]) < cur_mean:
            break
        cur, cur_mean = nb[best], float(mean[best])
    return cur


def predicted_front(surrogate: Surrogate, budgets: Sequence[float] = DEFAULT_BUDGETS,
                    candidates: Sequence[Configuration] = (), n_mutations: int = 256,
                    polish_steps: int = 0, seed: int = 0, objective: str = "f1") -> PredictedFront:
    """For each budget: the candidate with the lowest predicted f1 whose avg_bits <= budget.

    Budgets below every candidate's bits get no point (they are listed in meta['empty']).
    """
    t0 = time.perf_counter()
    space = surrogate.space
    bits_of = ExactBits(space)
    idx = torch.cat([surrogate.train_idx, index_matrix(list(candidates), space)])
    idx = torch.cat([idx, mutations(idx, n_mutations, seed)]).unique(dim=0)  # (k, D)
    bits = bits_of(idx)
    mean, std = surrogate.predict_indices(idx)
    noise = surrogate.noise_std  # a measurement scatters by this much around the latent value
    points, empty = [], []
    for b in budgets:
        if b < BITS_MIN:
            raise ConfigError(f"budget {b:g} is below the cheapest setting ({BITS_MIN:.4f} bits)")
        ok = torch.nonzero(bits <= b).reshape(-1)
        if ok.numel() == 0:
            empty.append(float(b))
            continue
        best = ok[torch.argmin(mean[ok])]
        choice, m, s = idx[best], float(mean[best]), float(std[best])
        if polish_steps:
            choice = _polish(surrogate, choice, float(b), bits_of, polish_steps)
            mm, ss = surrogate.predict_indices(choice[None])
            m, s = float(mm[0]), float(ss[0])
        points.append(FrontPoint(float(b), space.decode(choice), m, s, (s * s + noise * noise) ** 0.5))
    meta = {"n_observations": surrogate.n_observations, "n_candidates": int(idx.shape[0]),
            "polish_steps": polish_steps, "seed": seed, "empty": empty,
            "seconds": round(time.perf_counter() - t0, 3)}
    return PredictedFront(tuple(points), space, objective, meta)


def prob_on_front(surrogate: Surrogate, configs: Sequence[Configuration], competitors: Sequence[Configuration] = (),
                  n_samples: int = 256, seed: int = 0) -> torch.Tensor:
    """P(on the front) of each of `configs`: the share of joint posterior draws of the GP's
    latent f1 in which no other configuration of `configs` + `competitors` dominates it
    (at most its exact bits and strictly lower f1). -> (len(configs),) float64 in [0, 1].

    Why joint draws: neighbouring configurations' values are correlated; independent
    marginals would overstate how often a close rival wins. The answer is relative to the
    set compared against (e.g. the front's configurations plus the observations), not the
    whole space, which no finite sample covers.
    """
    if not configs:
        return torch.zeros(0, dtype=torch.float64)
    everything = list(dict.fromkeys([*configs, *competitors]))  # order-preserving de-duplication
    idx = index_matrix(everything, surrogate.space)  # (k, D)
    bits = ExactBits(surrogate.space)(idx)  # (k,)
    # A rival costlier than every one of `configs` dominates none of them: leave it out of the
    # joint posterior (its Cholesky factor is most of the cost; the others' marginals are unchanged).
    top = float(bits[: len(dict.fromkeys(configs))].max())  # `configs` lead `everything`
    keep = torch.nonzero(bits <= top).reshape(-1).tolist()  # includes every one of `configs`
    everything, idx, bits = [everything[i] for i in keep], idx[keep], bits[keep]
    where = {c: i for i, c in enumerate(everything)}
    with torch.no_grad():
        post = surrogate.model.posterior(surrogate.features(idx))
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n_samples, idx.shape[0], generator=gen, dtype=torch.float64)
        mean = post.mean.reshape(-1)
        cov = post.mvn.covariance_matrix.reshape(idx.shape[0], idx.shape[0]).to(torch.float64)
        jitter = 1e-9 * cov.diagonal().mean().clamp_min(1e-12)
        chol = torch.linalg.cholesky(cov + jitter * torch.eye(idx.shape[0], dtype=torch.float64))
        draws = mean + z @ chol.T  # (S, k) latent f1
    mine = torch.tensor([where[c] for c in configs])
    cheaper = bits[None, :] <= bits[mine][:, None]  # (n, k): could dominate on size
    cheaper[torch.arange(len(configs)), mine] = False  # never itself
    dominated = torch.zeros(len(configs), dtype=torch.float64)
    for part in torch.split(draws, 32):  # (s, k) at a time: bounded memory for hundreds of points
        better = part[:, None, :] < part[:, mine][:, :, None]  # (s, n, k)
        dominated += (better & cheaper[None]).any(-1).sum(0)
    return 1.0 - dominated / n_samples


def allocate_gp(surrogate: Surrogate, budget: float, candidates: Sequence[Configuration] = (),
                n_mutations: int = 1024, polish_steps: int = 20, seed: int = 0) -> FrontPoint:
    """The configuration the GP predicts best with avg_bits <= `budget` (ConfigError if none fits)."""
    from coalora.search.allocate import check_budget

    budget = check_budget(budget, BITS_MIN)
    front = predicted_front(surrogate, [budget], candidates, n_mutations, polish_steps, seed)
    if not front.points:
        raise ConfigError(f"no evaluated or nearby configuration fits budget {budget:g} bits; "
                          "evaluate cheaper configurations or use --method ilp")
    return front.points[0]
