"""θ: the configuration-aware network mapping a matrix's setting to its r×r adjustment U.

Input per matrix (docs/design.md, "Algorithm"): one learned embedding per field of the
quantizer setting (bits, scale_bits, scale_format, block_size, scale_block_size, as indices
into their value lists); with inputs="targets", two more for the deployment format's kind
and its exact code bits (coalora.quant.targets.proxy: THETA_FORMATS, THETA_BITS); then the
module type (q/k/v/o/gate/up/down) and the block index (a table with one row per block of
the model, so every block is told apart). K = 7 inputs ("nf") or 9 ("targets").
Network: LayerNorm(Ke) -> Linear(Ke, h) -> SiLU -> Linear(h, r·r) -> reshape (r, r) · gamma.
The last Linear starts at N(0, init_std²) with bias 0, so M = I + U ≈ I at first.
One θ serves all matrices; call it once on a (N, K) code tensor for all of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coalora.errors import ConfigError
from coalora.lora.spec import THETA_INPUTS
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES
from coalora.quant.targets.proxy import THETA_BITS, THETA_FORMATS
from coalora.space import MODULE_TYPES

FORMAT_FIELDS = ("format", "exact_bits")


def input_names(inputs: str) -> list[str]:
    """θ's input columns, in order, for `inputs` in THETA_INPUTS."""
    if inputs not in THETA_INPUTS:
        raise ConfigError(f"θ inputs {inputs!r} are unknown; allowed values are {', '.join(THETA_INPUTS)}")
    return list(FIELD_NAMES) + (list(FORMAT_FIELDS) if inputs == "targets" else []) + ["module_type", "block"]


class ConfigHyperNet(nn.Module):
    """codes (N, K) long -> U (N, r, r) float32.

    Columns of `codes` (input_names(inputs)): the 5 field indices in FIELD_NAMES order; with
    inputs="targets" the rows of the format kind in THETA_FORMATS and of its bits in
    THETA_BITS; the index of the module type in MODULE_TYPES; the block index in [0, n_blocks).
    """

    def __init__(self, n_blocks: int, rank: int, hidden: int = 128, embed: int = 8,
                 init_std: float = 1e-3, generator: torch.Generator | None = None, inputs: str = "nf"):
        super().__init__()
        self.n_blocks, self.rank, self.hidden, self.embed = n_blocks, rank, hidden, embed
        self.inputs = inputs
        self.n_inputs = k = len(input_names(inputs))
        extra = [len(THETA_FORMATS), len(THETA_BITS)] if inputs == "targets" else []
        sizes = [len(FIELD_VALUES[f]) for f in FIELD_NAMES] + extra + [len(MODULE_TYPES), n_blocks]
        self.register_buffer("table_sizes", torch.tensor(sizes), persistent=False)
        self.embeddings = nn.ModuleList(nn.Embedding(n, embed) for n in sizes)
        self.norm = nn.LayerNorm(k * embed)
        self.fc1 = nn.Linear(k * embed, hidden)
        self.fc2 = nn.Linear(hidden, rank * rank)
        self.gamma = nn.Parameter(torch.ones(()))
        # Seeded initialisation (independent of the global RNG), matching nn's defaults.
        for e in self.embeddings:
            nn.init.normal_(e.weight, generator=generator)
        nn.init.kaiming_uniform_(self.fc1.weight, a=math.sqrt(5), generator=generator)
        nn.init.uniform_(self.fc1.bias, -1 / math.sqrt(k * embed), 1 / math.sqrt(k * embed), generator=generator)
        nn.init.normal_(self.fc2.weight, std=init_std, generator=generator)
        nn.init.zeros_(self.fc2.bias)

    def architecture(self) -> dict:
        """A JSON description (stored in checkpoint metadata)."""
        return {
            "inputs": input_names(self.inputs),
            "embedding": self.embed,
            "n_blocks": self.n_blocks,
            "layers": f"LayerNorm({self.n_inputs * self.embed}) -> Linear({self.n_inputs * self.embed},{self.hidden}) -> SiLU "
                      f"-> Linear({self.hidden},{self.rank * self.rank}) -> reshape({self.rank},{self.rank}) * gamma",
            "hidden": self.hidden,
            "rank": self.rank,
            "n_params": sum(p.numel() for p in self.parameters()),
        }

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.n_inputs:
            raise ValueError(f"θ expects codes of shape (N, {self.n_inputs}), got {tuple(codes.shape)}")
        if bool((codes < 0).any()) or bool((codes >= self.table_sizes).any()):
            raise ValueError(f"θ codes out of range; table sizes are {self.table_sizes.tolist()}")
        z = torch.cat([e(codes[:, j]) for j, e in enumerate(self.embeddings)], dim=-1)  # (N, K·e)
        h = nn.functional.silu(self.fc1(self.norm(z)))  # (N, hidden)
        return (self.fc2(h) * self.gamma).view(-1, self.rank, self.rank)  # (N, r, r)
