"""The search's expensive black box for a trained checkpoint: f1 of the CURRENT adapted
model under each configuration, on a fixed batch of a task's `dev` part.

    obj = DevObjective(model, tokenizer, dev_batch("sst2"))      # model: a CoaLoraModel
    f1 = obj(configs)                                           # list[float], lower is better
    obj.last                                                    # one ResultRecord per config

How one configuration is measured is a `Measurer`: a callable that scores the model (already
set to the configuration) and returns an eval Estimate. f1 = coalora.metrics.to_error of it.

kind "error" (built in): the harness metric on the batch (coalora.eval.iter_eval): f1 =
1 - accuracy for label and multiple-choice tasks, bits per byte for lambada. It is exactly
what `coalora eval --part dev` reports, but coarse (steps of 1/n_rows).
kind "loss": the training loss on the same rows, smooth but not a task metric. Its measurer
is training code and lives with the trainer (loss_objective in train/objective.py builds
this class with it), so this package never imports training code (docs/design.md, "Search").
The batch is fixed (the first n_rows of the part's seeded order), so the measurement is
deterministic: repeated evaluation of one configuration gives the same value. By default it
is THE quick-eval set (coalora.eval.harness.quick_split, docs/design.md "Evaluation"), the
rows `coalora eval --quick` and the app's quick eval score.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from coalora.data import Split
from coalora.errors import ConfigError
from coalora.eval.harness import QUICK_ROWS
from coalora.metrics import to_error
from coalora.results import ResultRecord
from coalora.space import Configuration

if TYPE_CHECKING:
    from coalora.eval.harness import Estimate

OBJECTIVES = ("error", "loss")
DEFAULT_DEV_ROWS = QUICK_ROWS  # one definition of the quick-eval rows (coalora.eval.harness)

# Scores the model, already set to the given configuration, -> an eval Estimate.
Measurer = Callable[[Configuration], "Estimate"]


def dev_batch(task: str, n_rows: int | None = None, split_seed: int = 0) -> Split:
    """The fixed batch: the first `n_rows` rows of `task`'s dev part (None -> the quick-eval
    rows, coalora.eval.harness.quick_split). DataError for an unknown task or an impossible n_rows."""
    from coalora.data import load_split
    from coalora.eval.harness import quick_split

    if n_rows is None:
        return quick_split(task, split_seed)
    return load_split(task, "dev", split_seed).head(n_rows)


def describe(split: Split, kind: str) -> dict[str, Any]:
    """What f1 values measured on `split` mean; stored with a pool so that a pool is never
    continued on another batch or objective."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"objective {kind!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    return {"task": split.task, "objective": kind, "part": split.part, "dev_rows": len(split),
            "split_seed": split.seed, "split_hash": split.manifest_hash}


def error_measurer(model: Any, tokenizer: Any, split: Split, dtype: str = "auto") -> Measurer:
    """The "error" kind: the harness metric of `model` on all of `split` in one pass."""
    from coalora.eval import iter_eval

    def measure(config: Configuration) -> "Estimate":
        return next(iter(iter_eval(model, tokenizer, split, dtype=dtype, stream=False)))

    return measure


class DevObjective:
    """Callable f1 of `model` (a CoaLoraModel) on `split` (see dev_batch).

    measurer: how one configuration is scored; None -> the built-in "error" measurer (only
    for kind "error"; the "loss" kind's is loss_measurer in train/objective.py).
    method / checkpoint / extra: stamped on every ResultRecord in `last`.
    """

    def __init__(self, model: Any, tokenizer: Any, split: Split, kind: str = "error", dtype: str = "auto",
                 progress: bool = False, measurer: Measurer | None = None, *, method: str = "coalora",
                 checkpoint: str | None = None, extra: Mapping[str, Any] | None = None):
        self.description = describe(split, kind)  # also validates `kind`
        if measurer is None:
            if kind != "error":
                raise ConfigError(f"objective {kind!r} needs a measurer (loss_objective in train/objective.py builds one)")
            measurer = error_measurer(model, tokenizer, split, dtype)
        self.split, self.task, self.kind = split, split.task, kind
        self.model, self.tokenizer, self.dtype, self.progress = model, tokenizer, dtype, progress
        self.measurer = measurer
        self.method, self.checkpoint, self.extra = method, checkpoint, dict(extra or {})
        self.last: list[ResultRecord] = []

    def _one(self, config: Configuration) -> ResultRecord:
        t0 = time.perf_counter()
        self.model.set_configuration(config)
        est = self.measurer(config)
        # seconds: switching the configuration plus scoring, the cost of one search point.
        return ResultRecord.from_estimate(
            est, config=config, model=self.model.space.model_name, split=self.split, method=self.method,
            checkpoint=self.checkpoint, seconds=round(time.perf_counter() - t0, 3),
            extra={"part": self.split.part, **self.extra, "f1": to_error(est.metric, est.value), "objective": self.kind})

    def measure(self, configs: Sequence[Configuration]) -> list[ResultRecord]:
        """Measure each configuration (sets the model's configuration in turn); f1 of each
        record is `record.extra["f1"]`."""
        it: Any = configs
        if self.progress and len(configs) > 1:
            from tqdm import tqdm

            it = tqdm(configs, desc=f"evaluate {self.task}/dev", unit="config", leave=False)
        self.last = [self._one(c) for c in it]
        return self.last

    def __call__(self, configs: Sequence[Configuration]) -> list[float]:
        return [r.extra["f1"] for r in self.measure(configs)]
