"""Evaluation harness: prompts (one place), batched scoring, quick/full eval with streaming.

Public API:
    iter_quick_eval(model, tokenizer, task, n=128, seed=0) -> Iterator[Estimate]
    quick_eval(...) -> Estimate;  full_eval(model, tokenizer, task, seed=0) -> Estimate
    iter_eval(model, tokenizer, split, ...)  (any coalora.data.Split)
"""

from coalora.eval.harness import (
    DEFAULT_N,
    Estimate,
    binomial_stderr,
    full_eval,
    iter_eval,
    iter_quick_eval,
    quick_eval,
)

__all__ = ["DEFAULT_N", "Estimate", "binomial_stderr", "full_eval", "iter_eval", "iter_quick_eval", "quick_eval"]
