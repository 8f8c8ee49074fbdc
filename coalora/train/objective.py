"""The training loss as a measurement: what the trainer minimises and, at each epoch end,
what its configuration search scores; also the "loss" kind of `coalora search`.

It lives with the trainer (not in coalora.search) so that the search package never imports
training code: callers hand a measurer from here to coalora.search (docs/design.md, "Search").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from coalora.data import Split
from coalora.errors import ConfigError
from coalora.train.examples import collate, lm_examples, pad_id_of, task_examples

if TYPE_CHECKING:
    from coalora.search.objective import DevObjective, Measurer
    from coalora.space import Configuration


def masked_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE.

    batch: input_ids, attention_mask, labels, each (B, T) -> a scalar tensor (with grad when
    the model has it)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()  # (B, T-1, V)
    labels = batch["labels"][:, 1:]  # (B, T-1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def loss_measurer(model: Any, batch: dict[str, torch.Tensor], task: str = "", n_rows: int | None = None) -> "Measurer":
    """A coalora.search Measurer: the training loss of `model` (already set to a
    configuration) on `batch` (each tensor (B, T)), in eval mode without gradients.
    Its Estimate has metric "loss", n = n_rows (default B: the data rows the batch came
    from) and no stderr."""
    from coalora.eval.harness import Estimate

    n = int(batch["input_ids"].shape[0]) if n_rows is None else n_rows

    def measure(config: "Configuration") -> Estimate:
        was = model.training
        model.eval()  # no dropout: the same configuration always gives the same value
        try:
            with torch.no_grad():
                loss = float(masked_loss(model, batch))
        finally:
            model.train(was)
        return Estimate("loss", loss, float("nan"), n, 0.0, True, task=task, n_target=n, dtype="fp32")

    return measure


def dev_losses(model: Any, configs: Sequence["Configuration"], batch: dict[str, torch.Tensor]) -> list[float]:
    """The current adapted model's loss on `batch` under each configuration (the trainer's
    epoch-end probe and its search's f1). Leaves the model set to the last configuration."""
    measure = loss_measurer(model, batch)
    out = []
    for c in configs:
        model.set_configuration(c)
        out.append(measure(c).value)
    return out


def loss_batch(split: Split, tokenizer: Any, max_length: int) -> dict[str, torch.Tensor]:
    """The training examples of `split`'s rows (task or lm recipe by the task's kind),
    collated: input_ids, attention_mask, labels, each (B, T). ConfigError if none fit."""
    maker = lm_examples if split.kind == "lm" else task_examples
    examples = maker(split, tokenizer, max_length)
    if not examples:
        raise ConfigError(f"the {len(split)} dev rows of {split.task!r} give no loss examples at max_length {max_length}")
    return collate(examples, pad_id_of(tokenizer))


def loss_objective(model: Any, tokenizer: Any, split: Split, max_length: int = 128, progress: bool = False,
                   **record: Any) -> "DevObjective":
    """DevObjective of kind "loss": the training loss on `split`'s rows, examples cut at
    `max_length` tokens (the trainer's --max-length). `record`: DevObjective's record stamps
    (method, checkpoint, extra)."""
    from coalora.search.objective import DevObjective

    from coalora.eval.scoring import model_device

    dev = model_device(model)  # the batch goes where the model computes (coalora.device)
    batch = {k: v.to(dev) for k, v in loss_batch(split, tokenizer, max_length).items()}
    measurer = loss_measurer(model, batch, split.task, len(split))
    return DevObjective(model, tokenizer, split, "loss", progress=progress, measurer=measurer, **record)


def dev_objective(model: Any, tokenizer: Any, split: Split, kind: str = "error", dtype: str = "auto",
                  max_length: int = 128, progress: bool = False, **record: Any) -> "DevObjective":
    """DevObjective of either kind: "error" (the harness metric, in `dtype`) or "loss"
    (see loss_objective). For callers that take the kind as an option."""
    from coalora.search.objective import DevObjective

    if kind == "loss":
        return loss_objective(model, tokenizer, split, max_length, progress, **record)
    return DevObjective(model, tokenizer, split, kind, dtype, progress, **record)
