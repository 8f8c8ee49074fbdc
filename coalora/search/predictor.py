"""What the app knows of the accuracy-vs-size trade-off beyond the point being measured: the
predicted front and a GP fitted on a pool of evaluated configurations, which keeps learning
from every evaluation made in the app (docs/design.md, "Search" and "App"). No model, no
gradio.

Observations: each final quick-eval record the app measures is appended (one locked line,
coalora.results.append_record, safe with concurrent sessions and processes) to an
observations file that persists across restarts; records measured on other rows or with
another checkpoint are never mixed in. Each new observation schedules a refit in a
background thread (several arriving during a refit cause one more refit, not many); the GP
and the front are swapped in only when the refit succeeds, so predictions never wait for a
refit and a failed refit keeps the previous GP and says so in `notices`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from coalora.data import task_spec
from coalora.errors import CoaloraError
from coalora.metrics import from_error, to_error
from coalora.space import ConfigSpace, Configuration, TargetConfiguration, names_target


# A background refit waits for the model to be quiet this long (a follow-up edit usually comes
# sooner), and never longer than REFIT_MAX_WAIT_S in all (steady load still gets refits).
REFIT_GRACE_S, REFIT_MAX_WAIT_S, REFIT_POLL_S = 1.0, 30.0, 0.05


def _exiting() -> bool:
    """Whether the interpreter is shutting down: threading stops the main thread before it joins
    the others. The refit thread is not a daemon because a daemon thread still inside torch when
    the interpreter finalizes aborts the process ("terminate called without an active
    exception", exit 134); instead it skips work that has not begun once this is True."""
    return not threading.main_thread().is_alive()


class Predictor:
    """front_path: the precomputed PredictedFront, or None; pool_path: result records / a saved
    pool (the GP's starting data), or None; observations: the app's append-only records file,
    or None (no learning); split_hash / checkpoint: what an observation must have been
    measured on to be used. `notices` collects one line per thing that could not be loaded."""

    def __init__(self, space: ConfigSpace, task: str, front_path: Path | None = None,
                 pool_path: Path | None = None, observations: Path | None = None,
                 split_hash: str | None = None, checkpoint: str | None = None) -> None:
        self.space, self.task, self.pool_path = space, task, pool_path
        self.observations, self.split_hash, self.checkpoint = observations, split_hash, checkpoint
        self.notices: list[str] = []
        self.front = self._read_front(front_path)
        self.metric = (str(self.front.meta.get("metric", "accuracy")) if self.front is not None
                       else task_spec(task).metric)  # what f1 encodes
        self.observed: set[str] = set()  # hashes of the configurations the current GP was fitted on
        self.refits = 0  # successful refits after the first fit
        self._gp: Any = None
        self._configs: list[Configuration] = []  # what the current GP was fitted on
        self._values: list[float] = []  # their measured f1
        self._pool_cache: tuple[tuple[int, int] | None, dict[str, tuple[Configuration, float]]] | None = None
        self._tried = False
        self._lock = threading.Lock()  # guards the fitted state
        self._refit_lock = threading.Lock()  # one refit at a time
        self._dirty = threading.Event()
        # True while the model is evaluating (the app's turn queue): refits wait for a quiet moment
        self.busy: Callable[[], bool] | None = None
        self._waiter_lock, self._waiting = threading.Lock(), False

    def _read_front(self, path: Path | None) -> Any:
        from coalora.search.front import load_front

        if path is None or not Path(path).is_file():
            self.notices.append(f"No predicted front file ({Path(path).name if path else 'none given'}): "
                                "the plot shows no front.")
            return None
        try:
            front = load_front(path, self.space)
        except (CoaloraError, ValueError, KeyError, OSError) as e:
            self.notices.append(f"The predicted front {Path(path).name} was not loaded: {e}")
            return None
        if not front.points:
            self.notices.append(f"The predicted front {Path(path).name} holds no points.")
            return None
        if front.meta.get("task") not in (None, self.task):  # its values would mean another metric
            self.notices.append(f"The predicted front {Path(path).name} was fitted on task {front.meta['task']!r}, "
                                f"not {self.task!r}: the plot shows no front.")
            return None
        return front

    @property
    def available(self) -> bool:
        return self.pool_path is not None or self.front is not None

    # ---- data ---------------------------------------------------------------------------------
    def _data(self) -> tuple[list[Configuration], list[float], int]:
        """The pool plus every usable observation (the newest per configuration)
        -> (configs, f1 values, number of observations used)."""
        from coalora.results import iter_records

        by_hash: dict[str, tuple[Configuration, float]] = {}
        n_obs = 0
        if self.pool_path is not None:
            by_hash.update(self._pool())
        if self.observations is not None:
            for r in iter_records(self.observations):
                if (r.task == self.task and r.split_hash == self.split_hash and r.checkpoint == self.checkpoint
                        and r.config and (r.extra or {}).get("done") and not names_target(r.config)):
                    try:
                        c = self.space.from_dict(r.config)
                    except CoaloraError:
                        continue  # a record of another model: never mixed in
                    by_hash[c.hash] = (c, to_error(r.metric, r.value))
                    n_obs += 1
        configs = [c for c, _ in by_hash.values()]
        return configs, [v for _, v in by_hash.values()], n_obs

    def _pool(self) -> dict[str, tuple[Configuration, float]]:
        """The pool's {hash: (configuration, f1)}, read and checked again only when its file
        changed (mtime, size): parsing it took ~0.4 s, most of a refit, and it is the same
        file at every refit."""
        from coalora.search.loop import pool_from_records

        try:
            st = Path(self.pool_path).stat()
            key = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None  # gone or unreadable: reading it says why, in one line
        if key is None or self._pool_cache is None or self._pool_cache[0] != key:
            self._check_pool()
            pool = pool_from_records(self.pool_path, self.space, self.task)
            self._pool_cache = (key, {c.hash: (c, v) for c, v in zip(pool.configs, pool.values)})
        return self._pool_cache[1]

    def _check_pool(self) -> None:
        """Refuse (ModelMismatchError, one line) a pool measured on other rows than the quick
        eval's or with another checkpoint: its values would mean something else."""
        from coalora import jsonfile
        from coalora.errors import ModelMismatchError

        path = Path(self.pool_path)
        text = jsonfile.read_bytes(path, f"pool file {path.name!r}").decode("utf-8", "replace")
        if text.lstrip().startswith("{") and "coalora.search_pool/" in text[:200]:
            head = jsonfile.loads(text, source=f"pool file {path.name!r}")
            sources = [(head.get("split_hash"), str(head.get("checkpoint_sha256") or "")[:16])]
        else:
            rows = [jsonfile.loads(line, source=f"pool file {path.name!r}") for line in text.splitlines() if line.strip()]
            sources = {(r.get("split_hash"), str(r.get("checkpoint") or "").rpartition("@sha256:")[2])
                       for r in rows if isinstance(r, dict) and r.get("task", self.task) == self.task}
        mine = (self.split_hash, str(self.checkpoint or "").rpartition("@sha256:")[2])
        for rows_hash, sha in sorted(sources, key=str):
            if self.split_hash is not None and rows_hash != self.split_hash:
                raise ModelMismatchError(f"pool {path.name!r} was measured on rows {rows_hash!r}; the quick eval "
                                         f"uses rows {self.split_hash!r}: rebuild the pool on these rows")
            if self.checkpoint is not None and sha != mine[1]:
                raise ModelMismatchError(f"pool {path.name!r} was measured with checkpoint sha256 {sha or 'unknown'}; "
                                         f"this app runs {self.checkpoint}: rebuild the pool for this checkpoint")

    def _fit(self) -> None:
        """Fit the GP (and, once the app has observations, the front) on the current data;
        swap them in."""
        from coalora.search.front import predicted_front
        from coalora.search.gp import fit_surrogate

        configs, values, n_obs = self._data()
        if len(configs) < 2:  # a GP needs two points; until then the app shows no prediction
            return
        gp = fit_surrogate(configs, values, self.space)
        front = self.front
        if n_obs and front is not None:  # the app has measured points: the front follows the new GP
            meta = {**front.meta, "n_observations": gp.n_observations, "refit_in_app": True}
            new = predicted_front(gp, [p.budget for p in front.points], candidates=configs)
            front = type(new)(new.points, new.space, new.objective, {**new.meta, **meta})
        with self._lock:
            self._gp, self.front, self.observed, self._configs = gp, front, {c.hash for c in configs}, configs
            self._values = list(values)

    # ---- learning -----------------------------------------------------------------------------
    def observe(self, record: Any, background: bool = True) -> bool:
        """Keep a final quick-eval record (a ResultRecord) as an observation and refit in the
        background -> whether it was kept (records of other rows or checkpoints are not)."""
        from coalora.results import append_record

        if (self.observations is None or record.split_hash != self.split_hash or record.checkpoint != self.checkpoint
                or not (record.extra or {}).get("done") or record.config is None
                or names_target(record.config)):
            return False  # other rows, checkpoint, a partial estimate, or a target format the GP does not model
        append_record(self.observations, record)
        self._dirty.set()
        if background:
            with self._waiter_lock:  # one waiting thread at a time; its refit takes every new observation
                start, self._waiting = not self._waiting, True
            if start:
                threading.Thread(target=self._refit_when_idle, name="coalora-gp-refit").start()
        else:
            self.refit()
        return True

    def _refit_when_idle(self) -> None:
        """Refit once `busy()` has been False for REFIT_GRACE_S (at most REFIT_MAX_WAIT_S later):
        a refit takes CPU, and run beside the next evaluation it delayed a slider move's first
        estimate by ~0.17 s and its final score by ~0.47 s (p50, back-to-back moves on 2 cores;
        bench/refit_cost.py)."""
        if self.busy is not None:
            start = quiet_since = time.monotonic()
            while time.monotonic() - start < REFIT_MAX_WAIT_S:
                if _exiting():
                    return  # the process is ending: a refit would only delay its exit
                now = time.monotonic()
                if self.busy():
                    quiet_since = now
                elif now - quiet_since >= REFIT_GRACE_S:
                    break
                time.sleep(REFIT_POLL_S)
        with self._waiter_lock:
            self._waiting = False  # an observation from here on starts the next waiter
        self.refit()

    def refit(self, wait: bool = False) -> None:
        """Refit while new observations keep arriving; a failure keeps the previous GP.
        wait: block until a refit already running has finished (then refit if still needed)."""
        if not self._refit_lock.acquire(blocking=wait):
            return  # the running refit sees the dirty flag and goes again
        try:
            while self._dirty.is_set() and not _exiting():
                self._dirty.clear()
                try:
                    self._fit()
                    self.refits += 1
                except Exception as e:  # noqa: BLE001 - any failure: keep serving the previous GP
                    self.notices.append(f"A GP refit failed ({type(e).__name__}: {e}); the previous GP is kept.")
        finally:
            self._refit_lock.release()

    # ---- answers ------------------------------------------------------------------------------
    def surrogate(self) -> Any:
        """The current GP (fitted on first use), or None without usable data."""
        if self._tried:
            return self._gp
        with self._refit_lock:
            if not self._tried:
                try:
                    self._fit()
                except (CoaloraError, ValueError) as e:
                    self.notices.append(f"GP pool {Path(self.pool_path).name if self.pool_path else ''} not usable: {e}")
                self._tried = True
        return self._gp

    def allocation_source(self) -> Any:
        """What `coalora.search.allocate.allocate(..., method="gp")` should search: the GP,
        else the precomputed front, else None."""
        return self.surrogate() or self.front

    def predict(self, config: Configuration) -> tuple[float, float] | None:
        """The GP's (mean, std) for `config` in the front's metric (e.g. accuracy), or None.
        std is predictive: how the app's quick-eval measurement of `config` scatters (latent
        std plus the GP's learned noise; docs/design.md, "Search")."""
        gp = self.surrogate()
        if gp is None or isinstance(config, TargetConfiguration):  # the GP models the NF-k space only
            return None
        mean, std = gp.predict([config], observation_noise=True)
        return from_error(self.metric, float(mean[0])), float(std[0])

    def prob_on_front(self, configs: list[Configuration]) -> list[float] | None:
        """Each configuration's probability of being on the front (not dominated in size and
        quick-eval score) under the GP, against the front's configurations and every
        configuration the GP was fitted on (coalora.search.front.prob_on_front), or None."""
        from coalora.search.front import prob_on_front

        gp = self.surrogate()
        if gp is None or any(isinstance(c, TargetConfiguration) for c in configs):
            return None
        with self._lock:
            rivals = [p.config for p in self.front.points] if self.front is not None else []
            rivals += self._configs
        return prob_on_front(gp, configs, rivals).tolist()

    def best_measured(self, fits: Callable[[Configuration], bool]) -> tuple[Configuration, float, int] | None:
        """Among the measured configurations the GP knows (pool and observations) that `fits`:
        (the best one, its measured value in the metric, how many fit), or None."""
        self.surrogate()
        with self._lock:
            pairs = [(c, v) for c, v in zip(self._configs, self._values) if fits(c)]
        if not pairs:
            return None
        config, f1 = min(pairs, key=lambda cv: cv[1])
        return config, from_error(self.metric, f1), len(pairs)
