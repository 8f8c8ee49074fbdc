"""Pareto search inside one deployment target (docs/targets.md, "Search within a target").

    table = get_target_costs(space, "gguf")                      # the target's error table
    cands = target_candidates(table)                             # allocations + uniform formats
    result = search_target(objective, table, initial=allocation_configs(table, [4.5, 5.0]),
                           iterations=2, batch_size=2, candidates=cands)
    front = target_front(result.surrogate, cands)                # best predicted per budget

Every configuration here is a TargetConfiguration: one of the target's formats per matrix,
legal for its shape, its avg_bits the target's real bits per weight (storage bytes * 8 / N).

GP (BoTorch SingleTaskGP, as coalora.search.gp): its input is each configuration's format
per matrix, the column of coalora.search.target_alloc's tables, (n, M) scaled to [0, 1]; a
BoTorch input transform (gp.feature_transform) maps it to 2 features, the target version of
the NF-k "qerr" design: exact average bits and the log total quantization error of the
target's error table (sum over matrices of ||W_i - simulate(W_i, f_i)||^2 of the base
weights). Outcomes standardised, noise learned, hyperparameters by maximum marginal likelihood.

Proposals: not a local search in a continuous relaxation (the NF-k acquisition's +-1 moves of
5 ordered fields have no counterpart in a list of formats) but BoTorch's
optimize_acqf_discrete over a finite candidate set, scored by the same qLogNEHVI over (-f1,
-exact bits) as the NF-k search (acquisition.log_ehvi). Candidates: the target's ILP
allocations at a geometric grid of budgets over its whole bit range, every format uniform
(the closest legal one where a shape cannot hold it), and neighbour moves of the current
observed front: one block's, one module type's or every matrix's format moved one step in
bit width (Target.closest_format, keeping the kind: Q4_0 -> Q5_0) or to the next format of the
same width by bytes (nf4 -> nf4-dq, int4-g32 -> int4-g64). Configurations in the pool are
never proposed again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from coalora.errors import ConfigError
from coalora.quant.targets import get_target
from coalora.quant.targets.base import Target, format_bits
from coalora.search.gp import Surrogate
from coalora.search.loop import Objective, Pool, SearchResult
from coalora.search.pareto import DEFAULT_SEGMENTS
from coalora.search.target_alloc import StorageTable, TargetCostTable, allocate_target
from coalora.space import ConfigSpace, Configuration, TargetConfiguration

TARGET_DESIGN = "target-qerr"  # the GP's features: exact avg bits, log total error (module docstring)
CANDIDATE_GRID = 16  # budgets of the candidate allocations, geometric over the target's bit range
FRONT_GRID = 24  # budgets of the predicted front
MOVES = ("bits+", "bits-", "bytes+", "bytes-")
_ERROR_FLOOR = 1e-9  # totals below this share of the largest count as equal (exact formats: F32, Q4_1 on SmolLM2)


class TargetEncoding:
    """A target's configurations of one space as GP inputs: per matrix, the column of its
    format in `table.storage.formats` (the cost and byte tables' column).

    encode: configs -> (n, M) long; decode: (M,) long -> TargetConfiguration; normalise:
    (..., M) long -> (..., M) float64 in [0, 1] (the model's input); indices: the inverse;
    bits: (..., M) long -> (...,) exact avg_bits (integer bytes * 8 / N, bit for bit
    TargetConfiguration.avg_bits); bits_of_inputs: the same from normalised inputs.
    """

    def __init__(self, table: TargetCostTable) -> None:
        self.table, self.storage, self.space = table, table.storage, table.space
        self.target = table.storage.target
        self.n_formats = len(self.storage.formats)
        self._column = {f: j for j, f in enumerate(self.storage.formats)}
        m = self.space.n_matrices
        self.offsets = torch.arange(m) * self.n_formats  # (M,) row starts in the flat (M * F,) tables
        self._bytes = torch.as_tensor(self.storage.nbytes, dtype=torch.long).reshape(-1)  # (M * F,)

    @property
    def scale(self) -> int:
        return max(self.n_formats - 1, 1)

    def encode(self, configs: Sequence[Configuration]) -> torch.Tensor:
        """(n, M) long format columns; every configuration must be this target's and space's."""
        rows = []
        for c in configs:
            self.space.check_same(c)
            if c.target != self.target:
                raise ConfigError(f"configuration {c.hash} is for target {c.target!r}; this search is over "
                                  f"target {self.target!r}")
            rows.append([self._column[f] for f in c.formats])
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.space.n_matrices)

    def decode(self, idx: torch.Tensor) -> TargetConfiguration:
        """(M,) long columns -> the configuration (TargetConfiguration checks every format is legal)."""
        return TargetConfiguration(self.space, self.target, [self.storage.formats[j] for j in idx.tolist()])

    def normalise(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.to(torch.float64) / self.scale

    def indices(self, X: torch.Tensor) -> torch.Tensor:
        return torch.round(X * self.scale).long()

    def bits(self, idx: torch.Tensor) -> torch.Tensor:
        """(..., M) long -> (...,) float64 exact avg_bits: the integer byte sum, then * 8 / N."""
        total = self._bytes.to(idx.device)[idx + self.offsets.to(idx.device)].sum(-1)  # (...,) int64 bytes
        return (total * 8).to(torch.float64) / self.space.n_params

    def bits_of_inputs(self, X: torch.Tensor) -> torch.Tensor:
        """(..., M) normalised inputs -> (...,) exact avg_bits (what log-EHVI's bits objective reads)."""
        return self.bits(self.indices(X))


class TargetFeatures(torch.nn.Module):
    """Normalised format columns (..., M) -> (..., 2) features in [0, 1]: avg bits scaled by the
    target's bit range, and log total quantization error scaled by the log of the least and
    largest possible totals (a total below _ERROR_FLOOR of the largest counts as that floor)."""

    design = TARGET_DESIGN

    def __init__(self, encoding: TargetEncoding) -> None:
        super().__init__()
        self.encoding = encoding
        st = encoding.storage
        e = encoding.table.errors.to(torch.float64)
        legal = torch.as_tensor(st.legal)
        lo = torch.where(legal, e, torch.inf).min(1).values.sum()  # every matrix at its least error
        hi = torch.where(legal, e, -torch.inf).max(1).values.sum()  # ... at its largest
        floor = max(float(lo), _ERROR_FLOOR * float(hi), 1e-300)
        # Illegal entries are never gathered (every candidate is legal); 0 keeps the table finite.
        self.register_buffer("errors", torch.where(legal, e, 0.0).reshape(-1))  # (M * F,)
        self.log_floor = math.log(floor)
        self.log_span = max(math.log(max(float(hi), floor)) - self.log_floor, 1e-12)
        self.bits_lo, self.bits_span = st.min_bits, max(st.max_bits - st.min_bits, 1e-12)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        idx = self.encoding.indices(X)  # (..., M)
        bits = (self.encoding.bits(idx).to(X) - self.bits_lo) / self.bits_span
        err = self.errors.to(X)[idx + self.encoding.offsets.to(idx.device)].sum(-1)
        qerr = (torch.log(err.clamp_min(math.exp(self.log_floor))) - self.log_floor) / self.log_span
        return torch.stack([bits, qerr], -1)


@dataclass
class TargetSurrogate(Surrogate):
    """A fitted GP of f1 over one target's configurations (fit_target_surrogate).

    As Surrogate, with `train_idx` (n, M) format columns and `encoding` the TargetEncoding
    that made them (predict / predict_indices take this target's configurations or columns).
    """

    encoding: TargetEncoding | None = None

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return self.encoding.normalise(idx)

    def predict(self, configs: Sequence[Configuration],
                observation_noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (n,), std (n,)) predicted f1 of this target's configurations."""
        return self.predict_indices(self.encoding.encode(configs), observation_noise)


def fit_target_surrogate(configs: Sequence[Configuration], values: Sequence[float] | torch.Tensor,
                         encoding: TargetEncoding, seed: int = 0, maxiter: int = 200) -> TargetSurrogate:
    """Fit a BoTorch SingleTaskGP to (configs, f1) on the TARGET_DESIGN features (module
    docstring). `values`: (n,) f1 to minimise, n >= 2. -> TargetSurrogate."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    from coalora.search.gp import feature_transform, observed_f1

    y = observed_f1(configs, values)
    idx = encoding.encode(configs)  # (n, M)
    torch.manual_seed(seed)
    model = SingleTaskGP(encoding.normalise(idx), y[:, None], outcome_transform=Standardize(m=1),
                         input_transform=feature_transform(TargetFeatures(encoding)))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                     optimizer_kwargs={"options": {"maxiter": maxiter}})
    model.eval()
    return TargetSurrogate(encoding.space, model, torch.arange(idx.shape[1]), idx, y, TARGET_DESIGN, "learned",
                           encoding)


# ---- candidates --------------------------------------------------------------------------------
def budget_grid(storage: StorageTable, n: int) -> list[float]:
    """`n` budgets geometric from the target's least to its largest avg bits (both included),
    interior ones rounded up to 4 decimals (never below the least)."""
    lo, hi = storage.min_bits, storage.max_bits
    if n < 2 or hi <= lo:
        return [lo]
    inner = [math.ceil(lo * (hi / lo) ** (k / (n - 1)) * 1e4) / 1e4 for k in range(1, n - 1)]
    return sorted({lo, *(min(b, hi) for b in inner), hi})


def uniform_configs(space: ConfigSpace, target: str) -> list[TargetConfiguration]:
    """Each format of the target on every matrix, the closest legal one (same width, same kind
    where possible: Target.closest_format) where a shape cannot hold it; duplicates dropped."""
    t = get_target(target)
    out: dict[TargetConfiguration, None] = {}
    for f in t.formats:
        fmts = [t.format_for(m.shape, f) for m in space.matrices]
        out.setdefault(TargetConfiguration(space, target, fmts), None)
    return list(out)


def default_budgets(storage: StorageTable, min_gap: float = 0.1) -> list[float]:
    """The initial design's budgets when none are given: the target's least avg bits and the
    avg bits of each quantized format (stated width <= 8) uniform, rounded up to 4 decimals;
    a budget within `min_gap` bits above the last one kept is dropped (each initial point is
    one dev evaluation: near-equal budgets would buy near-equal allocations)."""
    bits = {storage.min_bits}
    bits.update(c.avg_bits for c in uniform_configs(storage.space, storage.target)
                if max(format_bits(f) for f in c.formats) <= 8)
    kept: list[float] = []
    for b in sorted({min(math.ceil(b * 1e4) / 1e4, storage.max_bits) for b in bits}):
        if not kept or b - kept[-1] >= min_gap:
            kept.append(b)
    return kept


def allocation_configs(table: TargetCostTable, budgets: Sequence[float],
                       method: str = "ilp") -> list[TargetConfiguration]:
    """The target allocator's configuration (least total error within the budget) at each of
    `budgets`, in order, duplicates dropped (a budget above where the error stops falling gives
    the same one)."""
    out: dict[TargetConfiguration, None] = {}
    for b in budgets:
        out.setdefault(allocate_target(table, b, method).config, None)
    return list(out)


class Moves:
    """Neighbour moves of target configurations: for every move kind (MOVES) the format each
    legal format moves to, per matrix, and the groups moved together (each block, each module
    type, all matrices).

    `table`: (K, M, F) long, the column a matrix in column f moves to (f itself where there is
    no such neighbour); `groups`: (G, M) bool.
    """

    def __init__(self, storage: StorageTable) -> None:
        space, t = storage.space, get_target(storage.target)
        col = {f: j for j, f in enumerate(storage.formats)}
        m_count, f_count = space.n_matrices, len(storage.formats)
        table = torch.arange(f_count).repeat(len(MOVES), m_count, 1)  # (K, M, F): no move
        per_shape: dict[tuple[int, int], dict[str, list[tuple[str, str]]]] = {}
        for i, m in enumerate(space.matrices):
            if m.shape not in per_shape:
                per_shape[m.shape] = _neighbours(t, m.shape)
            for k, kind in enumerate(MOVES):
                for f, g in per_shape[m.shape][kind]:
                    table[k, i, col[f]] = col[g]
        self.table = table
        blocks = sorted({m.block for m in space.matrices})
        types = list(dict.fromkeys(m.module_type for m in space.matrices))
        groups = [[m.block == b for m in space.matrices] for b in blocks]
        groups += [[m.module_type == ty for m in space.matrices] for ty in types]
        groups.append([True] * m_count)
        self.groups = torch.tensor(groups, dtype=torch.bool)  # (G, M)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """(n, M) long -> (k, M) long: every (kind, group) move of every row that changes it, unique."""
        if idx.shape[0] == 0:
            return idx
        rows = torch.arange(idx.shape[1])
        moved = self.table[:, rows, idx].permute(1, 0, 2)  # (n, K, M): every matrix moved by each kind
        new = torch.where(self.groups[None, None], moved[:, :, None], idx[:, None, None])  # (n, K, G, M)
        new = new.reshape(-1, idx.shape[1])
        changed = (new != idx.repeat_interleave(len(MOVES) * self.groups.shape[0], 0)).any(1)
        return new[changed].unique(dim=0)


def _neighbours(t: Target, shape: tuple[int, int]) -> dict[str, list[tuple[str, str]]]:
    """(format, neighbour) pairs of each move kind for one shape's legal formats."""
    legal = t.legal_formats(shape)
    widths = sorted({format_bits(f) for f in legal})
    order = {f: k for k, f in enumerate(t.formats)}
    out: dict[str, list[tuple[str, str]]] = {kind: [] for kind in MOVES}
    for f in legal:
        w = format_bits(f)
        up = [x for x in widths if x > w]
        down = [x for x in widths if x < w]
        if up:  # the next stated width, the same kind where one has it (Q4_0 -> Q5_0)
            out["bits+"].append((f, t.closest_format(shape, up[0], like=f)))
        if down:
            out["bits-"].append((f, t.closest_format(shape, down[-1], like=f)))
        same = sorted((g for g in legal if format_bits(g) == w),
                      key=lambda g: (t.storage_bytes(shape, g), order[g]))
        k = same.index(f)
        if k + 1 < len(same):
            out["bytes+"].append((f, same[k + 1]))
        if k > 0:
            out["bytes-"].append((f, same[k - 1]))
    return out


@dataclass
class TargetCandidates:
    """What the target search proposes from: `static` (k, M) long columns (allocations at a
    budget grid, uniform formats) plus `moves` of the current front (Moves)."""

    encoding: TargetEncoding
    static: torch.Tensor
    moves: Moves
    budgets: tuple[float, ...]
    n_allocations: int
    n_uniform: int

    def around(self, front_idx: torch.Tensor) -> torch.Tensor:
        """`static` plus every neighbour move of `front_idx` (n, M): (k, M) long, unique."""
        return torch.cat([self.static, self.moves(front_idx)]).unique(dim=0)

    def describe(self) -> str:
        return (f"{self.static.shape[0]} fixed candidates ({self.n_allocations} ILP allocations at "
                f"{len(self.budgets)} budgets, {self.n_uniform} uniform formats) + neighbour moves of the front")


def target_candidates(table: TargetCostTable, n_budgets: int = CANDIDATE_GRID, method: str = "ilp") -> TargetCandidates:
    """The fixed candidate set of a target (module docstring) and its neighbour moves."""
    enc = TargetEncoding(table)
    budgets = budget_grid(table.storage, n_budgets)
    alloc = allocation_configs(table, budgets, method)
    uniform = uniform_configs(table.space, enc.target)
    static = enc.encode(list(dict.fromkeys(alloc + uniform))).unique(dim=0)
    return TargetCandidates(enc, static, Moves(table.storage), tuple(budgets), len(alloc), len(uniform))


# ---- proposals, the loop, the front ----------------------------------------------------------------
def observed_front(surrogate: TargetSurrogate) -> torch.Tensor:
    """(n_front, M) long: the training configurations no other one beats in both observed f1
    and exact bits."""
    from coalora.search.pareto import non_dominated

    bits = surrogate.encoding.bits(surrogate.train_idx)
    return surrogate.train_idx[non_dominated(torch.stack([surrogate.train_y, bits], 1))]


def propose_target(surrogate: TargetSurrogate, candidates: TargetCandidates, n: int = 4, kind: str = "qlognehvi",
                   n_samples: int = 64, seed: int = 0) -> list[TargetConfiguration]:
    """`n` configurations (never training ones) chosen from the candidates (fixed set plus moves
    of the observed front) by log-EHVI over (f1, exact bits), greedily with earlier picks as
    pending points (BoTorch optimize_acqf_discrete). Fewer when fewer candidates are left."""
    from botorch.optim import optimize_acqf_discrete

    from coalora.search.acquisition import log_ehvi

    enc = surrogate.encoding
    choices = candidates.around(observed_front(surrogate))
    seen = {row.numpy().tobytes() for row in surrogate.train_idx}
    choices = choices[torch.tensor([row.numpy().tobytes() not in seen for row in choices], dtype=torch.bool)]
    if choices.shape[0] == 0 or n < 1:
        return []
    acqf = log_ehvi(surrogate.model, enc.normalise(surrogate.train_idx), surrogate.train_y,
                    enc.bits(surrogate.train_idx), enc.bits_of_inputs, kind, n_samples, seed)
    picked, _ = optimize_acqf_discrete(acqf, q=min(n, int(choices.shape[0])), choices=enc.normalise(choices),
                                       unique=True)
    return [enc.decode(enc.indices(x)) for x in picked]


def search_target(
    objective: Objective,
    table: TargetCostTable,
    initial: Sequence[TargetConfiguration] = (),
    iterations: int = 3,
    batch_size: int = 4,
    pool: Pool | None = None,
    candidates: TargetCandidates | None = None,
    n_segments: int = DEFAULT_SEGMENTS,
    acquisition: str = "qlognehvi",
    n_samples: int = 64,
    seed: int = 0,
    on_evaluated: Callable[[list[Configuration], list[float]], None] | None = None,
    progress: bool = False,
) -> SearchResult:
    """The search loop of coalora.search.loop with this target's GP and proposals: evaluate
    `initial` (those not in the pool), then `iterations` rounds of fit, propose `batch_size`,
    evaluate. Every pool configuration must be this target's (ConfigError otherwise).
    -> SearchResult (surrogate: a TargetSurrogate; selected: the segmented Pareto set over the
    target's bit range)."""
    from coalora.search.loop import search

    cands = candidates if candidates is not None else target_candidates(table)
    enc = cands.encoding
    pool = pool if pool is not None else Pool(table.space)
    enc.encode(pool.configs)  # refuses another target's (or the NF-k space's) points
    enc.encode(list(initial))

    def fit(p: Pool, s: int) -> TargetSurrogate:
        return fit_target_surrogate(p.configs, p.values, enc, seed=s)

    def proposer(surrogate: TargetSurrogate, n: int, s: int) -> list[Configuration]:
        return list(propose_target(surrogate, cands, n, acquisition, n_samples, seed=s))

    return search(objective, table.space, initial, iterations, batch_size, pool, n_segments, seed=seed,
                  on_evaluated=on_evaluated, progress=progress, fit=fit, proposer=proposer,
                  bit_range=(table.storage.min_bits, table.storage.max_bits), desc=f"{enc.target} search")


def target_front(surrogate: TargetSurrogate, candidates: TargetCandidates, budgets: Sequence[float] | None = None,
                 objective: str = "f1"):
    """For each budget (default: FRONT_GRID geometric over the target's range), the candidate
    (training points, the fixed set, moves of the observed front) with the lowest predicted f1
    whose exact avg_bits <= budget. -> coalora.search.front.PredictedFront of TargetConfigurations
    (meta: target, candidate count, budgets no candidate fits)."""
    from coalora.search.front import FrontPoint, PredictedFront
    from coalora.search.target_alloc import check_target_budget

    t0 = time.perf_counter()
    enc = surrogate.encoding
    budgets = list(budgets) if budgets is not None else budget_grid(enc.storage, FRONT_GRID)
    idx = torch.cat([surrogate.train_idx, candidates.around(observed_front(surrogate))]).unique(dim=0)
    bits = enc.bits(idx)
    mean, std = surrogate.predict_indices(idx)
    noise = surrogate.noise_std
    points, empty = [], []
    for b in budgets:
        b = check_target_budget(enc.storage, b)
        ok = torch.nonzero(bits <= b).reshape(-1)
        if ok.numel() == 0:
            empty.append(float(b))
            continue
        best = ok[torch.argmin(mean[ok])]
        m, s = float(mean[best]), float(std[best])
        points.append(FrontPoint(float(b), enc.decode(idx[best]), m, s, (s * s + noise * noise) ** 0.5))
    meta = {"target": enc.target, "n_observations": surrogate.n_observations, "n_candidates": int(idx.shape[0]),
            "empty": empty, "seconds": round(time.perf_counter() - t0, 3)}
    return PredictedFront(tuple(points), enc.space, objective, meta)
