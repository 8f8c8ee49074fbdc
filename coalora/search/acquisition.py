"""Which configurations to evaluate next: log-EHVI over (f1, exact bits), discrete local search.

Objectives, BoTorch's maximisation convention: (-f1, -avg_bits). f1 comes from the GP's
posterior samples; avg_bits is computed exactly from the candidate's encoding inside the
MC objective (no GP for bits). Reference point: slightly worse than the worst observed
value of each objective (never [0, 0], under which the improvement is always zero).

Discrete optimisation (the paper's coordinate moves): from several start points, repeatedly
evaluate every +-1-index move of every field of every matrix (central finite differences
of the acquisition along each coordinate, in batches) and take the best, until no move
improves or `max_steps` is reached. Several candidates per round are chosen greedily:
each chosen one becomes a pending point of the next (BoTorch X_pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from coalora.errors import ConfigError
from coalora.quant.setting import FIELD_NAMES, all_settings
from coalora.search.gp import FIELD_SIZES, Surrogate, normalise
from coalora.space import ConfigSpace, Configuration

ACQUISITIONS = ("qlognehvi", "qlogehvi")
_STRIDES = torch.tensor([108, 27, 9, 3, 1])  # all_settings() order: bits varies slowest
_BPP = torch.tensor([s.bits_per_param for s in all_settings()], dtype=torch.float64)  # (432,)


class ExactBits:
    """avg_bits of encoded configurations of one space, vectorised.

    `__call__(idx)`: (..., 5 * M) long indices -> (...,) float64 avg_bits, identical to
    Configuration.avg_bits up to float rounding.
    """

    def __init__(self, space: ConfigSpace):
        numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
        self.share = numel / numel.sum()  # (M,)
        self.n_matrices = space.n_matrices

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        per = idx.reshape(*idx.shape[:-1], self.n_matrices, len(FIELD_NAMES))  # (..., M, 5)
        flat = (per * _STRIDES).sum(-1)  # (..., M) setting number
        return (_BPP[flat] * self.share).sum(-1)

    def from_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 5 * M) float in [0, 1] -> (...,) avg_bits (rounds to the nearest index)."""
        sizes = FIELD_SIZES.repeat(self.n_matrices).to(x)
        return self(torch.round(x * (sizes - 1)).long())


def reference_point(f1: Sequence[float] | torch.Tensor, bits: Sequence[float] | torch.Tensor,
                    margin: float = 0.1) -> torch.Tensor:
    """Reference point in the MINIMISATION convention: (f1_ref, bits_ref), (2,) float64.

    Each coordinate is the worst observed value plus `margin` times the observed range
    (or, with a single distinct value, `margin` times max(|value|, 1)), so every observed
    point strictly dominates it and it is never [0, 0].
    """
    out = []
    for name, v in (("f1", f1), ("bits", bits)):
        t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
        if t.numel() == 0 or not torch.isfinite(t).all():
            raise ConfigError(f"reference point needs finite observed {name} values; got {t.tolist()[:5]}")
        span = float(t.max() - t.min())
        if span <= 0:
            span = max(abs(float(t.max())), 1.0)
        out.append(float(t.max()) + margin * span)
    return torch.tensor(out, dtype=torch.float64)


def build_acquisition(surrogate: Surrogate, kind: str = "qlognehvi", n_samples: int = 64,
                      seed: int = 0, ref: torch.Tensor | None = None):
    """A BoTorch log-EHVI acquisition over (-f1, -bits) for `surrogate`'s training data.

    Input X of the returned function: (b, q, 5 * M) normalised encodings. -> (b,) values.
    """
    bits_of = ExactBits(surrogate.space)
    return log_ehvi(surrogate.model, normalise(surrogate.train_idx), surrogate.train_y, bits_of(surrogate.train_idx),
                    bits_of.from_normalised, kind, n_samples, seed, ref)


def log_ehvi(model, X_baseline: torch.Tensor, train_y: torch.Tensor, train_bits: torch.Tensor,
             bits_of_inputs: Callable[[torch.Tensor], torch.Tensor], kind: str = "qlognehvi",
             n_samples: int = 64, seed: int = 0, ref: torch.Tensor | None = None):
    """BoTorch log-EHVI over (-f1, -bits) for any GP of f1 whose inputs determine the bits.

    `model`: a fitted BoTorch model of f1; `X_baseline`: (n, D) its training inputs, with
    observed `train_y` (n,) f1 and exact `train_bits` (n,). `bits_of_inputs`: (..., D) model
    inputs -> (...,) exact avg_bits (never modelled). Shared by the NF-k search
    (build_acquisition) and the target search (coalora.search.target_search), so both score
    candidates by one definition. -> an acquisition of X (b, q, D) -> (b,).
    """
    from botorch.acquisition.multi_objective.logei import (
        qLogExpectedHypervolumeImprovement,
        qLogNoisyExpectedHypervolumeImprovement,
    )
    from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
    from botorch.sampling import SobolQMCNormalSampler
    from botorch.utils.multi_objective.box_decompositions.non_dominated import FastNondominatedPartitioning

    if kind not in ACQUISITIONS:
        raise ConfigError(f"acquisition {kind!r} is unknown; allowed values are {', '.join(ACQUISITIONS)}")

    def objective(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
        # samples (..., q, 1) f1 draws; X (..., q, D) -> (..., q, 2) objectives to MAXIMISE
        bits = bits_of_inputs(X).to(samples)  # (b, q), broadcast over sample dims
        return torch.stack([-samples[..., 0], -bits.expand(samples.shape[:-1])], dim=-1)

    if ref is None:
        ref = reference_point(train_y, train_bits)
    ref_max = -ref  # maximisation convention
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([n_samples]), seed=seed)
    mc_obj = GenericMCMultiOutputObjective(objective)
    if kind == "qlognehvi":
        return qLogNoisyExpectedHypervolumeImprovement(
            model=model, ref_point=ref_max.tolist(), X_baseline=X_baseline,
            sampler=sampler, objective=mc_obj, prune_baseline=True, cache_root=False,
        )
    y_obs = torch.stack([-train_y, -train_bits], dim=-1)  # (n, 2)
    part = FastNondominatedPartitioning(ref_point=ref_max, Y=y_obs)
    return qLogExpectedHypervolumeImprovement(
        model=model, ref_point=ref_max.tolist(), partitioning=part, sampler=sampler, objective=mc_obj,
    )


def neighbours(idx: torch.Tensor) -> torch.Tensor:
    """Every +-1 move of one coordinate that stays inside its field: (D,) -> (k, D) long."""
    sizes = FIELD_SIZES.repeat(idx.numel() // len(FIELD_NAMES)).long()
    d = torch.arange(idx.numel())
    up = d[idx < sizes - 1]
    down = d[idx > 0]
    out = idx.repeat(up.numel() + down.numel(), 1)  # (k, D)
    out[torch.arange(up.numel()), up] += 1
    out[up.numel() + torch.arange(down.numel()), down] -= 1
    return out


@torch.no_grad()
def evaluate(acqf, idx: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Acquisition of q=1 candidates: (k, D) long -> (k,) float64, `batch_size` at a time."""
    vals = [acqf(normalise(chunk)[:, None, :]) for chunk in torch.split(idx, batch_size)]
    return torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)


@dataclass(frozen=True)
class LocalSearchResult:
    idx: torch.Tensor  # (D,) long: the end point
    value: float  # its acquisition value
    steps: int


def local_search(acqf, start: torch.Tensor, max_steps: int = 20, batch_size: int = 512,
                 exclude: set[bytes] | None = None, max_moves: int | None = 256,
                 seed: int = 0) -> LocalSearchResult:
    """Greedy best-improvement +-1 coordinate moves from `start` (D,) long.

    `exclude`: encodings (as bytes of the index tensor) never to end on, e.g. already
    evaluated ones; moves onto them are skipped. `max_moves`: evaluate at most this many
    moves per step, a seeded random subset (the real space has ~1500 moves per point and
    each costs one acquisition evaluation); None = all.
    """
    g = torch.Generator().manual_seed(seed)
    cur = start.clone()
    cur_val = float(evaluate(acqf, cur[None], batch_size)[0])
    steps = 0
    for steps in range(1, max_steps + 1):
        nb = neighbours(cur)
        if exclude:
            ok = torch.tensor([row.numpy().tobytes() not in exclude for row in nb])
            nb = nb[ok]
        if max_moves is not None and nb.shape[0] > max_moves:
            nb = nb[torch.randperm(nb.shape[0], generator=g)[:max_moves]]
        if nb.shape[0] == 0:
            break
        vals = evaluate(acqf, nb, batch_size)
        best = int(torch.argmax(vals))
        if not float(vals[best]) > cur_val:
            steps -= 1
            break
        cur, cur_val = nb[best], float(vals[best])
    return LocalSearchResult(cur, cur_val, steps)


def propose(surrogate: Surrogate, n: int = 4, kind: str = "qlognehvi", n_starts: int = 5,
            max_steps: int = 20, n_samples: int = 64, batch_size: int = 512, seed: int = 0,
            starts: Sequence[Configuration] | None = None, max_moves: int | None = 256) -> list[Configuration]:
    """`n` new configurations (never ones the surrogate was trained on) chosen by log-EHVI.

    Start points: `starts` if given, else the `n_starts` training configurations with the
    highest acquisition value. Each later pick sees the earlier ones as pending points.
    """
    space = surrogate.space
    seen = {row.numpy().tobytes() for row in surrogate.train_idx}
    acqf = build_acquisition(surrogate, kind, n_samples, seed)
    start_idx = (torch.stack([c.encode().reshape(-1) for c in starts]) if starts
                 else surrogate.train_idx)
    picked: list[torch.Tensor] = []
    for _ in range(n):
        vals = evaluate(acqf, start_idx, batch_size)
        order = torch.argsort(vals, descending=True)[:n_starts]
        results = [local_search(acqf, start_idx[i], max_steps, batch_size, seen, max_moves, seed + i)
                   for i in order.tolist()]
        results = [r for r in results if r.idx.numpy().tobytes() not in seen]
        if not results:
            break
        best = max(results, key=lambda r: r.value)
        picked.append(best.idx)
        seen.add(best.idx.numpy().tobytes())
        acqf.set_X_pending(normalise(torch.stack(picked)))
    return [space.decode(i) for i in picked]
