"""Fixed configuration sets for training: spread over the bit range, or at given bit-widths.

Preferred source: the budget allocator (coalora.search.allocate.allocate_lagrangian, the
Lagrangian relaxation of the ILP) on the model's cost table, so each configuration has
(near) the least quantization error for its budget. Without a cost table
(a large model whose table was never computed) we fall back to stratified random
configurations, and say so in the returned `source`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES
from coalora.space import ConfigSpace, Configuration

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
