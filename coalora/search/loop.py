"""The search loop: fit the GP on a pool of evaluated configurations, propose by log-EHVI,
evaluate, repeat; return the segmented Pareto set (the next training set of CoA-LoRA).

    result = search(objective, space, initial=ilp_configs, iterations=3)
    result.selected        # list[Configuration], the union of per-segment fronts
    result.pool            # every evaluated configuration with its f1
    result.surrogate       # the last fitted GP (predict, predicted_front)

`objective(configs) -> f1 values` is the expensive black box (the current adapted model on a
fixed held-out batch); it is called once for `initial` (those not already in the pool) and
once per iteration with the new proposals.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from coalora.errors import ConfigError
from coalora.metrics import to_error
from coalora.search.acquisition import propose
from coalora.search.gp import Surrogate, fit_surrogate
from coalora.search.pareto import BITS_MAX, BITS_MIN, DEFAULT_SEGMENTS, segmented_pareto
from coalora.space import ConfigSpace, Configuration, names_target

POOL_FORMAT = "coalora.search_pool/v1"
Objective = Callable[[list[Configuration]], Sequence[float]]


@dataclass
class Pool:
    """Evaluated configurations of one space and their f1 values (lower is better)."""

    space: ConfigSpace
    configs: list[Configuration] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.configs)

    def __contains__(self, config: Configuration) -> bool:
        return config in set(self.configs)

    def add(self, configs: Sequence[Configuration], values: Sequence[float]) -> None:
        values = [float(v) for v in values]
        if len(values) != len(configs):
            raise ConfigError(f"objective returned {len(values)} values for {len(configs)} configurations")
        for c, v in zip(configs, values):
            self.space.check_same(c)
            if v != v or v in (float("inf"), float("-inf")):
                raise ConfigError(f"objective returned {v} for configuration {c.hash}; f1 must be finite")
        self.configs.extend(configs)
        self.values.extend(values)

    @property
    def bits(self) -> list[float]:
        return [c.avg_bits for c in self.configs]

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """JSON: format, model, fingerprint, `meta` (e.g. what f1 means), and one
        {config, avg_bits, f1} entry per point."""
        from coalora.io import atomic_write_text
        from coalora.version import code_version

        data = {"format": POOL_FORMAT, "model": self.space.model_name, "fingerprint": self.space.fingerprint,
                "code_version": code_version(), **(meta or {}),
                "points": [{"config": c.to_dict(), "avg_bits": c.avg_bits, "f1": v}
                           for c, v in zip(self.configs, self.values)]}
        return atomic_write_text(Path(path), json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: str | Path, space: ConfigSpace) -> "Pool":
        from coalora import jsonfile

        data = jsonfile.load(path, f"pool file {Path(path).name!r}")
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise ConfigError(f"pool file {Path(path).name!r} must be a JSON object with a 'points' list")
        if data.get("format") != POOL_FORMAT:
            raise ConfigError(f"{path}: field 'format' is {data.get('format')!r}; expected {POOL_FORMAT!r}")
        space.check_fingerprint(data.get("fingerprint") or "missing", f"pool {Path(path).name!r}", data.get("model"))
        pool = cls(space)
        pool.add([space.from_dict(p["config"]) for p in data["points"]], [p["f1"] for p in data["points"]])
        return pool


@dataclass
class SearchResult:
    pool: Pool
    selected: list[Configuration]
    surrogate: Surrogate | None
    history: list[dict] = field(default_factory=list)


def select(pool: Pool, n_segments: int = DEFAULT_SEGMENTS,
           bit_range: tuple[float, float] = (BITS_MIN, BITS_MAX)) -> list[Configuration]:
    """Segmented Pareto selection over the pool (duplicates collapsed to their first entry)."""
    first: dict[Configuration, int] = {}
    for i, c in enumerate(pool.configs):
        first.setdefault(c, i)
    keep = list(first.values())
    chosen = segmented_pareto([pool.configs[i].avg_bits for i in keep], [pool.values[i] for i in keep],
                              n_segments, bit_range)
    return [pool.configs[keep[k]] for k in chosen]


def search(
    objective: Objective,
    space: ConfigSpace,
    initial: Sequence[Configuration] = (),
    iterations: int = 3,
    batch_size: int = 4,
    pool: Pool | None = None,
    n_segments: int = DEFAULT_SEGMENTS,
    acquisition: str = "qlognehvi",
    n_starts: int = 5,
    max_steps: int = 20,
    n_samples: int = 64,
    seed: int = 0,
    on_evaluated: Callable[[list[Configuration], list[float]], None] | None = None,
    progress: bool = False,
    *,
    fit: Callable[[Pool, int], Any] | None = None,
    proposer: Callable[[Any, int, int], list[Configuration]] | None = None,
    bit_range: tuple[float, float] = (BITS_MIN, BITS_MAX),
    desc: str = "configuration search",
) -> SearchResult:
    """Grow `pool` (a new one if None) by `iterations` rounds of `batch_size` proposals.

    `initial` configurations not yet in the pool are evaluated first. `on_evaluated` sees
    every evaluated batch (e.g. to write result records). -> SearchResult.
    The NF-k search by default; another space's search (coalora.search.target_search) gives
    `fit(pool, seed) -> surrogate`, `proposer(surrogate, n, seed) -> new configurations`
    (never ones in the pool) and the `bit_range` of its segmented selection, and reuses the
    rest (evaluation, pool, callbacks, progress, history).
    """
    if iterations < 0 or batch_size < 1:
        raise ConfigError(f"iterations ({iterations}) must be >= 0 and batch_size ({batch_size}) >= 1")
    pool = pool if pool is not None else Pool(space)
    space.check_fingerprint(pool.space.fingerprint, "the pool", pool.space.model_name)
    if fit is None:
        def fit(pool: Pool, seed: int) -> Surrogate:
            return fit_surrogate(pool.configs, pool.values, space, seed=seed)
    if proposer is None:
        def proposer(surrogate: Surrogate, n: int, seed: int) -> list[Configuration]:
            return propose(surrogate, n, acquisition, n_starts, max_steps, n_samples, seed=seed)

    def run(configs: list[Configuration]) -> None:
        if not configs:
            return
        values = [float(v) for v in objective(configs)]
        pool.add(configs, values)
        if on_evaluated is not None:
            on_evaluated(configs, values)

    seen = set(pool.configs)
    fresh: list[Configuration] = []
    for c in initial:
        if c not in seen:
            seen.add(c)
            fresh.append(c)
    run(fresh)
    history: list[dict] = []
    surrogate = None
    rounds = range(iterations)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, unit="round")
    for it in rounds:
        t0 = time.perf_counter()
        surrogate = fit(pool, seed + it)
        t_fit = time.perf_counter() - t0
        new = proposer(surrogate, batch_size, seed + it)
        t_prop = time.perf_counter() - t0 - t_fit
        run(new)
        history.append({"iteration": it, "pool": len(pool), "proposed": len(new), "fit_s": round(t_fit, 3),
                        "propose_s": round(t_prop, 3), "eval_s": round(time.perf_counter() - t0 - t_fit - t_prop, 3)})
        if not new:
            break  # nothing left to propose: every neighbour is evaluated
    if len(pool) >= 2:
        surrogate = fit(pool, seed + iterations)
    return SearchResult(pool, select(pool, n_segments, bit_range), surrogate, history)


def pool_from_records(path: str | Path, space: ConfigSpace, task: str | None = None) -> Pool:
    """A Pool from result records (JSON lines) or a saved Pool (POOL_FORMAT JSON).

    A record (coalora.results.ResultRecord as JSON) needs the configuration ("config": its
    JSON object, or "config_path": a preset name or a file, relative to the records file),
    "metric" and "value"; "task" when the file mixes tasks. Records without a configuration
    (the unquantized model) are skipped.
    f1 = coalora.metrics.to_error(metric, value): 1 - value for accuracy-like metrics, else
    value. Records for another model raise ModelMismatchError.
    """
    from coalora import jsonfile

    path = Path(path)
    source = f"pool file {path.name!r}"
    raw = jsonfile.read_bytes(path, source)  # regular file, size cap: ConfigError otherwise
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith("{") and f'"{POOL_FORMAT}"' in stripped[:200]:
        return Pool.load(path, space)
    rows = []
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = jsonfile.loads(line, source=f"{source} line {n}")
            except ConfigError:
                if n == len(lines) and not text.endswith("\n"):
                    continue  # a torn last line (crash while appending): coalora.results skips it too
                raise
            if not isinstance(row, dict):
                raise ConfigError(f"{source} line {n} is a JSON {type(row).__name__}; each line must be a result record object")
            rows.append(row)
    # Records of the unquantized model ("none": no configuration) cannot join a pool.
    rows = [r for r in rows if r.get("config") is not None or r.get("config_path") is not None]
    # Deployment-target configurations (bnb, gguf) are skipped: the GP models the NF-k space,
    # and a target format would enter it only as its approximate θ proxy setting.
    rows = [r for r in rows if not names_target(r.get("config"))]
    kinds = sorted({(str(r.get("task")), str(r.get("metric"))) for r in rows})
    if task is not None:
        rows = [r for r in rows if r.get("task") == task]
        kinds = [k for k in kinds if k[0] == task]
    if len(kinds) > 1:
        raise ConfigError(f"{path} mixes {len(kinds)} task/metric pairs ({', '.join('/'.join(k) for k in kinds)}); "
                          "choose one with --task")
    pool = Pool(space)
    for r in rows:
        space.check_fingerprint(r.get("fingerprint"), f"a record of {Path(path).name!r}", r.get("model"))
        if "config" in r and isinstance(r["config"], dict):
            cfg = space.from_dict(r["config"])
        elif isinstance(r.get("config_path"), str):
            from coalora.space import PRESETS

            ref = r["config_path"]
            cfg = space.load(ref if ref in PRESETS else path.parent / ref)
        else:
            raise ConfigError(f"{source}: a record has neither a 'config' object nor a 'config_path' string")
        v = r.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{source}: a record's 'value' is {str(v)[:40]!r}; it must be a number")
        v = float(v)
        pool.add([cfg], [to_error(str(r.get("metric", "")), v)])
    if len(pool) == 0:
        raise ConfigError(f"{source} holds no result records" + (f" for task {task!r}" if task else ""))
    return pool
