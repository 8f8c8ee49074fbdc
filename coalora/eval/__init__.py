"""Evaluation harness: prompts (one place), batched scoring, quick/full eval with streaming.

Public API:
    iter_quick_eval(model, tokenizer, task, n=128, seed=0) -> Iterator[Estimate]
    quick_eval(...) -> Estimate;  full_eval(model, tokenizer, task, seed=0) -> Estimate
    iter_eval(model, tokenizer, split, ...)  (any coalora.data.Split)
    quick_split(task, seed=0) -> Split  (the quick-eval rows: dev part, QUICK_ROWS)
"""

from coalora.eval.harness import (
    DEFAULT_N,
    QUICK_ROWS,
    Estimate,
    binomial_stderr,
    full_eval,
    iter_eval,
    iter_quick_eval,
    quick_eval,
    quick_split,
)

__all__ = ["DEFAULT_N", "QUICK_ROWS", "quick_split", "Estimate", "binomial_stderr", "full_eval", "iter_eval", "iter_quick_eval", "quick_eval"]
