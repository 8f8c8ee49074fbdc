"""The adapted linear: a frozen (quantized) base projection plus s · B (I + U) A x.

Wraps, doesn't fork (as peft does): `base_layer` is the model's own nn.Linear, whose
weight the WeightSwitcher overwrites with the quantized weights of the current
configuration; its bias is kept. The mixing matrix M = I + U of this matrix is set from
outside (CoaLoraModel runs θ once for all matrices and hands each layer its slice).

Merged inference weight (issue 13; docs/design.md, "Data flow" and "Evaluation"): for
inference CoaLoraModel folds the adapter into one weight per layer, W = Q(W0) + s·B M A,
stored in the compute dtype (bf16 under the eval's autocast), so the projection is one
matmul and the quantized fp32 base weight is not cast to bf16 on every forward. The base
layer keeps Q(W0) untouched (the adapter switched off, training and `unwrap` use it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CoaLoraLinear(nn.Module):
    """y = base(x) + s · ((dropout(x) A^T) M^T) B^T.

    base_layer: nn.Linear (out, in), frozen.  lora_A.weight: (r, in), kaiming-uniform as in
    peft.  lora_B.weight: (out, r), zeros, so a new adapter leaves the base unchanged.
    M: (r, r) or None (None means M = I: plain LoRA).
    The adapter path is computed in the adapter's dtype (float32) and added in x's dtype,
    as peft does, so bf16 compute keeps float32 adapter weights.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base_layer = base_layer
        self.rank, self.scaling = rank, scaling
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = base_layer.weight.device
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)
        self.M: torch.Tensor | None = None  # (r, r); a plain attribute, never saved
        self.enabled = True  # False: the base projection alone (CoaLoraModel.disable_adapter)
        # Merged weight (out, in) in the compute dtype, an entry of CoaLoraModel's merged LRU;
        # a plain attribute (not a buffer: never saved, not moved by .to()). CoaLoraModel
        # sets it (from `merged`) and sets `use_merged` for the duration of one forward.
        self.merged_weight: torch.Tensor | None = None
        self.merged_key: tuple | None = None  # what merged_weight was built from (CoaLoraModel._merge_key)
        self.use_merged = False

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> torch.Tensor:
        """s · B M A: the (out, in) weight the adapter adds, float32."""
        B = self.lora_B.weight if self.M is None else self.lora_B.weight @ self.M  # (out, r)
        return self.scaling * (B @ self.lora_A.weight)

    @torch.no_grad()
    def merged(self, dtype: torch.dtype, base: torch.Tensor | None = None) -> torch.Tensor:
        """A new (out, in) tensor Q(W0) + s·B M A, computed in float32 and rounded once to
        `dtype`. base: Q(W0) (default: the base layer's weight; CoaLoraModel passes the
        switcher's `live` weights, which need not be attached to the base layer)."""
        w = self.base_layer.weight if base is None else base
        B = self.lora_B.weight if self.M is None else self.lora_B.weight @ self.M.to(self.lora_B.weight.dtype)
        return torch.addmm(w.to(torch.float32), B, self.lora_A.weight, alpha=self.scaling).to(dtype)  # (out, in)

    def release_merged(self) -> None:
        self.merged_weight, self.merged_key, self.use_merged = None, None, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_merged and self.enabled:
            return F.linear(x, self.merged_weight, self.base_layer.bias)  # one matmul: adapter folded in
        y = self.base_layer(x)  # (..., out)
        if not self.enabled:
            return y
        dt = self.lora_A.weight.dtype
        h = self.lora_A(self.lora_dropout(x.to(dt)))  # (..., r)
        if self.M is not None:
            h = h @ self.M.to(dt).T  # (..., r)
        return y + (self.lora_B(h) * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, scaling={self.scaling:g}, mixing={'theta' if self.M is not None else 'identity'}"
                + ("" if self.enabled else ", disabled")
                + ("" if self.merged_weight is None else f", merged={str(self.merged_weight.dtype).removeprefix('torch.')}"))
