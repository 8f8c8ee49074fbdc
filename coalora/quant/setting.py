"""One matrix's quantizer setting: the 5 fields of the LQ-LoRA space (docs/design.md, "Configuration space").

| field            | meaning                                        | values          |
|------------------|------------------------------------------------|-----------------|
| bits             | bits per weight (NF-k codebook)                | 2, 3, 4, 8      |
| scale_bits       | bits of each first-level scale's integer code  | 2, 3, 4, 8      |
| scale_format     | float format of the second-level scales        | bf16, fp16, fp32|
| block_size       | weights per first-level block (one scale each) | 16, 32, 64      |
| scale_block_size | first-level scales per second-level group      | 16, 64, 256     |

4 * 4 * 3 * 3 * 3 = 432 settings per matrix.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from coalora.errors import ConfigError

FIELD_VALUES: dict[str, tuple] = {
    "bits": (2, 3, 4, 8),
    "scale_bits": (2, 3, 4, 8),
    "scale_format": ("bf16", "fp16", "fp32"),
    "block_size": (16, 32, 64),
    "scale_block_size": (16, 64, 256),
}
FIELD_NAMES: tuple[str, ...] = tuple(FIELD_VALUES)

SCALE_FORMAT_BITS = {"bf16": 16, "fp16": 16, "fp32": 32}
SCALE_FORMAT_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _show(value: Any) -> str:
    """repr(value) for an error message: one short line whatever the value (a 5,000-digit
    int cannot even be repr'd under Python's int->str limit)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_field(name: str, value: Any, where: str = "") -> None:
    allowed = FIELD_VALUES[name]
    # The value must have the field's type: bool is an int subclass (True must not pass as
    # bits=1), and 4.0 == 4 must not pass as bits=4 either.
    want = str if isinstance(allowed[0], str) else numbers.Integral
    ok = isinstance(value, want) and not isinstance(value, bool)
    if not ok or value not in allowed:
        prefix = f"{where}: " if where else ""
        kind = "" if ok or value is None else f" (a {type(value).__name__})"
        raise ConfigError(
            f"{prefix}field '{name}' has value {_show(value)}{kind}; allowed values are "
            f"{', '.join(repr(v) for v in allowed)}"
        )


@dataclass(frozen=True, order=True)
class QuantSetting:
    """Quantizer setting of one weight matrix (hashable, so it can key caches)."""

    bits: int = 4
    scale_bits: int = 8
    scale_format: str = "fp32"
    block_size: int = 64
    scale_block_size: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))

    @property
    def bits_per_param(self) -> float:
        """bpp(c) = b0 + b1/B0 + bits(b2)/(B0*B1), padding and the fp32 offset excluded."""
        return (
            self.bits
            + self.scale_bits / self.block_size
            + SCALE_FORMAT_BITS[self.scale_format] / (self.block_size * self.scale_block_size)
        )

    def to_indices(self) -> tuple[int, int, int, int, int]:
        """Index of each field's value in FIELD_VALUES (the GP / θ encoding)."""
        return tuple(FIELD_VALUES[n].index(getattr(self, n)) for n in FIELD_NAMES)  # type: ignore[return-value]

    @classmethod
    def from_indices(cls, idx: tuple[int, ...] | list[int]) -> "QuantSetting":
        if len(idx) != len(FIELD_NAMES):
            raise ConfigError(f"a setting needs {len(FIELD_NAMES)} indices, got {len(idx)}")
        kwargs = {}
        for name, i in zip(FIELD_NAMES, idx):
            values = FIELD_VALUES[name]
            if not 0 <= int(i) < len(values):
                raise ConfigError(f"field '{name}' index {i} is outside 0..{len(values) - 1}")
            kwargs[name] = values[int(i)]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, where: str = "", **changes: Any) -> "QuantSetting":
        """A copy with some fields changed; unknown fields and bad values raise ConfigError."""
        for name, value in changes.items():
            if name not in FIELD_VALUES:
                prefix = f"{where}: " if where else ""
                raise ConfigError(
                    f"{prefix}unknown field '{name}'; known fields are {', '.join(FIELD_NAMES)}"
                )
            _check_field(name, value, where)
        return QuantSetting(**{**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "QuantSetting | None" = None, where: str = "") -> "QuantSetting":
        """Fields of `d` over `base` (or over the defaults)."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where or 'setting'}: expected an object of fields, got {type(d).__name__}")
        # Not replace(**d): a field named 'where' or 'self' would collide with its parameters.
        prefix = f"{where}: " if where else ""
        unknown = [k for k in d if k not in FIELD_VALUES]
        if unknown:
            raise ConfigError(f"{prefix}unknown field {_show(unknown[0])}; known fields are {', '.join(FIELD_NAMES)}")
        for name, value in d.items():
            _check_field(name, value, where)
        return cls(**{**(base or cls()).to_dict(), **d})

    def short(self) -> str:
        """Compact label, e.g. 'nf4/s8-fp32/64x256'."""
        return (
            f"nf{self.bits}/s{self.scale_bits}-{self.scale_format}/"
            f"{self.block_size}x{self.scale_block_size}"
        )


def all_settings() -> list[QuantSetting]:
    """All 432 settings, in index order (bits varies slowest)."""
    return [QuantSetting(*combo) for combo in itertools.product(*FIELD_VALUES.values())]
