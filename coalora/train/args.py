"""TrainArgs: every option of a training run, validated on construction and saved as run.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from coalora.errors import ConfigError

METHODS = ("coalora", "lora", "shared")
RECIPES = ("task", "lm")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainArgs:
    """Options of `coalora train` (the CLI's --help repeats these descriptions).

    method:        coalora = one LoRA + θ over a changing set of configurations (2 per step);
                   lora = plain LoRA for ONE fixed configuration (`config`);
                   shared = plain LoRA over fixed configurations at `shared_bits` (2 per step)
    recipe:        task (supervised on the task's train split) or lm (next-token loss on LAMBADA)
    steps:         optimiser steps (the same budget for every method makes a fair comparison)
    epoch_steps:   steps per "epoch": the configuration search runs after each (coalora)
    n_configs:     size of CoA-LoRA's initial training set (budgets evenly spread over bit_range)
    search:        run the Pareto configuration search at each epoch end (coalora only)
    """

    model: str = "smollm2-135m"
    task: str = "sst2"
    method: str = "coalora"
    out: str = "runs/default"
    recipe: str = "task"
    config: str | None = None
    shared_bits: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)
    n_configs: int = 12
    bit_range: tuple[float, float] = (2.5, 7.25)
    steps: int = 200
    epoch_steps: int = 50
    batch_size: int = 16
    max_length: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    theta_hidden: int = 128
    seed: int = 0
    split_seed: int = 0
    precision: str = "auto"
    save_every: int = 50
    search: bool = True
    search_iterations: int = 2
    search_batch: int = 4
    dev_rows: int = 64
    max_configs: int = 24
    cache_gb: float = 4.0
    limit_rows: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> None:
            raise ConfigError(f"train option '{name}' has value {getattr(self, name)!r}; allowed: {allowed}")

        if self.method not in METHODS:
            bad("method", ", ".join(METHODS))
        if self.recipe not in RECIPES:
            bad("recipe", ", ".join(RECIPES))
        if self.precision not in PRECISIONS:
            bad("precision", ", ".join(PRECISIONS))
        if self.method == "lora" and not self.config:
            raise ConfigError("method 'lora' trains for one fixed configuration: give --config (a preset or JSON file)")
        for name in ("steps", "epoch_steps", "batch_size", "max_length", "rank", "n_configs", "dev_rows", "max_configs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "an integer >= 1")
        for name in ("save_every", "search_iterations", "seed", "split_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, "an integer >= 0")
        lo, hi = self.bit_range
        if not 2.0 <= lo < hi <= 8.625:
            bad("bit_range", "two numbers lo < hi within the configuration range 2.032 .. 8.625")
        if not self.lr > 0:
            bad("lr", "a number > 0")
        if self.limit_rows is not None and self.limit_rows < 2:
            bad("limit_rows", "an integer >= 2, or unset")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shared_bits"] = list(self.shared_bits)
        d["bit_range"] = list(self.bit_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {', '.join(unknown)}")
        d = dict(d)
        for key in ("shared_bits", "bit_range"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    # Options that may differ when resuming: they do not change what the steps compute
    # (`steps` moves the end: continue a finished run longer, or end an interrupted one early).
    RESUMABLE_CHANGES = ("save_every", "out", "cache_gb", "steps")
