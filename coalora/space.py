"""The configuration space of a model: its target matrices and one QuantSetting per matrix.

Data flow: model -> ConfigSpace (matrices, fingerprint) -> Configuration (a setting per
matrix) <-> JSON file / (n_matrices, 5) index encoding / avg_bits and packed bytes.

A TargetConfiguration (a Configuration subclass) holds one format of a deployment target
(bnb, gguf: coalora/quant/targets) per matrix instead; its settings are the formats' θ
proxies and its bytes are the target's storage (docs/targets.md, "Target configurations").
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.quant.nf import FAMILIES
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES, QuantSetting
from coalora.quant.storage import packed_bytes
from coalora.quant.targets import TARGETS, get_target
from coalora.quant.targets.proxy import theta_format_index, theta_proxy, theta_row

CONFIG_FORMAT = "coalora.configuration/v1"
DEFAULT_TARGET = "coalora"  # coalora's own NF-k / INT-k space: plain Configuration


def names_target(data: object) -> bool:
    """Whether a configuration JSON object names a deployment target (not the NF-k space)."""
    return isinstance(data, dict) and data.get("target", DEFAULT_TARGET) != DEFAULT_TARGET
TARGET_NAMES: tuple[str, ...] = (DEFAULT_TARGET, *TARGETS)
MODULE_TYPES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TYPES = MODULE_TYPES[:4]
MLP_TYPES = MODULE_TYPES[4:]
_TARGET_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(MODULE_TYPES) + r")$")

PRESETS: dict[str, QuantSetting] = {
    "nf4": QuantSetting(4, 8, "fp32", 64, 256),
    "nf3": QuantSetting(3, 8, "fp32", 64, 256),
    "nf2": QuantSetting(2, 8, "fp32", 64, 256),
    "nf8": QuantSetting(8, 8, "fp32", 64, 256),
    "min": QuantSetting(2, 2, "bf16", 64, 256),  # the cheapest setting: 2.032 bits
    "max": QuantSetting(8, 8, "fp32", 16, 16),  # the most precise setting: 8.625 bits
}
PRESET_HELP = {
    "nf4": "every matrix NF4, 8-bit scales, fp32 group scales, blocks 64x256 (4.127 bits)",
    "nf3": "as nf4 with 3-bit weights (3.127 bits)",
    "nf2": "as nf4 with 2-bit weights (2.127 bits)",
    "nf8": "as nf4 with 8-bit weights (8.127 bits)",
    "min": "the cheapest setting everywhere (2.032 bits)",
    "max": "the most precise setting everywhere (8.625 bits)",
}


@dataclass(frozen=True)
class MatrixInfo:
    """One quantizable projection: full module name, type (q_proj...down_proj), block index, shape."""

    name: str
    module_type: str
    block: int
    shape: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ConfigSpace:
    """The target matrices of one base model, in module order."""

    model_name: str
    matrices: tuple[MatrixInfo, ...]
    n_blocks: int
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.matrices:
            raise ConfigError(f"model {self.model_name!r} has no quantizable projections (q/k/v/o/gate/up/down_proj)")
        self._index.update({m.name: i for i, m in enumerate(self.matrices)})

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_model(cls, model: torch.nn.Module, model_name: str) -> "ConfigSpace":
        """Every q/k/v/o/gate/up/down projection of every transformer block of `model`."""
        mats = []
        for name, module in model.named_modules():
            m = _TARGET_RE.search(name)
            if m and isinstance(module, torch.nn.Linear):
                mats.append(MatrixInfo(name, m.group(2), int(m.group(1)), tuple(module.weight.shape)))
        n_blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if n_blocks is None:
            n_blocks = 1 + max((m.block for m in mats), default=-1)
        return cls(model_name, tuple(mats), int(n_blocks))

    # ---- lookups ------------------------------------------------------------------
    @property
    def n_matrices(self) -> int:
        return len(self.matrices)

    @property
    def n_params(self) -> int:
        return sum(m.numel for m in self.matrices)

    @functools.cached_property  # checked on every encode: computed once per space, not each time
    def fingerprint(self) -> str:
        """Hash of the target matrix names and shapes (what a configuration must agree with)."""
        text = "\n".join(f"{m.name}:{'x'.join(map(str, m.shape))}" for m in self.matrices)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_fingerprint(self, fingerprint: str | None, what: str, model: str | None = None,
                          made: str = "was made for") -> None:
        """Refuse an artefact (`what`, e.g. "configuration 'c.json'") made for another model:
        ModelMismatchError naming both models and fingerprints ("<what> <made> model ...").
        The one fingerprint check of the package. None passes (not recorded)."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            made_for = f"model {model!r} " if model else "another model "
            raise ModelMismatchError(
                f"{what} {made} {made_for}(fingerprint {fingerprint}), not for {self.model_name!r} "
                f"(fingerprint {self.fingerprint}): their projection names or shapes differ"
            )

    def check_same(self, config: "Configuration") -> None:
        """Refuse a configuration of another space (ModelMismatchError)."""
        self.check_fingerprint(config.space.fingerprint, "the configuration", config.space.model_name)

    def index(self, name: str) -> int:
        if name not in self._index:
            examples = ", ".join(m.name for m in self.matrices[:3])
            raise ConfigError(
                f"unknown matrix name {name!r} for model {self.model_name!r}; "
                f"names look like {examples} ({self.n_matrices} matrices)"
            )
        return self._index[name]

    # ---- making configurations ------------------------------------------------------
    def uniform(self, setting: QuantSetting, family: str = "nf") -> "Configuration":
        return Configuration(self, (setting,) * self.n_matrices, family)

    def preset(self, name: str) -> "Configuration":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets are {', '.join(PRESETS)}")
        return self.uniform(PRESETS[name])

    def sample(self, n: int, seed: int = 0) -> list["Configuration"]:
        """`n` configurations with every field of every matrix drawn uniformly (seeded)."""
        g = torch.Generator().manual_seed(seed)
        sizes = torch.tensor([len(FIELD_VALUES[f]) for f in FIELD_NAMES])
        out = []
        for _ in range(n):
            idx = (torch.rand(self.n_matrices, len(FIELD_NAMES), generator=g) * sizes).long()  # (M, 5)
            out.append(self.decode(idx))
        return out

    def decode(self, indices: torch.Tensor | Iterable, family: str = "nf") -> "Configuration":
        """(n_matrices, 5) or flat (5 * n_matrices,) field indices -> Configuration."""
        idx = torch.as_tensor(indices).reshape(-1)
        if idx.numel() != self.n_matrices * len(FIELD_NAMES):
            raise ConfigError(
                f"an encoding for {self.model_name!r} has {self.n_matrices * len(FIELD_NAMES)} entries "
                f"({self.n_matrices} matrices x {len(FIELD_NAMES)} fields), got {idx.numel()}"
            )
        rows = idx.view(self.n_matrices, len(FIELD_NAMES)).tolist()
        return Configuration(self, tuple(QuantSetting.from_indices(r) for r in rows), family)

    def from_dict(self, data: Mapping[str, Any]) -> "Configuration":
        """Parse the JSON object of a configuration (see README, 'Configuration files')."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a configuration must be a JSON object, got {type(data).__name__}")
        target = data.get("target", DEFAULT_TARGET)
        if target != DEFAULT_TARGET:
            return self._target_from_dict(data)
        allowed = {"format", "model", "fingerprint", "target", "family", "default", "matrices"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys are {', '.join(sorted(allowed))}")
        if data.get("format") != CONFIG_FORMAT:
            raise ConfigError(f"field 'format' has value {data.get('format')!r}; expected {CONFIG_FORMAT!r}")
        self.check_fingerprint(data.get("fingerprint"), "this configuration", data.get("model"))
        family = data.get("family", "nf")
        if family not in FAMILIES:
            raise ConfigError(f"field 'family' has value {family!r}; allowed values are {', '.join(FAMILIES)}")
        default = QuantSetting.from_dict(data.get("default", {}), where="default")
        matrices = data.get("matrices", {})
        if not isinstance(matrices, Mapping):
            raise ConfigError(f"field 'matrices' must be an object of matrix name -> fields, got {type(matrices).__name__}")
        settings = [default] * self.n_matrices
        for name, over in matrices.items():
            settings[self.index(name)] = QuantSetting.from_dict(over, base=default, where=f"matrix {name!r}")
        return Configuration(self, tuple(settings), family)

    def _target_from_dict(self, data: Mapping[str, Any]) -> "TargetConfiguration":
        """The JSON object of a target configuration: {"format", "model", "fingerprint",
        "target": T, "default": FMT, "matrices": {name: FMT}} (formats, not field objects)."""
        target = data["target"]
        if not isinstance(target, str) or target not in TARGET_NAMES:
            raise ConfigError(f"field 'target' has value {target!r}; allowed values are {', '.join(TARGET_NAMES)}")
        allowed = {"format", "model", "fingerprint", "target", "default", "matrices"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in a {target} configuration; "
                              f"allowed keys are {', '.join(sorted(allowed))}")
        if data.get("format") != CONFIG_FORMAT:
            raise ConfigError(f"field 'format' has value {data.get('format')!r}; expected {CONFIG_FORMAT!r}")
        self.check_fingerprint(data.get("fingerprint"), "this configuration", data.get("model"))
        return self.target_configuration(target, {k: data[k] for k in ("default", "matrices") if k in data})

    def target_configuration(self, target: str, spec: str | Mapping[str, Any]) -> "TargetConfiguration":
        """A configuration of deployment target `target` (bnb, gguf) from one format for every
        matrix or {"default": FMT, "matrices": {name: FMT}}; every format is checked against
        its matrix's shape (ConfigError naming the matrix, its shape and the legal formats)."""
        from coalora.quant.targets.assign import assign

        if target == DEFAULT_TARGET:
            raise ConfigError(f"target {DEFAULT_TARGET!r} is the NF-k space: use a preset or a configuration file")
        got = assign(get_target(target), [(m.name, m.shape) for m in self.matrices], spec)
        return TargetConfiguration(self, target, got.formats)

    def load(self, spec: str | Path) -> "Configuration":
        """A preset name, TARGET:FORMAT (that target format on every matrix, e.g. gguf:Q4_0)
        or the path of a configuration JSON file (read strictly: a regular UTF-8 file of
        standard JSON without duplicate keys, see coalora.jsonfile)."""
        from coalora import jsonfile

        spec_s = str(spec)
        if spec_s in PRESETS:
            return self.preset(spec_s)
        head, colon, fmt = spec_s.partition(":")
        if colon and head in TARGETS and not os.path.lexists(spec_s):
            return self.target_configuration(head, fmt)
        if not spec_s.strip():
            raise ConfigError(f"the configuration is empty; give a preset ({', '.join(PRESETS)}) or a JSON file")
        path = Path(spec_s)
        if not path.suffix and not os.path.lexists(spec_s):
            raise ConfigError(f"unknown preset {spec_s!r}; known presets are {', '.join(PRESETS)} (or give a JSON file)")
        source = f"configuration file {spec_s!r}"
        return self.from_dict(jsonfile.load(spec_s, source=source))

    def loads(self, text: str | bytes, source: str = "configuration") -> "Configuration":
        """A configuration from JSON text or bytes (strict, see load); `source` names it in errors."""
        from coalora import jsonfile

        return self.from_dict(jsonfile.loads(text, source=source))


@dataclass(frozen=True)
class Configuration:
    """One QuantSetting per target matrix of `space` (aligned with space.matrices)."""

    space: ConfigSpace
    settings: tuple[QuantSetting, ...]
    family: str = "nf"
    # The NF-k space; TargetConfiguration sets both per instance (its target, one format per matrix).
    target: ClassVar[str] = DEFAULT_TARGET
    formats: ClassVar[tuple[str, ...] | None] = None

    def __post_init__(self) -> None:
        if len(self.settings) != self.space.n_matrices:
            raise ConfigError(f"{len(self.settings)} settings for {self.space.n_matrices} matrices")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Configuration)
            and self.space.fingerprint == other.space.fingerprint
            and self.target == other.target
            and self.formats == other.formats
            and self.settings == other.settings
            and self.family == other.family
        )

    def __hash__(self) -> int:
        return self._memo("_hash", lambda: hash((self.space.fingerprint, self.settings, self.family)))

    def _memo(self, name: str, make: Callable[[], Any]) -> Any:
        """A value derived from the (frozen) fields, made once per instance: the GP's rival
        sets encode and hash hundreds of configurations per app evaluation, and each encode
        walked 210 settings again (docs/benchmarks.md, "One model thread")."""
        value = self.__dict__.get(name)
        if value is None:
            value = make()
            object.__setattr__(self, name, value)  # frozen dataclass: a cache, not a field
        return value

    def setting(self, name: str) -> QuantSetting:
        return self.settings[self.space.index(name)]

    def items(self) -> Iterable[tuple[MatrixInfo, QuantSetting]]:
        return zip(self.space.matrices, self.settings)

    def with_settings(self, changes: Mapping[str, QuantSetting]) -> "Configuration":
        """A copy with some matrices' settings replaced (by full matrix name)."""
        s = list(self.settings)
        for name, setting in changes.items():
            s[self.space.index(name)] = setting
        return Configuration(self.space, tuple(s), self.family)

    def weight_keys(self) -> tuple[tuple, ...]:
        """(n_matrices,) what determines each matrix's quantized weights, hashable: (setting,
        family) here, (target, format) for a TargetConfiguration (the switcher's cache keys)."""
        return tuple((s, self.family) for s in self.settings)

    # ---- storage --------------------------------------------------------------------
    def matrix_bits(self) -> list[float]:
        """(n_matrices,) bits per weight of each matrix: bpp(c_i) (padding and the fp32 offset
        excluded, docs/design.md); a TargetConfiguration's are the target's real bits."""
        return [s.bits_per_param for s in self.settings]

    @property
    def avg_bits(self) -> float:
        """sum_i n_i bpp(c_i) / sum_i n_i over the quantized matrices (docs/design.md, "Configuration space")."""
        total = sum(m.numel * b for m, b in zip(self.space.matrices, self.matrix_bits()))
        return total / self.space.n_params

    @property
    def packed_bytes(self) -> int:
        """Exact bytes of all quantized matrices in our packed format (padding and offsets
        included; embeddings, norms, LM head and adapters not counted)."""
        return sum(packed_bytes(m.numel, s) for m, s in self.items())

    @property
    def storage_bytes(self) -> int:
        """Bytes the configuration's format stores for all quantized matrices: packed_bytes
        here, the target's storage accounting for a TargetConfiguration."""
        return self.packed_bytes

    # ---- encodings --------------------------------------------------------------------
    def encode(self) -> torch.Tensor:
        """(n_matrices, 5) long tensor of field indices (columns in FIELD_NAMES order); a new
        tensor every call (the caller may change it)."""
        return self._memo("_encoded", lambda: torch.tensor([s.to_indices() for s in self.settings],
                                                           dtype=torch.long)).clone()

    def encode_format(self) -> torch.Tensor:
        """(n_matrices, 2) long: each matrix's format kind and exact bits as rows of θ's
        extra tables (coalora.quant.targets.proxy.THETA_FORMATS, THETA_BITS)."""
        return torch.tensor([theta_row(self.family, s.bits) for s in self.settings], dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        """JSON object: the most common setting as "default", other matrices as overrides."""
        default = Counter(self.settings).most_common(1)[0][0]
        d = default.to_dict()
        matrices = {}
        for m, s in self.items():
            diff = {k: v for k, v in s.to_dict().items() if d[k] != v}
            if diff:
                matrices[m.name] = diff
        out: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "model": self.space.model_name,
            "fingerprint": self.space.fingerprint,
        }
        if self.family != "nf":
            out["family"] = self.family
        out["default"] = d
        out["matrices"] = matrices
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @property
    def hash(self) -> str:
        """Content hash (independent of how the JSON was written): 16 hex digits."""
        def make() -> str:
            text = json.dumps([self.space.fingerprint, self.family, [s.to_indices() for s in self.settings]])
            return hashlib.sha256(text.encode()).hexdigest()[:16]

        return self._memo("_content_hash", make)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (temp file + rename)."""
        from coalora.io import atomic_write_text

        return atomic_write_text(Path(path), self.to_json())

    # ---- summaries ----------------------------------------------------------------------
    def block_bits(self) -> list[int]:
        """(n_blocks,) the weight bits of each block: the bits most of its parameters use
        (4 for a block without matrices). What the app's per-block sliders show."""
        out = []
        for b in range(self.space.n_blocks):
            share: dict[int, int] = {}
            for m, s in self.items():
                if m.block == b:
                    share[s.bits] = share.get(s.bits, 0) + m.numel
            out.append(max(share, key=share.get) if share else 4)
        return out

    def describe(self) -> str:
        """One line for hovers and tables: attention / MLP average bits and the per-block
        weight bits ('*' for a block whose projections mix bit-widths)."""
        pm = self.summary()["per_module_type"]
        attn = [v for k, v in pm.items() if k in ATTENTION_TYPES]
        mlp = [v for k, v in pm.items() if k not in ATTENTION_TYPES]
        per_block: dict[int, set[int]] = {b: set() for b in range(self.space.n_blocks)}
        for m, s in self.items():
            per_block[m.block].add(s.bits)
        blocks = "".join(str(next(iter(v))) if len(v) == 1 else "*" for v in per_block.values())
        return (f"attn {sum(attn) / max(1, len(attn)):.2f} b, mlp {sum(mlp) / max(1, len(mlp)):.2f} b; "
                f"weight bits per block: {blocks}")

    def summary(self) -> dict[str, Any]:
        """Machine-readable summary: totals, per block and per module type."""

        def avg(pairs: list[tuple[MatrixInfo, float]]) -> float:
            n = sum(m.numel for m, _ in pairs)
            return sum(m.numel * b for m, b in pairs) / n

        pairs = list(zip(self.space.matrices, self.matrix_bits()))
        return {
            "model": self.space.model_name,
            "fingerprint": self.space.fingerprint,
            "config_hash": self.hash,
            "family": self.family,
            "avg_bits": self.avg_bits,
            "packed_bytes": self.packed_bytes,
            "n_matrices": self.space.n_matrices,
            "n_params": self.space.n_params,
            "per_block": {
                str(b): avg([p for p in pairs if p[0].block == b])
                for b in sorted({m.block for m in self.space.matrices})
            },
            "per_module_type": {
                t: avg([p for p in pairs if p[0].module_type == t])
                for t in MODULE_TYPES
                if any(m.module_type == t for m in self.space.matrices)
            },
        }


class TargetConfiguration(Configuration):
    """One format of deployment target `target` (bnb, gguf) per matrix (aligned with
    space.matrices), every one legal for its matrix's shape.

    `settings` holds each format's θ proxy (coalora.quant.targets.proxy: the nearest NF-k
    setting, the (n_matrices, 5) encoding; a θ with theta_inputs "targets" also sees
    encode_format, the format's kind and exact bits); the weights are the target's exact simulation (WeightSwitcher) and the bytes
    its storage accounting. Built by ConfigSpace.target_configuration / from_dict / load.
    """

    def __init__(self, space: ConfigSpace, target: str, formats: Sequence[str]):
        if target == DEFAULT_TARGET:
            raise ConfigError(f"target {DEFAULT_TARGET!r} is the NF-k space: use Configuration")
        t = get_target(target)
        formats = tuple(formats)
        if len(formats) != space.n_matrices:
            raise ConfigError(f"{len(formats)} {target} formats for {space.n_matrices} matrices")
        for m, f in zip(space.matrices, formats):
            t.check(f, m.shape, m.name)
        object.__setattr__(self, "target", target)  # frozen: set once, here
        object.__setattr__(self, "formats", formats)
        super().__init__(space, tuple(theta_proxy(target, f) for f in formats), "nf")

    def __eq__(self, other: object) -> bool:
        return Configuration.__eq__(self, other)

    def __hash__(self) -> int:
        return hash((self.space.fingerprint, self.target, self.formats))

    def __repr__(self) -> str:
        counts = ", ".join(f"{f} x{n}" for f, n in Counter(self.formats).items())
        return f"TargetConfiguration({self.space.model_name!r}, {self.target!r}, {counts})"

    def format(self, name: str) -> str:
        """The target format of matrix `name`."""
        return self.formats[self.space.index(name)]

    def with_settings(self, changes: Mapping[str, QuantSetting]) -> "Configuration":
        raise ConfigError(f"a {self.target} configuration holds formats, not NF-k settings: use with_formats")

    def with_formats(self, changes: Mapping[str, str]) -> "TargetConfiguration":
        """A copy with some matrices' formats replaced (by full matrix name), checked."""
        f = list(self.formats)
        for name, fmt in changes.items():
            f[self.space.index(name)] = fmt
        return TargetConfiguration(self.space, self.target, f)

    def weight_keys(self) -> tuple[tuple, ...]:
        return tuple((self.target, f) for f in self.formats)

    # ---- storage: the target's accounting (docs/targets.md, "Storage") --------------------
    def matrix_bits(self) -> list[float]:
        t = get_target(self.target)
        return [t.bits_per_weight(m.shape, f, m.name) for m, f in zip(self.space.matrices, self.formats)]

    @property
    def storage_bytes(self) -> int:
        """Bytes the runtime stores for all quantized matrices (code tables excluded)."""
        t = get_target(self.target)
        return sum(t.storage_bytes(m.shape, f, m.name) for m, f in zip(self.space.matrices, self.formats))

    @property
    def avg_bits(self) -> float:
        """storage_bytes * 8 / n_params: the real bits per weight, scales included (exact)."""
        return self.storage_bytes * 8 / self.space.n_params

    @property
    def packed_bytes(self) -> int:
        """The target's storage_bytes (what callers of packed_bytes want: the stored size)."""
        return self.storage_bytes

    @property
    def metadata_bytes(self) -> int:
        """Per-tensor code tables the runtime also saves (bnb 4-bit quant maps; 0 for gguf)."""
        meta = getattr(get_target(self.target), "metadata_bytes", None)
        return sum(meta(f) for f in self.formats) if meta else 0

    # ---- encodings --------------------------------------------------------------------
    def encode_format(self) -> torch.Tensor:
        """(n_matrices, 2) long: each format's kind and exact bits (θ's extra inputs)."""
        return torch.tensor([theta_format_index(self.target, f) for f in self.formats], dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        """JSON object: the target, its most common format as "default", others as overrides."""
        default = Counter(self.formats).most_common(1)[0][0]
        return {
            "format": CONFIG_FORMAT,
            "model": self.space.model_name,
            "fingerprint": self.space.fingerprint,
            "target": self.target,
            "default": default,
            "matrices": {m.name: f for m, f in zip(self.space.matrices, self.formats) if f != default},
        }

    @property
    def hash(self) -> str:
        """Content hash over the target and its formats: 16 hex digits (never equal to an
        NF-k configuration's, whose θ proxies may coincide)."""
        text = json.dumps([self.space.fingerprint, "target", self.target, list(self.formats)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- summaries ----------------------------------------------------------------------
    def describe(self) -> str:
        counts = ", ".join(f"{f} x{n}" for f, n in Counter(self.formats).most_common())
        return f"{self.target}: {counts}; {self.avg_bits:.3f} bits per weight"

    def summary(self) -> dict[str, Any]:
        """As Configuration.summary, plus the target, storage and format counts; packed_bytes
        is the target's storage_bytes and there is no family."""
        out = super().summary()
        out.pop("family")
        out.update(target=self.target, storage_bytes=self.storage_bytes, metadata_bytes=self.metadata_bytes,
                   formats=dict(Counter(self.formats)))
        return out
