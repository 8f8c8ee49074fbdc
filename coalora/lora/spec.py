"""LoraSpec: the hyper-parameters of a configuration-aware LoRA (validated on construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from coalora.errors import ConfigError

THETA_INPUTS = ("nf", "targets")  # which fields θ embeds (coalora.lora.hypernet.input_names)


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scaling and θ architecture. Defaults are sized for SmolLM2-135M.

    rank:           r of every A (r, in) and B (out, r)
    alpha:          scaling s = alpha / rank
    dropout:        dropout on the adapter input (training only)
    use_theta:      False gives plain LoRA (U = 0; no θ): the per-configuration and
                    Shared-LoRA baselines
    theta_hidden:   width of θ's hidden layer
    theta_embed:    size of each of θ's input embeddings
    theta_init_std: std of θ's last Linear at init (bias 0), so M = I + U ≈ I
    seed:           seeds the initialisation of A and θ (B starts at 0)
    theta_inputs:   "targets" (θ also embeds each deployment format's kind and exact bits,
                    9 inputs) or "nf" (the 5 NF-k fields only, 7 inputs: checkpoints saved
                    before the targets existed, whose metadata lacks this field)
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    use_theta: bool = True
    theta_hidden: int = 128
    theta_embed: int = 8
    theta_init_std: float = 1e-3
    seed: int = 0
    theta_inputs: str = "targets"

    def __post_init__(self) -> None:
        for name in ("rank", "theta_hidden", "theta_embed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"LoraSpec field '{name}' has value {v!r}; allowed: an integer >= 1")
        for name in ("alpha", "theta_init_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"LoraSpec field '{name}' has value {v!r}; allowed: a number > 0")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ConfigError(f"LoraSpec field 'dropout' has value {d!r}; allowed: a number in [0, 1)")
        if not isinstance(self.use_theta, bool):
            raise ConfigError(f"LoraSpec field 'use_theta' has value {self.use_theta!r}; allowed: true or false")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"LoraSpec field 'seed' has value {self.seed!r}; allowed: an integer")
        if self.theta_inputs not in THETA_INPUTS:
            raise ConfigError(f"LoraSpec field 'theta_inputs' has value {self.theta_inputs!r}; "
                              f"allowed: {', '.join(map(repr, THETA_INPUTS))}")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoraSpec":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a LoraSpec must be an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown LoraSpec field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        # A checkpoint saved before θ embedded the target formats has no theta_inputs: its θ
        # was built with the NF-k inputs only.
        return cls(**{"theta_inputs": "nf", **dict(d)})
