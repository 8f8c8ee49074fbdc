"""One target format per tensor, checked and costed (docs/targets.md, "Assignments").

A spec is either one format name (every tensor) or a mapping
`{"target": T (optional), "default": FMT, "matrices": {tensor name: FMT}}`. Every
tensor's format is checked against its shape, so an illegal entry is refused with the
tensor's name, its shape and its legal formats. Tensors are (name, (out, in)) pairs: no
model code here (coalora/cli/space.py passes a ConfigSpace's matrices).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from coalora.errors import ConfigError
from coalora.quant.targets.base import Target

SPEC_KEYS = ("target", "default", "matrices")


@dataclass(frozen=True)
class Assignment:
    """A legal format for each tensor of one target (aligned with `names`)."""

    target: Target
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    formats: tuple[str, ...]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def storage_bytes(self) -> int:
        """Sum of the tensors' `Target.storage_bytes` (code tables excluded)."""
        return sum(self.target.storage_bytes(s, f, n) for n, s, f in zip(self.names, self.shapes, self.formats))

    @property
    def avg_bits(self) -> float:
        """storage_bytes * 8 / n_params: real bits per weight, scales included."""
        return self.storage_bytes * 8 / self.n_params

    def summary(self) -> dict[str, Any]:
        """Machine-readable: totals and how many tensors hold each format."""
        meta = getattr(self.target, "metadata_bytes", None)
        return {
            "target": self.target.name,
            "n_matrices": len(self.names),
            "n_params": self.n_params,
            "storage_bytes": self.storage_bytes,
            "metadata_bytes": sum(meta(f) for f in self.formats) if meta else 0,
            "avg_bits": self.avg_bits,
            "formats": dict(Counter(self.formats)),
        }


def assign(target: Target, tensors: Sequence[tuple[str, tuple[int, ...]]], spec: str | Mapping[str, Any]) -> Assignment:
    """Resolve `spec` (module docstring) over `tensors` = [(name, (out, in)), ...] and check
    every tensor's format; -> Assignment. Errors are ConfigError."""
    names = tuple(n for n, _ in tensors)
    shapes = tuple(tuple(int(d) for d in s) for _, s in tensors)
    if isinstance(spec, str):
        default, per = spec, {}
    elif isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in a {target.name} assignment; known keys are {', '.join(SPEC_KEYS)}")
        if spec.get("target", target.name) != target.name:
            raise ConfigError(f"the assignment is for target {spec['target']!r}, not {target.name!r}")
        default, per = spec.get("default"), spec.get("matrices", {})
        if not isinstance(per, Mapping):
            raise ConfigError(f"'matrices' must be an object of tensor name -> {target.name} format")
        missing = [k for k in per if k not in names]
        if missing:
            raise ConfigError(f"unknown tensor {missing[0]!r} in 'matrices'; e.g. {', '.join(names[:3])}")
    else:
        raise ConfigError(f"a {target.name} assignment is a format name or an object, got {type(spec).__name__}")
    formats = []
    for name, shape in zip(names, shapes):
        fmt = per.get(name, default)
        if fmt is None:
            raise ConfigError(f"{name} {list(shape)}: no format given and no 'default'")
        target.check(fmt, shape, name)
        formats.append(fmt)
    return Assignment(target, names, shapes, tuple(formats))
