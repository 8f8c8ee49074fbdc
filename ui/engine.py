"""The app's engine: a thin facade over one shared model (lock, model, evaluate). No gradio;
everything else lives in coalora (allocation, predictor, results, export) or ui/ (plots,
downloads), and app.py alone reads the environment (docs/design.md, "App").

Concurrency: one lock guards the shared model. An evaluation holds it for ONE chunk of the
streamed quick eval at a time (never across a yield) and applies its own adapter and
configuration before each chunk (a no-op when they are already in), so every chunk is scored
under the configuration of the request that asked for it and an abandoned evaluation never
holds the lock; evaluations take turns in start order (ui/turns.py), so a configuration is
applied once per evaluation. Model work (each chunk, verify, export) runs on the app's one
model thread once app.py has started it (ui/model_thread.py): turns are waited for on the
caller's thread, the lock is taken on the model thread.

Several checkpoints (the app's checkpoint selector): `engine.alongside(checkpoint)` is an
Engine of another checkpoint trained on the same base model. It shares the model, the lock
and the turn order (one base model in memory, whatever the number of checkpoints) and has its
own adapter parameters, task, rows, front and pool; CoaLoraModel.use_adapter swaps the
parameters in before its chunks, and the model's caches are keyed by them, so both adapters'
entries stay valid.
"""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from coalora.data import load_split
from coalora.errors import ConfigError
from coalora.eval.harness import QUICK_ROWS, quick_split
from coalora.eval.scoring import resolve_dtype
from coalora.lora import LoadedModel, budget
from coalora.lora.checkpoint import training_task
from coalora.models import DEFAULT_MODEL, EMBEDDED
from coalora.results import ResultRecord, latest_per_config
from coalora.search.allocate import allocate
from coalora.search.predictor import Predictor
from coalora.space import Configuration
from coalora.tmp import process_tmp
from ui import model_thread
from ui.turns import Turns

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
DEFAULT_FRONT = ROOT / "assets" / "front" / "default.json"
DEFAULT_BASELINES = ROOT / "assets" / "front" / "baselines.json"
DEFAULT_POOL = ROOT / "assets" / "front" / "pool.json"
BASELINE_PRESETS = ("nf2", "nf3", "nf4", "nf8")


@dataclass(frozen=True)
class EngineInfo:  # what the UI must say about the engine, honestly
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


class Engine:
    """The shared model and its quick eval. Build with `Engine.load(...)`; all model access
    goes through `self.lock`. predictor: the front and GP (or None); costs: the cost table
    for fast / ilp allocation (or None); workdir: where downloads are written."""

    def __init__(self, loaded: LoadedModel, model_name: str, *, task: str = "sst2", n_rows: int = QUICK_ROWS,
                 seed: int = 0, dtype: str = "auto", predictor: Predictor | None = None, costs: Any = None,
                 baselines_path: Path | None = DEFAULT_BASELINES, workdir: Path | None = None,
                 notices: tuple[str, ...] = (), shared: "_SharedModel | None" = None,
                 adapter: dict[str, Any] | None = None) -> None:
        self._shared = shared or _SharedModel()
        self.lock = self._shared.lock
        self.turns = self._shared.turns  # evaluations run one after another, chunk by chunk (ui/turns.py)
        self.model, self.tokenizer, self.loaded = loaded.model, loaded.tokenizer, loaded
        # the parameters (A, B, θ) this engine computes with: the model's own unless given (alongside)
        self.adapter = adapter if adapter is not None else dict(self.model.named_trainable_parameters())
        self.space = self.model.space
        self.model_name, self.task, self.seed = model_name, task, seed
        self.split = quick_split(task, seed, n_rows)  # the selection measure: dev rows
        self.report_split = load_split(task, "test", seed)  # the reportable measure: every test row
        self.dtype = resolve_dtype(dtype, self.model)
        self.predictor, self.costs, self.baselines_path = predictor, costs, baselines_path
        if predictor is not None:  # GP refits wait until no evaluation (of any checkpoint here) is running
            predictor.busy = self.turns.busy
        self.notices = list(notices) + (predictor.notices if predictor is not None else [])
        # Downloads go inside this process's temp folder: removed at exit, swept after a crash.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="app-", dir=process_tmp()))
        self._baselines: list[ResultRecord] | None = None

    @classmethod
    def load(cls, checkpoint: str | None = "default", model_name: str | None = None, *,
             front_path: Path | None = DEFAULT_FRONT, pool_paths: Sequence[Path] | None = None,
             observations: Path | None = None, device: Any = None, **kwargs: Any) -> "Engine":
        """The checkpoint on its base (None: the base `model_name` with no adapter), its cost
        table, and a Predictor on `front_path`, the first existing file of `pool_paths` (None:
        the checkpoint's pool.json, then the shipped pool) and the app's `observations` file.
        device: a torch device for the model (None: where it loads, the CPU; app.py resolves
        COALORA_DEVICE, coalora.device)."""
        from coalora.lora import load_for_eval, read_metadata
        from coalora.search.costs import load_costs

        folder = read_metadata(checkpoint)[0] if checkpoint is not None else None
        if model_name is None:  # the checkpoint's base, or the embedded default model
            model_name = read_metadata(folder)[1]["base_model"]["name"] if folder is not None else DEFAULT_MODEL
        loaded = load_for_eval(checkpoint, model_name)
        if device is not None:
            from coalora.device import place

            place(loaded.model, device)
        kwargs.setdefault("costs", load_costs(loaded.model.space))
        if pool_paths is None:
            pool_paths = [p for p in (folder and folder / "pool.json", DEFAULT_POOL) if p]
        kwargs.setdefault("task", training_task(loaded.meta))
        predictor = _predictor(loaded, front_path, pool_paths, observations, kwargs)
        return cls(loaded, model_name, predictor=predictor, **kwargs)

    def alongside(self, checkpoint: str | Path, *, front_path: Path | None = None,
                  pool_paths: Sequence[Path] | None = None, observations: Path | None = None,
                  notices: tuple[str, ...] = ()) -> "Engine":
        """Another checkpoint trained on this engine's base model, sharing its model, lock and
        turn order (no second base model in memory): an Engine with its own adapter, task (the
        checkpoint's), quick-eval rows, front (default CHECKPOINT/front.json) and pool
        (default CHECKPOINT/pool.json). CheckpointError / ModelMismatchError when it cannot
        share the model (coalora.lora.load_alongside)."""
        from coalora.lora import load_alongside, read_metadata

        loaded, params = load_alongside(self.loaded, checkpoint)
        folder = read_metadata(checkpoint)[0]
        kwargs: dict[str, Any] = dict(task=training_task(loaded.meta), seed=self.seed, n_rows=len(self.split),
                                      dtype=self.dtype, costs=self.costs, baselines_path=self.baselines_path,
                                      workdir=self.workdir, notices=notices)
        predictor = _predictor(loaded, front_path or folder / "front.json",
                               pool_paths if pool_paths is not None else [folder / "pool.json"], observations, kwargs)
        return Engine(loaded, self.model_name, predictor=predictor, shared=self._shared, adapter=params, **kwargs)

    def info(self) -> EngineInfo:
        em = EMBEDDED.get(self.model_name)
        p = self.predictor
        return EngineInfo(
            model=self.model_name, model_description=em.description if em else self.model_name,
            method="coalora" if self.model.has_adapter else "base", checkpoint=self.loaded.checkpoint,
            task=self.task, n_rows=len(self.split), dtype=self.dtype, notices=tuple(self.notices),
            gp_available=p is not None and p.available, front_available=p is not None and p.front is not None)

    def preset(self, name: str) -> Configuration:
        return self.space.preset(name)

    def allocate(self, budget: float, method: str = "fast") -> tuple[Configuration, str]:
        """A configuration with avg_bits <= `budget` -> (configuration, one-line note)."""
        source = self.predictor.allocation_source() if method == "gp" and self.predictor else self.costs
        if method in ("fast", "ilp") and self.costs is None:
            raise ConfigError(f"no quantization-error table for model {self.model_name!r}; compute it once with "
                              f"`coalora allocate --model {self.model_name} --budget 4`")
        got = allocate(source, budget, method)
        return got.config, got.note

    # ---- deployment targets (docs/deploy.md): the GP and the front know the NF-k space only ----
    def target_formats(self, target: str) -> tuple[str, ...]:
        """The formats of `target` legal on every projection of this model (a uniform choice)."""
        from coalora.quant.targets import get_target

        t = get_target(target)
        legal = set.intersection(*(set(t.legal_formats(sh)) for sh in {m.shape for m in self.space.matrices}))
        return tuple(f for f in t.formats if f in legal)

    def allocate_target(self, target: str, budget: float) -> tuple[Configuration, str]:
        """The target's ILP allocation for `budget` bits per weight (its real bytes), from the
        shipped or cached error table only: computing one takes minutes (`coalora allocate
        --target T` does and caches it)."""
        from coalora.search.target_alloc import allocate_target, check_target_budget, load_target_costs

        table = load_target_costs(self.space, target)
        if table is None:
            raise ConfigError(f"no quantization-error table of target {target!r} for {self.model_name!r} here; compute "
                              f"it once with `coalora allocate --target {target} --model {self.model_name} --budget 8.5`")
        got = allocate_target(table, check_target_budget(table.storage, budget), "ilp")
        return got.config, (f"{target} ILP allocation: {got.config.avg_bits:.3f} bits per weight for a budget of "
                            f"{got.budget:g} ({got.status}, {got.seconds:.2f} s)")

    @staticmethod
    def runtime_missing(target: str) -> str | None:
        """Why `verify` cannot run `target`'s runtime here (None: it can)."""
        import importlib.util

        from coalora.deploy.verify import LLAMA_CPP_HINT

        if target == "coalora":
            return "coalora's NF-k format is simulated only: no runtime loads it; pick a deployment target"
        need = {"bnb": ("bitsandbytes", "pip install bitsandbytes"), "torchao": ("torchao", "pip install torchao"),
                "gguf": ("llama_cpp", LLAMA_CPP_HINT)}[target]
        return None if importlib.util.find_spec(need[0]) is not None else need[1]

    def verify(self, config: Configuration) -> dict[str, Any]:
        """Export `config` to its runtime and score the quick-eval rows there and in the
        simulation, fp32 (coalora.deploy.verify) -> the record. Holds the model meanwhile."""
        from coalora.deploy.verify import verify

        def work() -> dict[str, Any]:
            self._shared.config = None  # verify sets the configuration itself
            try:
                return verify(self.model, self.tokenizer, config, config.target, task=self.task, n=len(self.split))
            finally:
                budget.trim_heap()

        return self._with_model(work)

    def predict(self, config: Configuration) -> tuple[float, float] | None:  # GP (mean, std) in the metric
        if self.predictor is None or config.target != "coalora":
            return None
        return self.predictor.predict(config)

    def prob_on_front(self, config: Configuration) -> float | None:  # under the GP, before learning from it
        if self.predictor is None or config.target != "coalora":
            return None
        p = self.predictor.prob_on_front([config])
        return None if p is None else round(p[0], 4)

    @contextmanager
    def _using(self, config: Configuration, adapter: bool = True) -> Iterator[None]:
        """Hold the lock with the model computing under `config` (adapter on or off)."""
        with self.lock:
            self._put_adapter()
            if self._shared.config != config.hash:
                self._shared.config = None  # a failure below leaves the state unknown
                self.model.set_configuration(config)
                self._shared.config = config.hash
                # Another configuration: the weights and prefix entries it evicted are free now. When
                # evaluations interleave (a head that went stale, ui/turns.py), none ends for a long
                # time, and without this trim their garbage piled up (soak bench: 3.5 GB steady).
                budget.trim_heap()
            with nullcontext() if adapter else self.model.disable_adapter():
                yield

    def evaluate(self, config: Configuration, adapter: bool = True, report: bool = False) -> Iterator[ResultRecord]:
        """Stream the quick eval of `config` (report: every test row instead, the reportable
        number): one ResultRecord per chunk (after 8, 24, 56 ... rows), the last with
        extra['done'] True. The lock is held for one chunk at a time."""
        from coalora.eval import iter_eval

        with_adapter = adapter and self.model.has_adapter
        split, role = (self.report_split, "report") if report else (self.split, "select")
        # The GP's prediction BEFORE the point is measured (then learned from): honest calibration data.
        pred = self.predict(config) if with_adapter and not report else None
        extra = {"role": role, "source": "app test confirmation" if report else "app quick eval",
                 "summary": config.describe(), **({"predicted": list(pred)} if pred else {})}  # once, not per chunk
        t0 = time.perf_counter()
        it = iter_eval(self.model, self.tokenizer, split, dtype=self.dtype, stream=True)
        with self._trimmed(), self.turns.joined() as ticket, closing(it):
            while True:
                with self.turns.turn(ticket):  # waited for here, never on the model thread
                    est = model_thread.run(self._next_chunk, it, config, adapter)
                if est is None:
                    return
                if est.done and pred:  # once, at the end: the first estimate is not delayed
                    extra["p_front"] = self.prob_on_front(config)
                rec = ResultRecord.from_estimate(
                    est, config=config, model=self.model_name, split=split, seed=self.seed,
                    method=self.loaded.method if with_adapter else "base",
                    checkpoint=self.loaded.checkpoint if with_adapter else None, seconds=time.perf_counter() - t0,
                    extra={"done": est.done, "n_target": est.n_target, **extra})
                if est.done and with_adapter and not report and self.predictor and config.target == "coalora":
                    # the GP learns (background refit); it models the NF-k space only
                    self.predictor.observe(rec)
                yield rec

    def _next_chunk(self, it: Iterator[Any], config: Configuration, adapter: bool) -> Any:
        """The next estimate of `it`, with the model under `config` (run on the model thread)."""
        with self._using(config, adapter):
            return next(it, None)

    @staticmethod
    @contextmanager
    def _trimmed() -> Iterator[None]:
        """When an evaluation ends (or is superseded), give the heap's free pages back to the
        system (coalora.lora.budget.trim_heap): its activations are free by then, and glibc
        would keep them (docs/app.md, "Memory")."""
        try:
            yield
        finally:
            budget.trim_heap()

    def evaluate_final(self, config: Configuration, adapter: bool = True, report: bool = False) -> ResultRecord:
        return [*self.evaluate(config, adapter, report)][-1]

    def baselines(self, compute: bool = False) -> list[ResultRecord]:
        """Read from the baselines file (same task, model and rows), else measured here when
        `compute`, then kept in memory."""
        with self.lock:
            if self._baselines is None and self.baselines_path is not None:
                self._baselines = latest_per_config(self.baselines_path, task=self.task, model=self.model_name,
                                                    method="base", split_hash=self.split.manifest_hash) or None
            missing = self._baselines is None and compute
        if missing:  # measured without holding the lock: each chunk takes it on the model thread
            measured = self.measure_baselines()
            with self.lock:
                self._baselines = self._baselines or measured
        return list(self._baselines or [])

    def measure_baselines(self) -> list[ResultRecord]:
        """Quick-eval the quantized base (adapter off) at BASELINE_PRESETS -> final records."""
        recs = [self.evaluate_final(self.space.preset(p), adapter=False) for p in BASELINE_PRESETS]
        for rec, p in zip(recs, BASELINE_PRESETS):
            rec.config_path, rec.extra["preset"] = p, p
        return recs

    def export_zip(self, config: Configuration, folder: Path) -> Path:
        """A zip of `config`'s export, written into `folder` (a fresh one, see ui.downloads) ->
        path: the peft adapter folder plus its configuration JSON for an NF-k configuration,
        what llama.cpp loads for a gguf one. bnb and torchao exports hold the whole
        unquantized base (538 MB for SmolLM2): written by the command line, not zipped here."""
        from coalora.deploy import export_zip

        if not self.model.has_adapter:
            raise ConfigError("no trained adapter is loaded, so there is no adapter to export; "
                              "download the configuration JSON instead")
        if config.target in ("bnb", "torchao"):
            raise ConfigError(
                f"a {config.target} export holds the whole unquantized base model (hundreds of MB), too big for a "
                f"download here: download the configuration JSON and run `coalora export --target {config.target} "
                f"--config configuration-{config.hash}.json --out {config.target}-{config.hash}/` (docs/deploy.md)")
        return self._with_model(lambda: export_zip(self.model, config, folder, self.model_name))

    def _with_model(self, work: Callable[[], T]) -> T:
        """work() on the model thread, holding the lock with this engine's adapter in."""
        def locked() -> T:
            with self.lock:
                self._put_adapter()
                return work()

        return model_thread.run(locked)

    def _put_adapter(self) -> None:
        """Under the lock: this engine's adapter into the shared model (a no-op when it is in)."""
        if self._shared.adapter is not self.adapter:
            self._shared.adapter = None  # a failure below leaves the state unknown
            self.model.use_adapter(self.adapter)
            self._shared.adapter = self.adapter


class _SharedModel:
    """What every Engine on one model shares: the lock, the turn order, and which adapter
    (an Engine's parameter dict) and configuration (hash) the model computes with now."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.turns = Turns()
        self.adapter: dict[str, Any] | None = None
        self.config: str | None = None


def _predictor(loaded: LoadedModel, front_path: Path | None, pool_paths: Sequence[Path], observations: Path | None,
               kwargs: dict[str, Any]) -> Predictor:
    """The front and GP of `loaded`'s checkpoint on its quick-eval rows: the first existing pool file."""
    pools = [Path(p) for p in pool_paths if p and Path(p).is_file()]
    rows = quick_split(kwargs["task"], kwargs.get("seed", 0), kwargs.get("n_rows", QUICK_ROWS)).manifest_hash
    return Predictor(loaded.model.space, kwargs["task"], front_path, pools[0] if pools else None, observations,
                     split_hash=rows, checkpoint=loaded.checkpoint)
