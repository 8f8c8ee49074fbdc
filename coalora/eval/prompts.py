"""Every prompt of every task, in one place. Zero-shot, no chat template (plain text).

Three prompt shapes, one per scoring method of coalora.eval.scoring:

- LabelPrompt (sst2, boolq): the model's next-token logits after `prompt`, compared over
  the first token of each label word. Label words carry their leading space (" positive"),
  since that is how the tokenizer sees a word after "Sentiment:".
- ChoicePrompt (multiple choice): log p(continuation_i | context_i) summed over the
  continuation's tokens, divided by the continuation's length in UTF-8 bytes (length
  normalisation as lm-eval-harness "acc_norm"); the argmax is the prediction. For most
  tasks all choices share one context, which is then computed once. WinoGrande is the
  reverse: each option fills the blank in its own context, and the shared remainder of
  the sentence is the scored continuation ("partial scoring").
- TextPrompt (lambada): the whole passage; every token's loss counts (perplexity,
  bits per byte).

Formats follow lm-eval-harness where it has one; SST-2 uses "Review: ...\\nSentiment:",
which reproduces the independent 0.786 zero-shot accuracy of SmolLM2-135M (docs/results.md).
Fine-tuning uses the same prompts (`training_text`), so train and test see one format.

Prompt styles (`STYLES`):
- "coalora" (the default, used by training, the search, the app and every shipped number):
  the formats above.
- "lm-eval": lm-evaluation-harness 0.4.13's task YAMLs verbatim, for numbers comparable with
  lm-eval's (issue 17, item 4): doc_to_text with no stripping, every task scored as multiple
  choice with target delimiter " ", continuation tokens split off the joint encoding of
  context + continuation (lm-eval's `_encode_pair`), and acc_norm dividing by the choice's
  character length, `len(choice)` without the delimiter. Tasks: `LMEVAL_PROMPTS`.
- "lm-eval-coalora": coalora's own prompt texts, nothing stripped, run exactly as lm-eval runs
  a multiple_choice task (bench/lmeval_reference.py writes the matching lm-eval YAML). For SST-2
  that is "Review: {sentence}\\nSentiment:" with choices negative / positive, the prompt the
  issue's lm-eval reference (0.7867) used; for PIQA and ARC coalora's texts are lm-eval's, so
  this style equals "lm-eval" there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from coalora.data import task_spec

Row = dict[str, Any]


@dataclass(frozen=True)
class LabelPrompt:
    prompt: str
    label_words: tuple[str, ...]  # with leading spaces; only the first token of each is scored
    label: int


@dataclass(frozen=True)
class ChoicePrompt:
    contexts: tuple[str, ...]  # one per choice; all equal when the context is shared
    continuations: tuple[str, ...]
    label: int
    # What each choice's log-likelihood is divided by for the normalised pick; None: the
    # continuation's UTF-8 bytes (coalora style). lm-eval style: len(choice) in characters.
    norm_lengths: tuple[int, ...] | None = None
    # True: continuation tokens are encode(context + continuation)[len(encode(context)):]
    # (lm-eval's causal `_encode_pair`); False: encode(continuation) on its own.
    joint_tokens: bool = False

    def norm_length(self, i: int) -> int:
        """The divisor of choice i's log-likelihood in the normalised (acc_norm) pick."""
        if self.norm_lengths is not None:
            return max(1, self.norm_lengths[i])
        return max(1, len(self.continuations[i].encode()))

    @property
    def shared_context(self) -> bool:
        return len(set(self.contexts)) == 1


@dataclass(frozen=True)
class TextPrompt:
    text: str


Prompt = LabelPrompt | ChoicePrompt | TextPrompt

SST2_WORDS = (" negative", " positive")  # label 0 = negative, 1 = positive (GLUE)
BOOLQ_WORDS = (" no", " yes")  # answer False = 0, True = 1


def _sst2(r: Row) -> LabelPrompt:
    return LabelPrompt(f"Review: {r['sentence'].strip()}\nSentiment:", SST2_WORDS, int(r["label"]))


def _boolq(r: Row) -> LabelPrompt:
    q = r["question"].strip()
    q = q[0].upper() + q[1:] + ("" if q.endswith("?") else "?")
    return LabelPrompt(f"{r['passage'].strip()}\nQuestion: {q}\nAnswer:", BOOLQ_WORDS, int(bool(r["answer"])))


def _shared(context: str, choices: list[str], label: int) -> ChoicePrompt:
    return ChoicePrompt((context,) * len(choices), tuple(" " + c.strip() for c in choices), label)


def _piqa(r: Row) -> ChoicePrompt:
    return _shared(f"Question: {r['goal'].strip()}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def _arc(r: Row) -> ChoicePrompt:
    labels = list(r["choices"]["label"])
    return _shared(f"Question: {r['question'].strip()}\nAnswer:", list(r["choices"]["text"]), labels.index(r["answerKey"]))


def _openbookqa(r: Row) -> ChoicePrompt:
    labels = list(r["choices"]["label"])
    return _shared(r["question_stem"].strip(), list(r["choices"]["text"]), labels.index(r["answerKey"]))


def _hellaswag_clean(text: str) -> str:
    # WikiHow artefacts, as lm-eval-harness removes them.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: Row) -> ChoicePrompt:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    context = _hellaswag_clean(r["activity_label"] + ": " + ctx)
    return _shared(context, [_hellaswag_clean(e) for e in r["endings"]], int(r["label"]))


def _copa(r: Row) -> ChoicePrompt:
    connector = {"cause": " because", "effect": " therefore"}[r["question"]]
    context = r["premise"].strip()[:-1] + connector  # drop the final period

    def lower_first(c: str) -> str:
        return c[0].lower() + c[1:]

    return _shared(context, [lower_first(r["choice1"]), lower_first(r["choice2"])], int(r["label"]))


def _winogrande(r: Row) -> ChoicePrompt:
    s = r["sentence"]
    i = s.index("_")
    rest = " " + s[i + 1 :].strip()
    contexts = (s[:i] + r["option1"], s[:i] + r["option2"])
    return ChoicePrompt(contexts, (rest, rest), int(r["answer"]) - 1)


def _lambada(r: Row) -> TextPrompt:
    return TextPrompt(r["text"])


PROMPTS: dict[str, Callable[[Row], Prompt]] = {
    "sst2": _sst2,
    "boolq": _boolq,
    "piqa": _piqa,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "copa": _copa,
    "openbookqa": _openbookqa,
    "lambada": _lambada,
}


# ---- lm-evaluation-harness 0.4.13 task formats (style "lm-eval") ---------------------------
STYLES: tuple[str, ...] = ("coalora", "lm-eval", "lm-eval-coalora")
LMEVAL_DELIMITER = " "  # lm-eval's default target_delimiter


def lmeval_choice(context: str, choices: list[str], label: int) -> ChoicePrompt:
    """A zero-shot lm-eval multiple_choice request: context = doc_to_text as rendered,
    continuation i = delimiter + choice i, acc_norm divisor = len(choice i)."""
    return ChoicePrompt(
        (context,) * len(choices), tuple(LMEVAL_DELIMITER + c for c in choices), label,
        norm_lengths=tuple(len(c) for c in choices), joint_tokens=True,
    )


def _lmeval_sst2(r: Row) -> ChoicePrompt:
    # lm_eval/tasks/glue/sst2/default.yaml
    return lmeval_choice(f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                         ["negative", "positive"], int(r["label"]))


def _lmeval_piqa(r: Row) -> ChoicePrompt:
    # lm_eval/tasks/piqa/piqa.yaml
    return lmeval_choice(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(r["label"]))


def _lmeval_arc(r: Row) -> ChoicePrompt:
    # lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it)
    return lmeval_choice(f"Question: {r['question']}\nAnswer:", list(r["choices"]["text"]),
                         list(r["choices"]["label"]).index(r["answerKey"]))


def _lmeval_sst2_review(r: Row) -> ChoicePrompt:
    # coalora's SST-2 text with the sentence as given (bench/lmeval_reference.py: sst2_review)
    return lmeval_choice(f"Review: {r['sentence']}\nSentiment:", ["negative", "positive"], int(r["label"]))


LMEVAL_PROMPTS: dict[str, Callable[[Row], ChoicePrompt]] = {
    "sst2": _lmeval_sst2,
    "piqa": _lmeval_piqa,
    "arc_easy": _lmeval_arc,
    "arc_challenge": _lmeval_arc,
}
# coalora's texts as lm-eval tasks: only SST-2's text differs from lm-eval's own.
LMEVAL_COALORA_PROMPTS: dict[str, Callable[[Row], ChoicePrompt]] = {**LMEVAL_PROMPTS, "sst2": _lmeval_sst2_review}
STYLE_PROMPTS: dict[str, dict[str, Callable[[Row], Prompt]]] = {
    "coalora": PROMPTS, "lm-eval": LMEVAL_PROMPTS, "lm-eval-coalora": LMEVAL_COALORA_PROMPTS,
}


def check_style(task: str, style: str) -> None:
    """DataError unless `task` exists and has prompts in `style`."""
    from coalora.errors import DataError

    task_spec(task)  # DataError for unknown tasks
    if style not in STYLES:
        raise DataError(f"unknown prompt style {style!r}; known styles are {', '.join(STYLES)}")
    if task not in STYLE_PROMPTS[style]:
        raise DataError(f"task {task!r} has no {style} prompts; style {style} covers {', '.join(STYLE_PROMPTS[style])}")


def make_prompt(task: str, row: Row, style: str = "coalora") -> Prompt:
    """The prompt of one data row of `task` in `style` (see the module docstring)."""
    check_style(task, style)
    return STYLE_PROMPTS[style][task](row)


def training_text(task: str, row: Row) -> tuple[str, str]:
    """(context, target) for fine-tuning on a row: train the loss on `target` only.

    Label tasks: the prompt and its gold label word; multiple choice: the gold choice's
    context and continuation; lambada: ("", whole passage).
    """
    p = make_prompt(task, row)
    if isinstance(p, LabelPrompt):
        return p.prompt, p.label_words[p.label]
    if isinstance(p, ChoicePrompt):
        return p.contexts[p.label], p.continuations[p.label]
    return "", p.text
