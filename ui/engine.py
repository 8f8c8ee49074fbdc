"""The app's engine: one shared model (base + CoA-LoRA checkpoint), the predicted front, the
baselines, allocation and export. No gradio here: handlers call these plain methods.

Concurrency: one lock guards the shared model. An evaluation holds it for ONE chunk of the
streamed quick eval at a time (never across a yield to the caller) and re-applies its own
configuration before each chunk, so requests interleave but every chunk is scored under the
configuration of the request that asked for it: two clients at once each get exactly what
they would get alone. An abandoned (superseded, closed or dropped) evaluation therefore never
holds the lock.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from coalora.errors import CheckpointError, CoaloraError, ConfigError
from coalora.models import DEFAULT_MODEL, EMBEDDED
from coalora.results import ResultRecord, read_records
from coalora.space import ATTENTION_TYPES, ConfigSpace, Configuration

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FRONT = ROOT / "assets" / "front" / "default.json"
DEFAULT_BASELINES = ROOT / "assets" / "front" / "baselines.json"
DEFAULT_POOL = ROOT / "assets" / "front" / "pool.json"
MAX_CONFIG_BYTES = 1 << 20  # a configuration JSON of SmolLM2 is ~60 kB at most; refuse huge uploads
BASELINE_PRESETS = ("nf2", "nf3", "nf4", "nf8")
ALLOCATION_METHODS = ("fast", "ilp", "gp")
# Metrics where higher is better; a front's f1 is then 1 - metric (coalora.search.loop's rule).
ACCURACY_METRICS = ("accuracy", "acc", "acc_norm", "f1_score", "matthews")


@dataclass(frozen=True)
class EngineInfo:
    """What the UI must say about the engine, honestly."""

    model: str
    model_description: str
    method: str  # "coalora" (adapter loaded) or "base"
    checkpoint: str | None
    task: str
    n_rows: int
    dtype: str
    notices: tuple[str, ...] = ()
    gp_available: bool = False
    front_available: bool = False


@dataclass(frozen=True)
class FrontLine:
    """The predicted front as plain numbers for plotting. `on_metric_axis`: y values are in the
    task metric (converted from f1 = 1 - accuracy); otherwise they are the front's raw f1."""

    avg_bits: tuple[float, ...]
    packed_bytes: tuple[int, ...]
    y: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    summaries: tuple[str, ...]
    on_metric_axis: bool
    label: str


def summarize(config: Configuration) -> str:
    """One line for hovers and tables: attention / MLP average bits and the per-block bits."""
    s = config.summary()
    pm = s["per_module_type"]
    attn = [v for k, v in pm.items() if k in ATTENTION_TYPES]
    mlp = [v for k, v in pm.items() if k not in ATTENTION_TYPES]
    blocks = "".join(_block_char(config, b) for b in range(config.space.n_blocks))
    return (f"attn {sum(attn) / max(1, len(attn)):.2f} b, mlp {sum(mlp) / max(1, len(mlp)):.2f} b; "
            f"weight bits per block: {blocks}")


def _block_char(config: Configuration, block: int) -> str:
    bits = {s.bits for m, s in config.items() if m.block == block}
    return str(bits.pop()) if len(bits) == 1 else "*"  # "*" = mixed bits inside the block


def block_bits(config: Configuration) -> list[int]:
    """(n_blocks,) the weight bits of each block: the bits most of its parameters use."""
    out = []
    for b in range(config.space.n_blocks):
        share: dict[int, int] = {}
        for m, s in config.items():
            if m.block == b:
                share[s.bits] = share.get(s.bits, 0) + m.numel
        out.append(max(share, key=share.get) if share else 4)
    return out


class Engine:
    """Shared model + evaluation + allocation + export. Build with `Engine.load(...)`.

    model: a CoaLoraModel (adapter loaded) or a plain HF causal LM (base only; quantized by
    a WeightSwitcher). All model access goes through `self.lock`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, space: ConfigSpace, *, model_name: str,
                 checkpoint: str | None = None, task: str = "sst2", n_rows: int = 128, seed: int = 0,
                 dtype: str = "auto", front_path: Path | None = DEFAULT_FRONT,
                 baselines_path: Path | None = DEFAULT_BASELINES, pool_paths: Sequence[Path] = (),
                 costs: Any = None, notices: Sequence[str] = ()):
        from coalora.data import load_split
        from coalora.lora import CoaLoraModel
        from coalora.quant.model import WeightSwitcher

        self.lock = threading.RLock()
        self.space = space
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.checkpoint = checkpoint
        self.adapted = isinstance(model, CoaLoraModel)
        self.model = model
        self.switcher = model.switcher if self.adapted else WeightSwitcher(model, space)
        self._applied: tuple[str, bool] | None = None  # (config hash, adapter on) now in the model
        self.task, self.seed = task, seed
        split = load_split(task, "test", seed)
        self.split = split.head(min(n_rows, len(split)))
        from coalora.eval import scoring

        self.dtype = scoring.resolve_dtype(dtype, model)
        self.notices = list(notices)
        self.front = self._read_front(front_path)  # PredictedFront or None
        self.front_line = None if self.front is None else front_line(self.front)
        self.baselines_path = baselines_path
        self._baselines: list[ResultRecord] | None = None
        self.pool_path = next((Path(p) for p in pool_paths if p and Path(p).is_file()), None)
        self._surrogate: Any = None
        self._surrogate_error: str | None = None
        self.costs = costs
        self._tmp = Path(tempfile.mkdtemp(prefix="coalora-app-"))

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, checkpoint: str | None = None, model_name: str = DEFAULT_MODEL, **kwargs: Any) -> "Engine":
        """Base model + checkpoint (env COALORA_CHECKPOINT, default 'default'). A missing
        DEFAULT checkpoint is not fatal: the app evaluates the quantized base only and says so.
        Other paths must exist (CheckpointError)."""
        from coalora.lora import load_checkpoint, read_metadata

        ckpt = checkpoint or os.environ.get("COALORA_CHECKPOINT", "default")
        notices = list(kwargs.pop("notices", ()))
        try:
            folder, _ = read_metadata(ckpt)
        except CheckpointError as e:
            if ckpt != "default":
                raise
            notices.append(f"No trained adapter is loaded ({e}): the app evaluates the quantized base "
                           "model only, without any adapter.")
            folder = None
        if folder is not None:
            model, tok, meta = load_checkpoint(folder, dtype=torch.float32)
            name = meta["base_model"]["name"]
            space = model.space
        else:
            from coalora.models import load_model

            model, tok = load_model(model_name, dtype=torch.float32, quiet=True)
            name = model_name
            space = ConfigSpace.from_model(model, name)
        if "costs" not in kwargs:
            from coalora.search.costs import load_costs

            kwargs["costs"] = load_costs(space)
        pools = [Path(os.environ["COALORA_POOL"])] if os.environ.get("COALORA_POOL") else []
        if folder is not None:
            pools.append(folder / "pool.json")
        pools.append(DEFAULT_POOL)
        kwargs.setdefault("pool_paths", pools)
        if os.environ.get("COALORA_FRONT"):
            kwargs.setdefault("front_path", Path(os.environ["COALORA_FRONT"]))
        return cls(model, tok, space, model_name=name, checkpoint=None if folder is None else str(folder),
                   notices=notices, **kwargs)

    def _read_front(self, path: Path | None) -> Any:
        from coalora.search.front import load_front

        if path is None or not Path(path).is_file():
            self.notices.append(f"No predicted front file ({path}): the plot shows no front.")
            return None
        try:
            front = load_front(path, self.space)
        except (CoaloraError, ValueError, KeyError, OSError) as e:
            self.notices.append(f"The predicted front {path} was not loaded: {e}")
            return None
        if not front.points:
            self.notices.append(f"The predicted front {path} holds no points.")
            return None
        return front

    # ---- info ---------------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        em = EMBEDDED.get(self.model_name)
        return EngineInfo(
            model=self.model_name, model_description=em.description if em else self.model_name,
            method="coalora" if self.adapted else "base", checkpoint=self.checkpoint, task=self.task,
            n_rows=len(self.split), dtype=self.dtype, notices=tuple(self.notices),
            gp_available=self.pool_path is not None or self.front is not None,
            front_available=self.front is not None,
        )

    # ---- configurations -----------------------------------------------------------------------
    def parse_config(self, text: str | bytes, source: str = "configuration") -> Configuration:
        """Configuration JSON text -> Configuration (ConfigError / ModelMismatchError naming the problem)."""
        if isinstance(text, bytes):
            if len(text) > MAX_CONFIG_BYTES:
                raise ConfigError(f"{source} is {len(text):,} bytes; a configuration file is at most {MAX_CONFIG_BYTES:,} bytes")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"{source} is not UTF-8 text (is it a JSON file?)") from None
        if not isinstance(text, str):
            raise ConfigError(f"{source} must be JSON text, got {type(text).__name__}")
        if len(text.encode()) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{source} is {len(text.encode()):,} bytes; a configuration file is at most {MAX_CONFIG_BYTES:,} bytes")
        if not text.strip():
            raise ConfigError(f"{source} is empty; give a configuration JSON object (format coalora.configuration/v1)")
        return self.space.loads(text, source=source)

    def preset(self, name: str) -> Configuration:
        return self.space.preset(name)

    # ---- the shared model ---------------------------------------------------------------------
    @contextmanager
    def _using(self, config: Configuration, adapter: bool = True) -> Iterator[None]:
        """Hold the lock with the model computing under `config` (adapter on or off)."""
        with self.lock:
            key = (config.hash, adapter and self.adapted)
            if self._applied != key:
                self._applied = None  # a failure below leaves the state unknown
                if self.adapted:
                    self.model.set_configuration(config)
                    # Adapter off = scaling 0: the layer then adds exactly zero to the base output.
                    for layer in self.model.adapted.values():
                        layer.scaling = self.model.spec.scaling if adapter else 0.0
                else:
                    self.switcher.apply(config)
                self._applied = key
            yield

    def evaluate(self, config: Configuration, adapter: bool = True) -> Iterator[ResultRecord]:
        """Stream the quick eval of `config`: one ResultRecord per chunk (after 8, 24, 56 ... rows),
        the last with extra['done'] True. The lock is held for one chunk at a time."""
        from coalora.eval import iter_eval

        method = "coalora" if (adapter and self.adapted) else "base"
        t0 = time.perf_counter()
        it = iter_eval(self.model, self.tokenizer, self.split, dtype=self.dtype, stream=True)
        try:
            while True:
                with self._using(config, adapter):
                    try:
                        est = next(it)
                    except StopIteration:
                        return
                yield self._record(config, est, method, time.perf_counter() - t0)
        finally:
            it.close()

    def evaluate_final(self, config: Configuration, adapter: bool = True) -> ResultRecord:
        rec = None
        for rec in self.evaluate(config, adapter):
            pass
        assert rec is not None
        return rec

    def _record(self, config: Configuration, est: Any, method: str, seconds: float) -> ResultRecord:
        return ResultRecord(
            task=self.task, metric=est.metric, value=est.value, stderr=est.stderr, n=est.n,
            model=self.model_name, method=method, checkpoint=self.checkpoint if method == "coalora" else None,
            config_hash=config.hash, config_path=None, config=config.to_dict(), avg_bits=config.avg_bits,
            packed_bytes=config.packed_bytes, seed=self.seed, split=self.split.manifest,
            split_hash=self.split.manifest_hash, seconds=seconds, dtype=est.dtype,
            extra={**est.extra, "done": est.done, "n_target": est.n_target, "source": "app quick eval",
                   "summary": summarize(config)},
        )

    # ---- baselines ----------------------------------------------------------------------------
    def baselines(self, compute: bool = False) -> list[ResultRecord]:
        """The quantized base without adapter at the uniform presets: read from the baselines
        file when it has them (same task, model and quick-eval rows), else measured here (only
        when `compute`), then kept in memory."""
        with self.lock:
            if self._baselines is not None:
                return list(self._baselines)
            recs = self._read_baselines()
            if recs:
                self._baselines = recs
                return list(recs)
            if not compute:
                return []
            self._baselines = self.measure_baselines()
            return list(self._baselines)

    def _read_baselines(self) -> list[ResultRecord]:
        if self.baselines_path is None or not Path(self.baselines_path).is_file():
            return []
        latest: dict[str, ResultRecord] = {}  # one per configuration: the last one in the file
        for r in read_records(self.baselines_path):
            if (r.task == self.task and r.model == self.model_name and r.method == "base"
                    and r.avg_bits is not None and r.split_hash == self.split.manifest_hash and r.config_hash):
                latest[r.config_hash] = r
        return sorted(latest.values(), key=lambda r: r.avg_bits)

    def measure_baselines(self) -> list[ResultRecord]:
        """Quick-eval the quantized base (adapter off) at BASELINE_PRESETS -> final records."""
        recs = []
        for p in BASELINE_PRESETS:
            rec = self.evaluate_final(self.space.preset(p), adapter=False)
            rec.config_path = p
            rec.extra["preset"] = p
            recs.append(rec)
        return recs

    def write_baselines(self, path: Path | None = None) -> tuple[Path, list[ResultRecord]]:
        """Measure the baselines and write them (JSON lines, written to a temporary name and
        renamed) to `path`, default the engine's baselines file -> (path, records)."""
        path = Path(path or self.baselines_path or DEFAULT_BASELINES)
        recs = self.measure_baselines()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(r.to_json() + "\n" for r in recs))
        os.replace(tmp, path)
        with self.lock:
            self._baselines = recs
        return path, recs

    # ---- allocation ---------------------------------------------------------------------------
    def allocate(self, budget: float, method: str = "fast") -> tuple[Configuration, str]:
        """A configuration with avg_bits <= `budget` -> (configuration, one-line note).

        fast: Lagrangian relaxation of the ILP (milliseconds); ilp: the exact integer program
        (seconds); gp: the GP's best prediction (needs a pool of evaluated configurations, or
        else the precomputed front's best point that fits)."""
        from coalora.search.allocate import allocate_ilp, allocate_lagrangian, check_budget
        from coalora.search.pareto import BITS_MAX, BITS_MIN

        if method not in ALLOCATION_METHODS:
            raise ConfigError(f"method {method!r} is unknown; allowed values are {', '.join(ALLOCATION_METHODS)}")
        b = check_budget(budget, BITS_MIN)
        if b > BITS_MAX + 1e-9:
            raise ConfigError(f"budget {b:g} bits per weight is above the most precise setting ({BITS_MAX:.4f}); "
                              f"the budget range is {BITS_MIN:.4f} .. {BITS_MAX:.4f}")
        if method == "gp":
            return self._allocate_gp(b)
        if self.costs is None:
            raise ConfigError(f"no quantization-error table for model {self.model_name!r}; compute it once with "
                              f"`coalora allocate --model {self.model_name} --budget 4`")
        t0 = time.perf_counter()
        if method == "ilp":
            res = allocate_ilp(self.costs, b)
            return res.config, f"ILP (HiGHS): {res.avg_bits:.4f} bits, {time.perf_counter() - t0:.1f} s"
        cfg = allocate_lagrangian(self.costs, b)
        return cfg, f"fast allocation (Lagrangian relaxation of the ILP): {cfg.avg_bits:.4f} bits, {time.perf_counter() - t0:.2f} s"

    def _allocate_gp(self, budget: float) -> tuple[Configuration, str]:
        from coalora.search.front import allocate_gp

        gp = self.surrogate()
        if gp is not None:
            point = allocate_gp(gp, budget)
            return point.config, f"GP ({gp.n_observations} observations): predicted f1 {point.mean:.4f} ± {point.std:.4f}"
        if self.front is not None:
            fits = [p for p in self.front.points if p.avg_bits <= budget]
            if not fits:
                raise ConfigError(f"the predicted front has no configuration within {budget:g} bits; "
                                  f"its cheapest point needs {min(p.avg_bits for p in self.front.points):.4f}")
            p = min(fits, key=lambda p: p.mean)
            return p.config, f"precomputed GP front: point for budget {p.budget:g} ({p.avg_bits:.4f} bits)"
        raise ConfigError("method 'gp' needs a GP: no pool of evaluated configurations and no predicted front "
                          "are available; use method 'fast' or 'ilp'")

    def surrogate(self) -> Any:
        """The GP fitted on the pool (lazily, once), or None without a pool."""
        with self.lock:
            if self._surrogate is None and self._surrogate_error is None and self.pool_path is not None:
                from coalora.search.gp import fit_surrogate
                from coalora.search.loop import pool_from_records

                try:
                    pool = pool_from_records(self.pool_path, self.space, self.task)
                    self._surrogate = fit_surrogate(pool.configs, pool.values, self.space)
                except (CoaloraError, ValueError) as e:
                    self._surrogate_error = f"GP pool {self.pool_path} not usable: {e}"
                    self.notices.append(self._surrogate_error)
            return self._surrogate

    def predict(self, config: Configuration) -> tuple[float, float] | None:
        """The GP's prediction for `config` in the plot's units -> (mean, std), or None."""
        gp = self.surrogate()
        if gp is None:
            return None
        mean, std = gp.predict([config])
        m, s = float(mean[0]), float(std[0])
        line = self.front_line
        on_axis = line.on_metric_axis if line is not None else True
        return (1.0 - m, s) if on_axis else (m, s)

    # ---- export -------------------------------------------------------------------------------
    def export_zip(self, config: Configuration) -> Path:
        """A zip of the peft adapter folder for `config` plus its configuration JSON -> path."""
        if not self.adapted:
            raise ConfigError("no trained adapter is loaded, so there is no adapter to export; "
                              "download the configuration JSON instead")
        from coalora.export import export_peft

        out = Path(tempfile.mkdtemp(dir=self._tmp))
        name = f"coalora-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(self.model_name).name)}-{config.hash}"
        with self.lock:
            export_peft(self.model, config, out / name)
        zpath = out / f"{name}.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted((out / name).rglob("*")):
                z.write(f, f"{name}/{f.relative_to(out / name)}")
            z.writestr(f"{name}.configuration.json", config.to_json())
        return zpath

    def write_config(self, config: Configuration) -> Path:
        """The configuration JSON as a file for download -> path."""
        path = self._tmp / f"configuration-{config.hash}.json"
        if not path.exists():
            config.save(path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self._tmp))
        path = folder / name
        path.write_text(text)
        return path


def record_json(record: ResultRecord) -> str:
    """A result record as the /evaluate API returns it (strict JSON)."""
    return record.to_json()


def front_line(front: Any) -> FrontLine:
    """A PredictedFront -> FrontLine, in the task metric when the front says its f1 is
    1 - an accuracy-like metric (front.meta['metric']); else in raw f1 on its own axis."""
    metric = str(front.meta.get("metric", "")).lower()
    on_axis = metric in ACCURACY_METRICS
    pts = sorted(front.points, key=lambda p: p.avg_bits)
    conv = (lambda v: 1.0 - v) if on_axis else (lambda v: v)  # noqa: E731
    # The front is fitted on dev rows, the quick eval scores test rows: say which.
    n_rows = front.meta.get("dev_rows")
    rows = f", {n_rows} {front.meta.get('part', 'dev')} rows" if n_rows else ""
    return FrontLine(
        avg_bits=tuple(p.avg_bits for p in pts),
        packed_bytes=tuple(p.config.packed_bytes for p in pts),
        y=tuple(conv(p.mean) for p in pts),
        lower=tuple(conv(p.mean - 2 * p.std) for p in pts),
        upper=tuple(conv(p.mean + 2 * p.std) for p in pts),
        summaries=tuple(summarize(p.config) for p in pts),
        on_metric_axis=on_axis,
        label=("GP-predicted front (mean ± 2σ" if on_axis else "GP-predicted f1 (mean ± 2σ, right axis") + rows + ")",
    )
