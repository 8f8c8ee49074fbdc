"""Deployment targets: formats a runtime loads, simulated exactly (docs/targets.md).

`get_target(name)` returns a `Target` (coalora/quant/targets/base.py) with `formats`,
`legal_formats(shape)`, `check`, `simulate`, `storage_bytes` and `bits_per_weight`.
"""

from __future__ import annotations

from coalora.errors import ConfigError
from coalora.quant.targets.base import Target, TargetFormat
from coalora.quant.targets.bnb import BNB
from coalora.quant.targets.gguf import GGUF
from coalora.quant.targets.torchao import TORCHAO

TARGETS: dict[str, Target] = {BNB.name: BNB, GGUF.name: GGUF, TORCHAO.name: TORCHAO}


def get_target(name: str) -> Target:
    """The target called `name`; an unknown name raises ConfigError listing the known ones."""
    if not isinstance(name, str) or name not in TARGETS:
        raise ConfigError(f"unknown deployment target {name!r}; known targets are {', '.join(TARGETS)}")
    return TARGETS[name]


__all__ = ["TARGETS", "Target", "TargetFormat", "get_target"]
