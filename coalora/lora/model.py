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

Merged inference weights (issue 13; docs/design.md, "Data flow", "Evaluation"): a forward in
inference mode with grad disabled (the eval harness scores under no_grad), the model in eval
mode (or without dropout) and the adapter on folds the adapter into each projection first,
W_i = Q(W0_i) + s·B_i M_i A_i, stored in the forward's compute dtype: the autocast dtype when
autocast is on (bf16 in the eval's `compute_context`), else the base weights' dtype. Each
projection is then one matmul and no per-forward fp32 -> bf16 cast of the base weights
happens. A merged weight is keyed by (matrix, its setting's weight key, dtype, device, θ's
versions, A's and B's identities and version counters) and kept in an LRU bounded by the
budget's `merged_cache_bytes`: a one-block change merges its 7 matrices (M_i depends only on
matrix i's own setting), switching back to a recent configuration (an undone slider move,
another session's configuration) is a lookup, and an optimizer step or a load invalidates
the entries. Training (train=True), forwards that need grad, `disable_adapter()` and models
without an adapter (`for_base`) use the unmerged path; the base layers always keep Q(W0).
Memory: the live configuration's merged weights (+212 MB in bf16, +425 MB in fp32 for
SmolLM2-135M's 106.2M target weights; always held, whatever the LRU's budget) plus recent
entries up to `merged_cache_bytes`; a configuration larger than `merged_bytes` is not merged
(unmerged path). `release_merged()` frees them; `merge_for_inference = False` switches
merging off. The output projection (the head; SmolLM2's is tied to the embeddings) is kept
in the compute dtype too while merged forwards run, cast once instead of by autocast in
every forward (~20 ms a forward for SmolLM2's 49152x576 head on 2 cores, bench/head_cast.py;
the same values, so the same logits); its bytes count against `merged_cache_bytes`.

Prefix reuse (issue 13; coalora.lora.prefix): an inference forward without a KV cache
(grad off, eval mode, `use_cache=False`, keyword arguments only, as the eval's label and
lambada scoring call it) starts at the first decoder block whose input hidden states are not
cached for this batch and the configuration of the blocks before it; the logits are
bit-identical to a full forward. `prefix_reuse = False` switches it off, `clear_prefix()`
frees it.

Byte budgets of the switcher cache, the merged weights and the prefix cache all come from
coalora.lora.budget (one settings object; arguments to the constructor win).
"""

from __future__ import annotations

from collections import OrderedDict

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from coalora.errors import ConfigError
from coalora.lora import budget
from coalora.lora.hypernet import ConfigHyperNet
from coalora.lora.layer import CoaLoraLinear
from coalora.lora.prefix import (REUSABLE_KWARGS, PrefixCache, boundary_keys, find_layers, forwards_replaced,
                                 tensor_digest)
from coalora.lora.spec import LoraSpec
from coalora.lora.switcher import WeightSwitcher
from coalora.space import MODULE_TYPES, ConfigSpace, Configuration


class CoaLoraModel(nn.Module):
    """Wraps `base_model` in place (its target nn.Linear modules become CoaLoraLinear).

    Frozen: every parameter of the base model. Trainable: lora_A, lora_B of each target
    matrix and θ (absent when spec.use_theta is False). `unwrap()` undoes the wrapping.
    """

    def __init__(self, base_model: nn.Module, space: ConfigSpace, spec: LoraSpec | None = None,
                 cache_bytes: int | None = None, prefix_bytes: int | None = None, merged_bytes: int | None = None,
                 prefix_stride: int | None = None):
        super().__init__()
        limits = budget.current()
        cache_bytes = limits.switcher_cache_bytes if cache_bytes is None else cache_bytes
        self.merged_bytes = limits.merged_bytes if merged_bytes is None else merged_bytes
        self.merged_cache_bytes = limits.merged_cache_bytes
        self._merged: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # merge key -> merged weight (LRU)
        self._merged_cached = 0  # bytes in self._merged
        self._head: tuple[tuple, torch.Tensor] | None = None  # (key, head weight in the compute dtype)
        self.spec = spec or LoraSpec()
        self.space = space
        base_model.requires_grad_(False)
        # The switcher keeps references to the nn.Linear modules, which stay the base layers.
        # lean_inference: lazy switching, and in inference the merged copy is the one kept.
        self.lean_inference = limits.lean_inference
        self.switcher = WeightSwitcher(base_model, space, cache_bytes=cache_bytes, lazy=self.lean_inference)
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
                           self.spec.theta_init_std, generator=g, inputs=self.spec.theta_inputs).to(device)
            if self.spec.use_theta else None
        )
        static = [(MODULE_TYPES.index(m.module_type), m.block) for m in space.matrices]
        self.register_buffer("_static_codes", torch.tensor(static, dtype=torch.long, device=device), persistent=False)
        self._own_weights()
        self.has_adapter = True  # False: a zero adapter standing in for "no checkpoint" (for_base)
        self.configuration: Configuration | None = None
        self._configured = False  # set_configuration was called (config may be None: weights as loaded)
        self._codes: torch.Tensor | None = None  # (N, K) θ inputs of the current configuration
        self._theta_in_graph = False
        self._theta_version: tuple[int, ...] | None = None
        self.merge_for_inference = True  # False: always the unmerged path (benchmarks, parity tests)
        self.cache_head = True  # False: autocast casts the head in every forward (benchmarks, parity tests)
        self.merge_stats = {"merged": 0, "cache_hits": 0}  # layers (re-)merged so far; taken from the LRU
        self.prefix = PrefixCache(limits.prefix_bytes if prefix_bytes is None else prefix_bytes,
                                  limits.prefix_stride if prefix_stride is None else prefix_stride)
        self.prefix_reuse = True  # False: every forward runs all blocks (benchmarks, parity tests)
        self._blocks: list[list[str]] = [[] for _ in range(space.n_blocks)]
        for m in space.matrices:
            self._blocks[m.block].append(m.name)
        # the decoder layers (a plain reference, not a registered submodule: state dicts stay as they were)
        object.__setattr__(self, "_layers", find_layers(base_model, {m.name: m.block for m in space.matrices}, space.n_blocks))
        self.train(base_model.training)  # new layers start in train mode; follow the base (eval after load_model)

    def _own_weights(self) -> None:
        """Hold every weight in private memory, none in the file the model was loaded from.
        Why: transformers loads safetensors by mmap; a single tensor left on the mapping (the
        embeddings) keeps all of it resident, 513 MB for SmolLM2-135M, on top of the
        switcher's copy of the originals (issue 13, item 5). Target weights are made from the
        switcher's originals (shared when it holds them in float32, as after
        `switcher.apply(None)`; with a lazy switcher, when first read); the other parameters
        and buffers are copied once (the embeddings: 113 MB)."""
        with torch.no_grad():
            sw = self.switcher
            targets = {id(sw.param(name)) for name in sw.modules}
            for name in sw.modules:
                if sw.current[name] is None and not sw.release(name):
                    sw.param(name).data = sw.originals[name].to(sw.param(name).dtype)
            seen: set[int] = set()
            for t in [*self.model.parameters(), *self.model.buffers()]:
                if id(t) not in targets and id(t) not in seen and t.device.type == "cpu":
                    seen.add(id(t))  # tied weights (embeddings = head) are one tensor: copied once
                    t.data = t.data.clone()

    # ---- devices (coalora.device) ---------------------------------------------------------
    def _apply(self, fn: Any, recurse: bool = True) -> "CoaLoraModel":
        """.to(device) / .cuda() / accelerate's placement: parameters and buffers move as
        usual; then the state that is not a parameter follows (issue 13, item 6). The
        switcher keeps quantizing on the CPU from its host-memory fp32 originals into its
        host-memory cache (bit-identical weights on every device); on a GPU the live weights
        are copies of the cache entries (a one-block change copies 7 matrices, 14 MB; a whole
        configuration 425 MB)."""
        super()._apply(fn, recurse)
        self.release_merged()  # rebuilt on the new device by the next inference forward
        self.clear_prefix()
        if self._codes is not None and self.configuration is not None:
            self._codes = self.codes(self.configuration)
            self._theta_version = None  # θ's mixing M is re-made on the new device at the next forward
        return self

    @classmethod
    def for_base(cls, base_model: nn.Module, model_name: str, cache_bytes: int | None = None) -> "CoaLoraModel":
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
        """(N, K) long, θ's input per matrix: the 5 field indices; with spec.theta_inputs ==
        "targets" the format kind and exact-bits rows (Configuration.encode_format); the
        module type index and the block index. K = 7 or 9."""
        self._check_space(config)
        parts = [config.encode()]
        if self.spec.theta_inputs == "targets":
            parts.append(config.encode_format())
        device = self._static_codes.device
        return torch.cat([p.to(device) for p in parts] + [self._static_codes], dim=1)

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
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter;
        # the identity catches a parameter replaced by a new tensor.
        return tuple((id(p), p._version) for p in self.theta.parameters())

    def _check_space(self, config: Configuration) -> None:
        self.space.check_same(config)

    # ---- merged inference weights (see the module docstring) ------------------------------
    def _merge_allowed(self, dtype: torch.dtype) -> bool:
        return (self.merge_for_inference and self.has_adapter and self._codes is not None
                and not self._theta_in_graph and not torch.is_grad_enabled()
                and (not self.training or self.spec.dropout == 0)
                and all(layer.enabled for layer in self.adapted.values())
                and self.space.n_params * dtype.itemsize <= self.merged_bytes)

    def compute_dtype(self) -> torch.dtype:
        """The dtype the projections compute in now: autocast's when it is on for the
        weights' device (the eval's bf16), else the base weights' dtype."""
        w = self._first_weight()
        return torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else w.dtype

    def _first_weight(self) -> torch.Tensor:
        # the parameter itself (its dtype and device), not `.weight`: a released weight stays so
        return self.switcher.param(next(iter(self.switcher.modules)))

    def _merge_key(self, name: str, layer: CoaLoraLinear, dtype: torch.dtype) -> tuple:
        """What a merged weight is made of: the matrix and its setting's weight key (Q(W0)),
        θ's version (M_i = I + θ(matrix i's own setting)), A and B, the dtype and device."""
        A, B = layer.lora_A.weight, layer.lora_B.weight
        return (name, self.switcher.current[name], dtype, self.switcher.param(name).device, self._theta_version,
                id(A), A._version, id(B), B._version)

    def _ensure_merged(self, dtype: torch.dtype) -> int:
        """Point every layer at its merged weight for the current configuration: from the LRU
        when made before (under the same θ, A, B), else merged now -> how many were merged."""
        n = 0
        for name, layer in self.adapted.items():
            key = self._merge_key(name, layer, dtype)
            w = self._merged.get(key)
            if w is not None:
                self._merged.move_to_end(key)  # also keeps the live configuration's entries recent
                if layer.merged_key != key:
                    self.merge_stats["cache_hits"] += 1
            else:
                w = layer.merged(dtype, self.switcher.live(name))
                n += 1
                if self.lean_inference:
                    self.switcher.release(name)  # one matrix at a time: no whole fp32 configuration at once
                self._merged[key] = w
                self._merged_cached += w.numel() * w.element_size()
            layer.merged_weight, layer.merged_key = w, key
        live = {layer.merged_key for layer in self.adapted.values()}
        while self._merged_cached + self._head_bytes() > self.merged_cache_bytes:
            key, old = next(iter(self._merged.items()))
            if key in live:  # only the live configuration is left: held whatever the budget
                break
            del self._merged[key]
            self._merged_cached -= old.numel() * old.element_size()
        if self.lean_inference:
            self.switcher.release()  # e.g. attached by an unmerged forward since: read again when needed
        self.merge_stats["merged"] += n
        return n

    def merged_cached_bytes(self) -> int:
        """Bytes of merged weights held: the LRU's entries and the head's compute-dtype copy."""
        return self._merged_cached + self._head_bytes()

    def _head_bytes(self) -> int:
        return 0 if self._head is None else self._head[1].numel() * self._head[1].element_size()

    def _head_in(self, dtype: torch.dtype) -> tuple[nn.Linear, torch.Tensor] | None:
        """(the output projection, its weight in `dtype`), cast once per weight version; None
        when the head is not a bias-free nn.Linear or already computes in `dtype`."""
        if not self.cache_head:
            return None
        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.dtype == dtype:
            return None
        w = head.weight
        key = (id(w), w._version, dtype, w.device)
        if self._head is None or self._head[0] != key:
            self._head = None  # the old copy goes before the new one is made
            self._head = (key, w.detach().to(dtype))
        return head, self._head[1]

    def prepare_inference(self, dtype: torch.dtype | None = None) -> int:
        """Merge now (instead of in the next forward) for the current configuration, in
        `dtype` (default: the current compute dtype) -> layers re-merged (0: all up to date,
        or merging does not apply)."""
        if not self._configured:
            raise RuntimeError("CoaLoraModel: call set_configuration(config) before prepare_inference")
        with torch.no_grad():
            self._sync_mixing()
            dtype = dtype or self.compute_dtype()
            if not self._merge_allowed(dtype):
                return 0
            return self._ensure_merged(dtype)

    def release_merged(self) -> None:
        """Free the merged weights and their LRU (rebuilt by the next inference forward)."""
        for layer in self.adapted.values():
            layer.release_merged()
        self._merged.clear()
        self._merged_cached = 0
        self._head = None

    def _set_use_merged(self, on: bool) -> None:
        for layer in self.adapted.values():
            layer.use_merged = on

    # ---- forward ----------------------------------------------------------------------
    def _sync_mixing(self) -> None:
        if self._codes is None:
            pass  # weights as loaded, zero adapter: nothing to mix
        elif self._theta_in_graph:
            self._assign(self.theta(self._codes))  # one batched θ call, inside this graph
        elif self.theta is not None and self._theta_version != self._version_of_theta():
            self._refresh_mixing()  # θ was updated since the configuration was set

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._configured:
            raise RuntimeError("CoaLoraModel: call set_configuration(config) before the forward pass")
        self._sync_mixing()
        dtype = self.compute_dtype()
        merged = self._merge_allowed(dtype)
        head = None
        if merged:
            head = self._head_in(dtype)  # before merging: its bytes count in the LRU's eviction
            self._ensure_merged(dtype)
            self._set_use_merged(True)  # only inside this call: direct calls of self.model stay unmerged
        try:
            with forwards_replaced([(head[0], _Projection(head[1]))] if head else []):
                keys = self._prefix_keys(args, kwargs, dtype, merged)
                if keys is None:
                    return self.model(*args, **kwargs)
                return self.prefix.run(self._layers, keys, lambda: self.model(**kwargs))
        finally:
            if merged:
                self._set_use_merged(False)

    # ---- prefix reuse (see the module docstring and coalora.lora.prefix) --------------------
    def _prefix_keys(self, args: tuple, kwargs: dict[str, Any], dtype: torch.dtype, merged: bool) -> list[bytes] | None:
        """The boundary keys of this forward, or None when it must run in full: reuse off or
        impossible, grad on, training mode, θ in the graph, a KV cache, positional or other
        keyword arguments."""
        if (not self.prefix_reuse or self.prefix.budget_bytes <= 0 or self._layers is None or args
                or torch.is_grad_enabled() or self.training or self.model.training or self._theta_in_graph
                or not REUSABLE_KWARGS.issuperset(kwargs) or not isinstance(kwargs.get("input_ids"), torch.Tensor)):
            return None
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(self.model.config, "use_cache", True)
        if use_cache:
            return None
        w = self._first_weight()
        adapter_on = [layer.enabled for layer in self.adapted.values()]
        global_state = (dtype, w.dtype, str(w.device), merged, any(adapter_on),
                        self._version_of_theta() if self.theta is not None and any(adapter_on) else None,
                        getattr(self.model.config, "_attn_implementation", None))
        blocks = []
        for names in self._blocks:
            state = []
            for name in names:
                layer = self.adapted[name]
                entry: tuple = (name, self.switcher.current[name], layer.enabled)
                if layer.enabled:
                    A, B = layer.lora_A.weight, layer.lora_B.weight
                    entry += (id(A), A._version, id(B), B._version)
                state.append(entry)
            blocks.append(state)
        batch = tensor_digest(kwargs["input_ids"], kwargs.get("attention_mask"), kwargs.get("position_ids"))
        return boundary_keys(batch, global_state, blocks)

    def clear_prefix(self) -> None:
        """Drop every cached hidden state of prefix reuse."""
        self.prefix.clear()

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

    def use_adapter(self, params: Mapping[str, nn.Parameter]) -> None:
        """Compute with another adapter of the same structure (another checkpoint on this base):
        each trainable parameter is replaced by the one of the same name in `params` (kept, not
        copied). Every cache is keyed by its parameters' identities (merged weights, prefixes,
        θ's output), so the entries of both adapters stay valid side by side.
        KeyError / ValueError when the names or shapes differ."""
        own = dict(self.named_trainable_parameters())
        if set(own) != set(params):
            raise KeyError(f"adapter parameters differ: {sorted(set(own) ^ set(params))[:3]}")
        for name, p in params.items():
            if own[name] is p:
                continue
            if p.shape != own[name].shape:
                raise ValueError(f"adapter parameter {name!r} has shape {tuple(p.shape)}, the model needs "
                                 f"{tuple(own[name].shape)}")
            if (p.device, p.dtype) != (own[name].device, own[name].dtype):
                p.data = p.data.to(own[name].device, own[name].dtype)  # e.g. the model moved to CUDA since
            parent, _, attr = name.rpartition(".")
            setattr(self.get_submodule(parent), attr, p)

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
        self.switcher.make_eager()  # every weight attached, plain nn.Linear modules again
        for name, layer in self.adapted.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent), child, layer.base_layer)
        if restore_weights:
            self.switcher.clear_cache()
        self.release_merged()
        self.clear_prefix()
        self._codes, self._configured = None, False
        return self.model


class _Projection:
    """A bias-free linear layer's forward with a given weight (the head's compute-dtype copy):
    under autocast F.linear casts the input as it would have, and the weight is already cast."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)
