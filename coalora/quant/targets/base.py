"""What every deployment target provides (docs/targets.md, "Targets").

A target is a named set of weight formats that one runtime loads. For each format it can
say whether a tensor of a given shape may hold it (`check`), simulate it exactly
(`simulate`: the dequantized weights the runtime computes with, bit for bit) and count
the bytes the runtime stores (`storage_bytes`). Tensor primitives only: no model code.

Shapes are torch's (out_features, in_features); a row is one output unit's weights, of
length in_features (GGUF's ne[0]).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from coalora.errors import ConfigError


@dataclass(frozen=True)
class TargetFormat:
    """One format of a target: its name, how many weights share a block along a row
    (1 for unquantised formats) and a one-line description."""

    name: str
    block_size: int
    description: str


def format_bits(fmt: str) -> int:
    """The bit width a format's name states (nf4, Q5_1, int3-g32, F16, MXFP4 -> 4, 5, 3, 16, 4)."""
    return int(re.search(r"\d+", fmt).group())


def _kind(fmt: str) -> str:
    return re.sub(r"\d+", "#", fmt, count=1)  # Q4_1 -> Q#_1, int4-g64-asym -> int#-g64-asym


class Target:
    """Base class of a deployment target; subclasses fill `name`, `formats` and the two hooks."""

    name: str = ""
    formats: dict[str, TargetFormat] = {}

    # ---- hooks -------------------------------------------------------------------------
    def _shape_problem(self, fmt: str, shape: tuple[int, ...]) -> str | None:
        """Why a tensor of `shape` cannot hold `fmt` (None: it can). `fmt` is known."""
        return None

    def _simulate(self, weight: torch.Tensor, fmt: str) -> torch.Tensor:
        raise NotImplementedError

    def _storage_bytes(self, shape: tuple[int, ...], fmt: str) -> int:
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------
    def legal_formats(self, shape: tuple[int, ...]) -> tuple[str, ...]:
        """The formats a tensor of `shape` may hold, in `formats` order."""
        return tuple(f for f in self.formats if self._shape_problem(f, tuple(shape)) is None)

    def closest_format(self, shape: tuple[int, ...], bits: int, like: str | None = None) -> str:
        """The format legal for `shape` whose bit width is closest to `bits` (ties go up),
        of `like`'s kind where one of that width has it (Q4_1 -> Q5_1, int4-g64-asym ->
        int3-g64-asym), else the first of that width in `formats` order."""
        legal = self.legal_formats(shape)
        width = min({format_bits(f) for f in legal}, key=lambda w: (abs(w - bits), -w))
        same = [f for f in legal if format_bits(f) == width]
        return next((f for f in same if like is not None and _kind(f) == _kind(like)), same[0])

    def format_for(self, shape: tuple[int, ...], fmt: str) -> str:
        """`fmt` where a tensor of `shape` may hold it, else the closest legal format of its
        width and kind (closest_format): how a format meant for every matrix lands on each."""
        return fmt if fmt in self.legal_formats(shape) else self.closest_format(shape, format_bits(fmt), like=fmt)

    def check(self, fmt: str, shape: tuple[int, ...], tensor: str = "tensor") -> None:
        """Raise ConfigError naming the tensor, its shape and the legal formats if `fmt`
        is unknown to this target or illegal for `shape`."""
        shape = tuple(int(s) for s in shape)
        legal = ", ".join(self.legal_formats(shape)) or "none"
        if not isinstance(fmt, str) or fmt not in self.formats:
            raise ConfigError(
                f"{tensor} {list(shape)}: {fmt!r} is not a {self.name} format; "
                f"legal for this tensor: {legal}"
            )
        problem = self._shape_problem(fmt, shape)
        if problem is not None:
            raise ConfigError(f"{tensor} {list(shape)}: {self.name} format {fmt!r} {problem}; legal for this tensor: {legal}")

    @torch.no_grad()
    def simulate(self, weight: torch.Tensor, fmt: str, tensor: str = "tensor") -> torch.Tensor:
        """The weights the runtime computes with when it stores `weight` in `fmt`.

        weight: (out, in), in the dtype the runtime receives it in (the checkpoint's
        torch_dtype for bitsandbytes; any float for GGUF, which quantizes from float32).
        -> same shape; dtype per target (docs/targets.md).
        """
        self.check(fmt, tuple(weight.shape), tensor)
        if not torch.isfinite(weight).all():
            raise ConfigError(f"{tensor} {list(weight.shape)}: cannot quantize a weight that contains NaN or inf")
        return self._simulate(weight.detach().cpu().contiguous(), fmt)

    def storage_bytes(self, shape: tuple[int, ...], fmt: str, tensor: str = "tensor") -> int:
        """Bytes the runtime stores for a tensor of `shape` in `fmt` (docs/targets.md, "Storage")."""
        self.check(fmt, tuple(shape), tensor)
        return self._storage_bytes(tuple(int(s) for s in shape), fmt)

    def bits_per_weight(self, shape: tuple[int, ...], fmt: str, tensor: str = "tensor") -> float:
        """storage_bytes * 8 / numel: the real bits per weight, scales and padding included."""
        return self.storage_bytes(shape, fmt, tensor) * 8 / math.prod(shape)
