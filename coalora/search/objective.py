"""The search's expensive black box for a trained checkpoint: f1 of the CURRENT adapted
model under each configuration, on a fixed batch of a task's `dev` part.

    obj = DevObjective(model, tokenizer, dev_batch("sst2", 64))  # model: a CoaLoraModel
    f1 = obj(configs)                                           # list[float], lower is better
    obj.last                                                    # Measurement per config

kind "error": the harness metric on the batch (coalora.eval.iter_eval): f1 = 1 - accuracy
for label and multiple-choice tasks, bits per byte for lambada. It is exactly what
`coalora eval --part dev` reports, but coarse (steps of 1/n_rows).
kind "loss": the training loss on the same rows (the trainer's f1: next-token
cross-entropy on the gold label token / continuation), smooth but not a task metric.
The batch is fixed (the first n_rows of the part's seeded order), so the measurement is
deterministic: repeated evaluation of one configuration gives the same value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from coalora.data import Split
from coalora.errors import ConfigError
from coalora.space import Configuration

OBJECTIVES = ("error", "loss")
DEFAULT_DEV_ROWS = 64
_HIGHER_IS_BETTER = ("accuracy",)


@dataclass(frozen=True)
class Measurement:
    """One configuration measured on the dev batch: f1 (to minimise) and the raw metric."""

    config: Configuration
    f1: float
    metric: str
    value: float
    stderr: float
    n: int
    seconds: float
    dtype: str


def dev_batch(task: str, n_rows: int | None = None, split_seed: int = 0) -> Split:
    """The fixed batch: the first `n_rows` rows of `task`'s dev part (None -> at most
    DEFAULT_DEV_ROWS). DataError for an unknown task or an impossible n_rows."""
    from coalora.data import load_split

    split = load_split(task, "dev", split_seed)
    return split.head(min(DEFAULT_DEV_ROWS, len(split)) if n_rows is None else n_rows)


def describe(split: Split, kind: str) -> dict[str, Any]:
    """What f1 values measured on `split` mean; stored with a pool so that a pool is never
    continued on another batch or objective."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"objective {kind!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    return {"task": split.task, "objective": kind, "part": split.part, "dev_rows": len(split),
            "split_seed": split.seed, "split_hash": split.manifest_hash}


class DevObjective:
    """Callable f1 of `model` (a CoaLoraModel) on `split` (see dev_batch).

    max_length bounds the token length of the "loss" examples (the trainer's --max-length).
    """

    def __init__(self, model, tokenizer, split: Split, kind: str = "error", dtype: str = "auto",
                 max_length: int = 128, progress: bool = False):
        self.description = describe(split, kind)  # also validates `kind`
        self.split, task = split, split.task
        self.model, self.tokenizer, self.task, self.kind = model, tokenizer, task, kind
        self.dtype, self.progress = dtype, progress
        self.last: list[Measurement] = []
        self._batch: dict[str, torch.Tensor] | None = None
        if kind == "loss":
            from coalora.train.examples import collate, lm_examples, pad_id_of, task_examples

            maker = lm_examples if self.split.kind == "lm" else task_examples
            examples = maker(self.split, tokenizer, max_length)
            if not examples:
                raise ConfigError(f"the {len(self.split)} dev rows of {task!r} give no loss examples at max_length {max_length}")
            self._batch = collate(examples, pad_id_of(tokenizer))

    def _one(self, config: Configuration) -> Measurement:
        t0 = time.perf_counter()
        self.model.set_configuration(config)
        if self.kind == "loss":
            from coalora.train.trainer import masked_loss

            was = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    loss = float(masked_loss(self.model, self._batch))
            finally:
                self.model.train(was)
            return Measurement(config, loss, "loss", loss, float("nan"), len(self.split),
                               time.perf_counter() - t0, "fp32")
        from coalora.eval import iter_eval

        est = next(iter(iter_eval(self.model, self.tokenizer, self.split, dtype=self.dtype, stream=False)))
        f1 = 1.0 - est.value if est.metric in _HIGHER_IS_BETTER else est.value
        return Measurement(config, f1, est.metric, est.value, est.stderr, est.n, time.perf_counter() - t0, est.dtype)

    def measure(self, configs: Sequence[Configuration]) -> list[Measurement]:
        """Measure each configuration (sets the model's configuration in turn)."""
        it: Any = configs
        if self.progress and len(configs) > 1:
            from tqdm import tqdm

            it = tqdm(configs, desc=f"evaluate {self.task}/dev", unit="config", leave=False)
        self.last = [self._one(c) for c in it]
        return self.last

    def __call__(self, configs: Sequence[Configuration]) -> list[float]:
        return [m.f1 for m in self.measure(configs)]
