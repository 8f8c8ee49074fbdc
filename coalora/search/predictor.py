"""What the app knows of the accuracy-vs-size trade-off beyond its own measurements: the
precomputed predicted front and a GP fitted (lazily, once) on a pool of evaluated
configurations (docs/design.md, "Search"). No model, no gradio."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from coalora.errors import CoaloraError
from coalora.metrics import from_error
from coalora.space import ConfigSpace, Configuration


class Predictor:
    """front: a PredictedFront or None; pool_path: result records / a saved pool, or None.
    `notices` collects one line per thing that could not be loaded (shown by the app)."""

    def __init__(self, space: ConfigSpace, task: str, front_path: Path | None = None,
                 pool_path: Path | None = None) -> None:
        self.space, self.task, self.pool_path = space, task, pool_path
        self.notices: list[str] = []
        self.front = self._read_front(front_path)
        self.metric = str(self.front.meta.get("metric", "accuracy")) if self.front is not None else "accuracy"
        self._gp: Any = None
        self._gp_error: str | None = None
        self._lock = threading.Lock()

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
        return front

    @property
    def available(self) -> bool:
        return self.pool_path is not None or self.front is not None

    def surrogate(self) -> Any:
        """The GP fitted on the pool (once), or None without a usable pool."""
        with self._lock:
            if self._gp is None and self._gp_error is None and self.pool_path is not None:
                from coalora.search.gp import fit_surrogate
                from coalora.search.loop import pool_from_records

                try:
                    pool = pool_from_records(self.pool_path, self.space, self.task)
                    self._gp = fit_surrogate(pool.configs, pool.values, self.space)
                except (CoaloraError, ValueError) as e:
                    self._gp_error = f"GP pool {Path(self.pool_path).name} not usable: {e}"
                    self.notices.append(self._gp_error)
            return self._gp

    def allocation_source(self) -> Any:
        """What `coalora.search.allocate.allocate(..., method="gp")` should search: the GP,
        else the precomputed front, else None."""
        return self.surrogate() or self.front

    def predict(self, config: Configuration) -> tuple[float, float] | None:
        """The GP's (mean, std) for `config` in the front's metric (e.g. accuracy), or None."""
        gp = self.surrogate()
        if gp is None:
            return None
        mean, std = gp.predict([config])
        return from_error(self.metric, float(mean[0])), float(std[0])
