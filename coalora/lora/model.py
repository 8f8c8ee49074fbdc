"""CoaLoraModel: a causal LM whose target projections carry a configuration-aware LoRA.

    set_configuration(C)  ->  WeightSwitcher re-quantizes only the matrices whose setting
                              changed (bounded LRU cache, see coalora.lora.switcher)
                          ->  θ runs ONCE on a (N, 7) code tensor for all N matrices
                          ->  each adapted layer gets its M_i = I + U_i
    forward(...)          ->  the wrapped HF model's forward (input_ids, attention_mask,
                              past_key_values, logits_to_keep ... -> .logits)

Every model the library and the app evaluate is a CoaLoraModel: a base model without a
trained checkpoint is wrapped by `CoaLoraModel.for_base` with a zero adapter (B = 0, so it
computes exactly the quantized base; its layers skip the adapter path), and
`with model.disable_adapter():` gives the quantized base of an adapted model.

Inference mode (train=False): M is computed under no_grad when the configuration is set,
and recomputed automatically if θ's weights changed since (an optimizer step, a load).
Training mode (train=True): θ runs inside every forward instead, so each forward has its
own graph from the loss back to θ (several backward passes per configuration work).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from coalora.errors import ConfigError
from coalora.lora.hypernet import ConfigHyperNet
from coalora.lora.layer import CoaLoraLinear
from coalora.lora.spec import LoraSpec
from coalora.lora.switcher import DEFAULT_CACHE_BYTES, WeightSwitcher
from coalora.space import MODULE_TYPES, ConfigSpace, Configuration


class CoaLoraModel(nn.Module):
    """Wraps `base_model` in place (its target nn.Linear modules become CoaLoraLinear).

    Frozen: every parameter of the base model. Trainable: lora_A, lora_B of each target
    matrix and θ (absent when spec.use_theta is False). `unwrap()` undoes the wrapping.
    """

    def __init__(self, base_model: nn.Module, space: ConfigSpace, spec: LoraSpec | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        super().__init__()
        self.spec = spec or LoraSpec()
        self.space = space
        base_model.requires_grad_(False)
        # The switcher keeps references to the nn.Linear modules, which stay the base layers.
        self.switcher = WeightSwitcher(base_model, space, cache_bytes=cache_bytes)
        self.model = base_model
        g = torch.Generator().manual_seed(self.spec.seed)
        self.adapted: dict[str, CoaLoraLinear] = {}
        for m in space.matrices:
            layer = CoaLoraLinear(self.switcher.modules[m.name], self.spec.rank, self.spec.scaling,
                                  self.spec.dropout, generator=g)
            parent, _, child = m.name.rpartition(".")
            setattr(base_model.get_submodule(parent), child, layer)
            self.adapted[m.name] = layer
        device = next(iter(self.adapted.values())).lora_A.weight.device
        self.theta = (
            ConfigHyperNet(space.n_blocks, self.spec.rank, self.spec.theta_hidden, self.spec.theta_embed,
                           self.spec.theta_init_std, generator=g).to(device)
            if self.spec.use_theta else None
        )
        static = [(MODULE_TYPES.index(m.module_type), m.block) for m in space.matrices]
        self.register_buffer("_static_codes", torch.tensor(static, dtype=torch.long, device=device), persistent=False)
        self.has_adapter = True  # False: a zero adapter standing in for "no checkpoint" (for_base)
        self.configuration: Configuration | None = None
        self._configured = False  # set_configuration was called (config may be None: weights as loaded)
        self._codes: torch.Tensor | None = None  # (N, 7) of the current configuration
        self._theta_in_graph = False
        self._theta_version: tuple[int, ...] | None = None
        self.train(base_model.training)  # new layers start in train mode; follow the base (eval after load_model)

    @classmethod
    def for_base(cls, base_model: nn.Module, model_name: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> "CoaLoraModel":
        """Wrap a base model that has no trained adapter: a zero adapter, switched off, so
        the model computes exactly the (quantized) base and callers need no second code path."""
        model = cls(base_model, ConfigSpace.from_model(base_model, model_name), cache_bytes=cache_bytes)
        model.has_adapter = False
        model._set_enabled(False)
        return model

    def _set_enabled(self, on: bool) -> None:
        for layer in self.adapted.values():
            layer.enabled = on

    @contextmanager
    def disable_adapter(self) -> Iterator["CoaLoraModel"]:
        """Compute the quantized base alone inside the block (peft's context manager of the
        same name); the adapter's previous state is restored on exit."""
        before = [layer.enabled for layer in self.adapted.values()]
        self._set_enabled(False)
        try:
            yield self
        finally:
            for layer, on in zip(self.adapted.values(), before):
                layer.enabled = on

    # ---- configurations --------------------------------------------------------------
    def codes(self, config: Configuration) -> torch.Tensor:
        """(N, 7) long: the 5 field indices, module type index, block index per matrix."""
        self._check_space(config)
        return torch.cat([config.encode().to(self._static_codes.device), self._static_codes], dim=1)

    def compute_U(self, config: Configuration) -> torch.Tensor:
        """θ's (N, r, r) adjustments for `config` (zeros without θ), float32, in the graph
        unless called under no_grad. Does not change the model's state."""
        if self.theta is None:
            self._check_space(config)
            r = self.spec.rank
            return torch.zeros(self.space.n_matrices, r, r, device=self._static_codes.device)
        return self.theta(self.codes(config))

    def set_configuration(self, config: Configuration | None, train: bool = False) -> int:
        """Compute under `config`: re-quantize changed matrices, run θ once. -> #re-quantized.

        None: the weights as loaded (no quantization); only for a model without a trained
        adapter, since θ's adjustment is defined per quantizer setting (ConfigError otherwise).
        """
        if config is None:
            if self.has_adapter:
                raise ConfigError("an adapter is evaluated under a quantization configuration, not 'none' "
                                  "(give a preset such as nf4 or a configuration file)")
            changed = self.switcher.apply(None)
            self.configuration, self._codes, self._theta_in_graph, self._configured = None, None, False, True
            return changed
        self._check_space(config)
        changed = self.switcher.apply(config)
        self.configuration = config
        self._configured = True
        self._codes = self.codes(config)
        self._theta_in_graph = bool(train) and self.theta is not None
        if not self._theta_in_graph:
            self._refresh_mixing()
        return changed

    def _refresh_mixing(self) -> None:
        if self.theta is None:
            for layer in self.adapted.values():
                layer.M = None
            return
        with torch.no_grad():
            self._assign(self.theta(self._codes))
        self._theta_version = self._version_of_theta()

    def _assign(self, U: torch.Tensor) -> None:
        M = U + torch.eye(self.spec.rank, device=U.device, dtype=U.dtype)  # (N, r, r)
        for i, layer in enumerate(self.adapted.values()):
            layer.M = M[i]

    def _version_of_theta(self) -> tuple[int, ...]:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter.
        return tuple(p._version for p in self.theta.parameters())

    def _check_space(self, config: Configuration) -> None:
        self.space.check_same(config)

    # ---- forward ----------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._configured:
            raise RuntimeError("CoaLoraModel: call set_configuration(config) before the forward pass")
        if self._codes is None:
            pass  # weights as loaded, zero adapter: nothing to mix
        elif self._theta_in_graph:
            self._assign(self.theta(self._codes))  # one batched θ call, inside this graph
        elif self.theta is not None and self._theta_version != self._version_of_theta():
            self._refresh_mixing()  # θ was updated since the configuration was set
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if not self._configured:
            raise RuntimeError("CoaLoraModel: call set_configuration(config) before generate")
        if self._codes is not None and self.theta is not None and (self._theta_in_graph or self._theta_version != self._version_of_theta()):
            self._refresh_mixing()
        return self.model.generate(*args, **kwargs)

    @property
    def config(self) -> Any:
        """The wrapped model's transformers config."""
        return self.model.config

    # ---- parameters -------------------------------------------------------------------
    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of A, B, θ (and anything else left trainable), in a fixed order."""
        for name, p in self.named_parameters():
            if p.requires_grad:
                yield name, p

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable tensors, keyed by parameter name (what a checkpoint holds)."""
        return {n: p.detach().clone() for n, p in self.named_trainable_parameters()}

    def folded_B(self, config: Configuration) -> dict[str, torch.Tensor]:
        """{matrix name: B' = B (I + U)} (out, r) float32 for `config`: the peft lora_B weights."""
        with torch.no_grad():
            M = self.compute_U(config) + torch.eye(self.spec.rank, device=self._static_codes.device)
            return {name: layer.lora_B.weight @ M[i] for i, (name, layer) in enumerate(self.adapted.items())}

    def unwrap(self, restore_weights: bool = True) -> nn.Module:
        """Put the original nn.Linear modules back; return the base model. With
        restore_weights=False the base keeps the current configuration's quantized weights
        (call `self.switcher.apply(None)` later to restore them)."""
        if restore_weights:
            self.switcher.apply(None)
        for name, layer in self.adapted.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, layer.base_layer)
        if restore_weights:
            self.switcher.clear_cache()
        self._codes, self._configured = None, False
        return self.model
