"""Switch a live model's target matrices between quantization configurations (the module
surgery under CoaLoraModel.set_configuration; docs/design.md, "Data flow").

Simulated ("fake") quantization: each target nn.Linear gets the dequantized weights of its
setting, computed in float32 from the original weights. Only matrices whose setting changed
since the last call are re-quantized, and results are kept in an LRU cache keyed by
(matrix, setting, family), bounded in bytes (default: coalora.lora.budget's
`switcher_cache_bytes`, 448 MiB: one full SmolLM2-135M configuration in fp32, 425 MB, plus
recent slider settings, 14.2 MB per block), so flipping between recent configurations is a
dictionary lookup. The live configuration's weights are entries of the cache (not copies).

A TargetConfiguration (bnb, gguf) is applied the same way, each matrix's weights being
Target.simulate of the original weights in the module's dtype (the dtype the runtime
would receive them in), cast back to that dtype: bit for bit what the runtime dequantizes
(docs/targets.md, "Evaluation under a target"). Cache keys are Configuration.weight_keys.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from coalora.lora import budget
from coalora.quant.nf import fake_quantize
from coalora.quant.setting import QuantSetting
from coalora.quant.targets import get_target
from coalora.space import ConfigSpace, Configuration

# (matrix name, *weight key): (name, QuantSetting, family) or (name, target, format)
_Key = tuple


class WeightSwitcher:
    """Owns the original weights of `space`'s matrices in `model` and applies configurations.

    `apply(config)` writes the quantized weights into the modules in place (`weight.data`),
    `apply(None)` restores the originals. Memory: one float32 copy of the target weights
    (425 MB for SmolLM2-135M) plus the cache.
    """

    def __init__(self, model: torch.nn.Module, space: ConfigSpace, cache_bytes: int | None = None):
        modules = dict(model.named_modules())
        missing = [m.name for m in space.matrices if m.name not in modules]
        if missing:
            raise ValueError(f"model lacks {len(missing)} matrices of the space, e.g. {missing[0]!r}")
        self.space = space
        self.modules: dict[str, torch.nn.Linear] = {m.name: modules[m.name] for m in space.matrices}
        self.originals = {n: mod.weight.detach().to(torch.float32).clone() for n, mod in self.modules.items()}
        self.current: dict[str, tuple | None] = {n: None for n in self.modules}  # a weight key or None
        # Bumped each time a matrix's weight is written: CoaLoraModel's merged inference
        # weights are keyed by it (a tensor's address can be reused after a cache eviction).
        self.generation: dict[str, int] = {n: 0 for n in self.modules}
        self.cache_bytes = budget.current().switcher_cache_bytes if cache_bytes is None else cache_bytes
        self._cache: OrderedDict[_Key, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self.stats = {"quantized": 0, "cache_hits": 0}

    def _quantized(self, name: str, want: tuple) -> torch.Tensor:
        """The weights of matrix `name` under weight key `want` (Configuration.weight_keys)."""
        key = (name, *want)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats["cache_hits"] += 1
            return hit
        dtype = self.modules[name].weight.dtype
        if isinstance(want[0], QuantSetting):
            w = fake_quantize(self.originals[name], *want).to(dtype)
        else:  # (target, format): the runtime's own dequantized weights
            target, fmt = want
            orig = self.originals[name]
            # simulate runs on the CPU (bitsandbytes' CPU path, gguf's numpy): back to the model's device
            w = get_target(target).simulate(orig.to(dtype), fmt, name).to(orig.device, dtype)
        self.stats["quantized"] += 1
        size = w.numel() * w.element_size()
        if size <= self.cache_bytes:
            self._cache[key] = w
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
        return w

    @torch.no_grad()
    def apply(self, config: Configuration | None) -> int:
        """Make the model compute under `config` (None: original weights). -> #matrices changed."""
        if config is not None:
            self.space.check_same(config)
        changed = 0
        keys = (None,) * self.space.n_matrices if config is None else config.weight_keys()
        for m, want in zip(self.space.matrices, keys):
            if self.current[m.name] == want:
                continue
            mod = self.modules[m.name]
            if want is None:
                mod.weight.data = self.originals[m.name].to(mod.weight.device, mod.weight.dtype)
            else:  # on a GPU the live weights are copies of the (host memory) cache entries
                mod.weight.data = self._quantized(m.name, want).to(mod.weight.device)
            self.current[m.name] = want
            self.generation[m.name] += 1
            changed += 1
        return changed

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
