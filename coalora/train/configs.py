"""Fixed configuration sets for training: spread over the bit range, or at given bit-widths.

NF-k configurations: preferably from the budget allocator (coalora.search.allocate.allocate_lagrangian, the
Lagrangian relaxation of the ILP) on the model's cost table, so each configuration has
(near) the least quantization error for its budget. Without a cost table
(a large model whose table was never computed) we fall back to stratified random
configurations, and say so in the returned `source`.

Deployment-target configurations (target_train_configs): for each target, every one of its
training formats (TARGET_TRAIN_FORMATS) on all matrices, and random per-matrix mixtures of
them, so θ (with theta_inputs "targets") learns each format it will be asked about.
"""

from __future__ import annotations

from typing import Sequence

import torch

from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES
from coalora.space import ConfigSpace, Configuration, TargetConfiguration

# The research code spreads budgets over 2.25-7.25 bits. On SmolLM2-135M, 2.25 bits destroys
# the model (SST-2 label loss 22.6 nats vs 2.6 at 4.75 bits, measured in a smoke run), and
# such configurations swamp the summed gradients, so our default range starts at 2.5.
SPREAD_RANGE = (2.5, 7.25)
_COMPUTE_COSTS_BELOW = 5_000_000  # weights: computing a cost table this small takes seconds


def _cost_table(space: ConfigSpace, model: torch.nn.Module | None):
    from coalora.search.costs import get_costs, load_costs

    table = load_costs(space)
    if table is None and model is not None and space.n_params < _COMPUTE_COSTS_BELOW:
        table = get_costs(space, model)  # cached on disk by weights digest
    return table


def configs_at_bits(space: ConfigSpace, budgets: Sequence[float], model: torch.nn.Module | None = None,
                    seed: int = 0) -> tuple[list[Configuration], str]:
    """One configuration per budget (avg_bits <= budget). -> (configs, source description)."""
    table = _cost_table(space, model)
    if table is not None:
        from coalora.search.allocate import allocate_lagrangian

        # The ILP's Lagrangian relaxation: near-optimal, milliseconds, machine-independent.
        return [allocate_lagrangian(table, b) for b in budgets], "allocator (lagrangian relaxation of the ILP)"
    return [stratified_nearest(space, b, seed + i) for i, b in enumerate(budgets)], "stratified-random (no cost table)"


def spread_configs(space: ConfigSpace, n: int, model: torch.nn.Module | None = None, seed: int = 0,
                   bit_range: tuple[float, float] = SPREAD_RANGE) -> tuple[list[Configuration], str]:
    """`n` configurations at budgets evenly spaced over `bit_range` (distinct)."""
    budgets = torch.linspace(*bit_range, n).tolist()
    configs, source = configs_at_bits(space, budgets, model, seed)
    unique = list(dict.fromkeys(configs))
    return unique, source


def _random_mixture(space: ConfigSpace, g: torch.Generator) -> Configuration:
    """Each field's value drawn from its own random (Dirichlet) mixture: avg_bits then spreads
    over the whole range, unlike independent uniform draws (which all land near 4.5 bits)."""
    cols = []
    for name in FIELD_NAMES:
        k = len(FIELD_VALUES[name])
        p = _dirichlet(k, g)
        cols.append(torch.multinomial(p, space.n_matrices, replacement=True, generator=g))
    return space.decode(torch.stack(cols, dim=1))


def _dirichlet(k: int, g: torch.Generator) -> torch.Tensor:
    # Normalised exponential(1) draws are a Dirichlet(1, ..., 1) sample (seeded generator).
    e = -torch.log(torch.rand(k, generator=g).clamp_min(1e-12))
    return e / e.sum()


def stratified_nearest(space: ConfigSpace, budget: float, seed: int = 0, tries: int = 400) -> Configuration:
    """The random-mixture configuration with the largest avg_bits <= budget among `tries` draws
    (or the cheapest preset when none fits)."""
    g = torch.Generator().manual_seed(seed)
    best = space.preset("min")
    for _ in range(tries):
        c = _random_mixture(space, g)
        if best.avg_bits < c.avg_bits <= budget:
            best = c
    return best


# The formats a target's training configurations use: the ones users deploy (4 to 8 bits);
# 1-3-bit formats (ternary, int2) destroy SmolLM2 and would swamp the summed gradients, as
# the NF-k range's lower end does (SPREAD_RANGE).
TARGET_TRAIN_FORMATS: dict[str, tuple[str, ...]] = {
    "bnb": ("nf4", "nf4-dq", "fp4", "int8"),
    "gguf": ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"),
    "torchao": ("int3-g32", "int4-g32", "int5-g32", "int4-g64-asym", "int8-g32"),
}


def target_train_configs(space: ConfigSpace, targets: Sequence[str], n_mixtures: int = 2,
                         seed: int = 0) -> list[TargetConfiguration]:
    """Per target: each of TARGET_TRAIN_FORMATS[target] on every matrix, then `n_mixtures`
    configurations whose every matrix draws one of those formats at random (seeded).
    A format a matrix's shape cannot hold is replaced by the closest legal one."""
    from coalora.quant.targets import get_target

    g = torch.Generator().manual_seed(seed)
    out: list[TargetConfiguration] = []
    for target in targets:
        t, formats = get_target(target), TARGET_TRAIN_FORMATS[target]
        for fmt in formats:
            out.append(TargetConfiguration(space, target, [t.format_for(m.shape, fmt) for m in space.matrices]))
        for _ in range(n_mixtures):
            picks = torch.randint(len(formats), (space.n_matrices,), generator=g).tolist()
            out.append(TargetConfiguration(space, target, [t.format_for(m.shape, formats[i])
                                                           for i, m in zip(picks, space.matrices)]))
    return list(dict.fromkeys(out))
