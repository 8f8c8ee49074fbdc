"""Evaluation harness on a tiny random Llama with a byte-level tokenizer built in code.

The fast scorers (padding, KV-cache sharing, batching) must equal the naive
one-forward-per-sequence computation; the streamed estimates must be honest.
"""

from __future__ import annotations

import math

import pytest
import torch

from coalora.data import load_split
from coalora.eval import binomial_stderr, full_eval, iter_eval, iter_quick_eval, quick_eval
from coalora.eval import harness, scoring
from coalora.eval.prompts import ChoicePrompt, LabelPrompt, TextPrompt, make_prompt
from conftest import make_tiny_llama

VOCAB = 260


def make_byte_tokenizer():
    """Byte-level BPE: every byte is a token, plus merges 'Ġp', 'Ġn', 'Ġy' so the label
    words ' positive' / ' negative' / ' yes' / ' no' start with distinct tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ġ", "p"), ("Ġ", "n"), ("Ġ", "y")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # 259
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def lm():
    return make_tiny_llama(vocab_size=VOCAB, seed=1), make_byte_tokenizer()


class Wrapper(torch.nn.Module):
    """An adapter-style wrapper whose forward(**kwargs) hides the HF signature."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        return self.inner(**kwargs)


def _rand_ids(g, n):
    return torch.randint(0, VOCAB, (n,), generator=g).tolist()


# ---- scoring primitives equal the naive computation -----------------------------------------
def test_shared_context_scoring_equals_naive(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(0)
    contexts = [_rand_ids(g, n) for n in (3, 9, 1, 6)]
    conts = [[_rand_ids(g, n) for n in ks] for ks in ((2, 5), (1, 3, 7, 2, 4), (4,), (6, 6, 1))]
    fast = scoring.shared_context_logprobs(model, contexts, conts)
    slow = scoring.naive_choice_logprobs(model, contexts, conts)
    assert [f.shape for f in fast] == [s.shape for s in slow]
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, atol=1e-4, rtol=1e-5)


def test_shared_context_scoring_through_a_wrapper(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(1)
    contexts = [_rand_ids(g, n) for n in (4, 2)]
    conts = [[_rand_ids(g, 3), _rand_ids(g, 5)], [_rand_ids(g, 2)]]
    direct = scoring.shared_context_logprobs(model, contexts, conts)
    wrapped = scoring.shared_context_logprobs(Wrapper(model), contexts, conts)
    for a, b in zip(direct, wrapped):
        torch.testing.assert_close(a, b)


def test_left_padded_last_token_equals_unpadded(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(2)
    seqs = [_rand_ids(g, n) for n in (1, 5, 12)]
    lp = scoring.last_token_logprobs(model, seqs)
    for i, s in enumerate(seqs):
        ref = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1], -1)
        torch.testing.assert_close(lp[i], ref, atol=1e-4, rtol=1e-5)


def test_sequence_nll_equals_unpadded(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(3)
    seqs = [_rand_ids(g, n) for n in (2, 7, 11)]
    nll, ntok = scoring.sequence_nll(model, seqs)
    for i, s in enumerate(seqs):
        ids = torch.tensor([s])
        ref = -torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
        torch.testing.assert_close(nll[i], ref, atol=1e-4, rtol=1e-5)
        assert int(ntok[i]) == len(s) - 1


def test_length_batches_cover_every_item_within_limits():
    lengths = [5, 1, 30, 7, 7, 2, 100, 3, 9, 12]
    batches = list(scoring.length_batches(lengths, batch_size=3, max_tokens=40))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest == sorted(longest)  # length-sorted


# ---- task scoring against a naive reference ---------------------------------------------------
def _naive_choice_accuracy(model, tok, task, rows):
    correct = []
    for r in rows:
        p = make_prompt(task, r)
        scores = []
        for c, x in zip(p.contexts, p.continuations):
            ids_c = tok(c)["input_ids"]
            ids_x = tok(x, add_special_tokens=False)["input_ids"]
            lp = scoring.naive_choice_logprobs(model, [ids_c], [[ids_x]])[0][0]
            scores.append(float(lp) / len(x.encode()))
        correct.append(float(max(range(len(scores)), key=scores.__getitem__) == p.label))
    return correct


@pytest.mark.parametrize("task", ["piqa", "winogrande", "arc_easy"])
def test_choice_task_scores_equal_naive(lm, task):
    model, tok = lm
    split = load_split(task, "test").head(12)
    est = full_eval_on(model, tok, split)
    assert est.metric == "accuracy" and est.n == 12
    assert list(est.scores) == _naive_choice_accuracy(model, tok, task, split.rows)


def full_eval_on(model, tok, split):
    return next(iter(iter_eval(model, tok, split, dtype="fp32", stream=False)))


def test_label_task_scores_equal_naive(lm):
    model, tok = lm
    split = load_split("sst2", "test").head(20)
    est = full_eval_on(model, tok, split)
    want = []
    for r in split.rows:
        p = make_prompt("sst2", r)
        assert isinstance(p, LabelPrompt)
        logits = model(input_ids=torch.tensor([tok(p.prompt)["input_ids"]])).logits[0, -1]
        ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in p.label_words]
        want.append(float(int(logits[ids].argmax()) == p.label))
    assert list(est.scores) == want
    assert est.value == pytest.approx(sum(want) / 20)
    assert est.stderr == pytest.approx(binomial_stderr(est.value, 20))


def test_lambada_bits_per_byte_equals_naive(lm):
    model, tok = lm
    split = load_split("lambada", "test").head(6)
    est = full_eval_on(model, tok, split)
    assert est.metric == "bits_per_byte"
    nll_total, nbytes, ntok = 0.0, 0, 0
    for r in split.rows:
        ids = torch.tensor([[tok.eos_token_id] + tok(r["text"])["input_ids"]])
        nll_total -= float(torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum())
        nbytes += len(r["text"].encode())
        ntok += ids.shape[1] - 1
    assert est.value == pytest.approx(nll_total / math.log(2) / nbytes, rel=1e-5)
    assert est.extra["perplexity"] == pytest.approx(math.exp(nll_total / ntok), rel=1e-5)
    assert est.extra["bytes"] == nbytes and est.stderr > 0


# ---- statistics ------------------------------------------------------------------------------
def test_binomial_stderr_formula():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert binomial_stderr(0.8, 400) == pytest.approx(0.02)
    assert binomial_stderr(1.0, 10) == 0.0


def test_ratio_stderr_reduces_to_stderr_of_mean_for_equal_denominators():
    x = [1.0, 4.0, 2.5, 3.0, 0.5]
    y = [2.0] * 5
    r = torch.tensor(x) / 2.0
    want = float(r.std(unbiased=True) / math.sqrt(5))
    assert harness.ratio_stderr(x, y) == pytest.approx(want, rel=1e-6)


def test_chunk_sizes_are_a_first_estimate_then_the_rest():
    assert harness.chunk_sizes(174) == [8, 166]  # the quick eval: first estimate, final
    assert harness.chunk_sizes(262) == [8, 254]
    assert harness.chunk_sizes(128, first=16) == [16, 112]
    assert harness.chunk_sizes(10) == [8, 2]
    assert harness.chunk_sizes(10, first=16) == [10]
    assert harness.chunk_sizes(1000) == [8, 256, 256, 256, 224]


# ---- streaming ---------------------------------------------------------------------------------
def test_streaming_yields_growing_n_and_ends_with_the_full_estimate(lm):
    model, tok = lm
    ests = list(iter_quick_eval(model, tok, "sst2", n=56, dtype="fp32"))
    assert [e.n for e in ests] == [8, 56]  # the first estimate, then the rest in one chunk
    assert [e.done for e in ests] == [False, True]
    assert all(e.seconds > 0 for e in ests)
    assert [e.seconds for e in ests] == sorted(e.seconds for e in ests)
    last = ests[-1]
    # The same rows scored in one globally sorted pass give the same result.
    whole = full_eval_on(model, tok, load_split("sst2", "test").head(56))
    assert last.value == pytest.approx(whole.value)
    # Each running estimate is the mean over a prefix of the seeded row order.
    for e in ests:
        assert e.value == pytest.approx(sum(last.scores[: e.n]) / e.n)
    assert quick_eval(model, tok, "sst2", n=56, dtype="fp32").value == pytest.approx(last.value)


def test_quick_eval_caps_n_at_the_part_size(lm):
    model, tok = lm
    est = quick_eval(model, tok, "copa", n=128, dtype="fp32")
    assert est.n == len(load_split("copa", "test")) == 30


def test_bf16_compute_runs_and_stays_close(lm):
    model, tok = lm
    split = load_split("piqa", "test").head(8)
    ests = list(iter_eval(model, tok, split, dtype="bf16", stream=False))
    assert ests[-1].dtype == "bf16"
    g = torch.Generator().manual_seed(4)
    ctx, conts = [_rand_ids(g, 6)], [[_rand_ids(g, 4), _rand_ids(g, 3)]]
    with scoring.compute_context("bf16", torch.device("cpu")):
        lo = scoring.shared_context_logprobs(model, ctx, conts)[0]
    hi = scoring.shared_context_logprobs(model, ctx, conts)[0]
    torch.testing.assert_close(lo, hi, atol=0.15, rtol=0.05)
    assert scoring.resolve_dtype("fp32", model) == "fp32"
    assert scoring.resolve_dtype("auto", model) == ("bf16" if scoring.cpu_has_bf16() else "fp32")


def test_full_eval_uses_every_row_of_the_part(lm):
    model, tok = lm
    est = full_eval(model, tok, "copa", dtype="fp32")
    assert est.n == 30 and est.done


def test_prompts_of_every_task_are_well_formed():
    from coalora.data import TASKS

    for task in TASKS:
        for r in load_split(task, "test").rows[:20]:
            p = make_prompt(task, r)
            if isinstance(p, LabelPrompt):
                assert 0 <= p.label < len(p.label_words) and all(w.startswith(" ") for w in p.label_words)
            elif isinstance(p, ChoicePrompt):
                assert 0 <= p.label < len(p.continuations) == len(p.contexts) >= 2
                assert p.shared_context == (task != "winogrande")
            else:
                assert isinstance(p, TextPrompt) and p.text


def test_eval_restores_the_callers_train_mode(lm):
    model, tok = lm
    model.train()
    try:
        quick_eval(model, tok, "copa", n=4, dtype="fp32")
        assert model.training
    finally:
        model.eval()


def _continuation_logprob(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context) straight from one forward pass's logits (float64 sum)."""
    ic = tok(context)["input_ids"]
    ix = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ic + ix])).logits[0, len(ic) - 1 : -1]
    return float(torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(ix)[:, None]).sum())


def _by_hand(model, tok, prompt: ChoicePrompt) -> tuple[float, float]:
    """(correct by log-likelihood per continuation byte, correct by the raw sum) of one question."""
    raw = [_continuation_logprob(model, tok, c, x) for c, x in zip(prompt.contexts, prompt.continuations)]
    norm = [r / len(x.encode()) for r, x in zip(raw, prompt.continuations)]
    return float(norm.index(max(norm)) == prompt.label), float(raw.index(max(raw)) == prompt.label)


def test_choice_scores_report_normalised_and_raw_correctness(lm):
    """acc_norm divides by continuation bytes, acc uses the raw sum: both equal a by-hand
    computation from the model's logits, including a question where they disagree."""
    model, tok = lm
    ctx = lambda: scoring.compute_context("fp32", torch.device("cpu"))  # noqa: E731
    same = [ChoicePrompt(("The sky is",) * 3, (" red", " tan", " six"), 0),
            ChoicePrompt(("Cats like",) * 2, (" milk", " rust"), 1)]
    got = harness._score_choice(model, tok, same, ctx)
    assert got == [_by_hand(model, tok, p) for p in same]
    assert all(norm == raw for norm, raw in got)  # equal byte lengths: the same argmax
    # " b" (2 bytes, log-likelihood -11.5 = -5.76 per byte) against a 27-byte continuation
    # (-151.0 = -5.59 per byte): the raw sum picks " b" (the label), per byte the other.
    mixed = [ChoicePrompt(("A",) * 2, (" b", " a much longer continuation"), 0)]
    assert _by_hand(model, tok, mixed[0]) == (0.0, 1.0)
    assert harness._score_choice(model, tok, mixed, ctx) == [(0.0, 1.0)]


def test_multiple_choice_estimate_carries_unnormalised_accuracy(lm):
    model, tok = lm
    est = quick_eval(model, tok, "piqa", n=12, dtype="fp32")
    assert est.metric == "accuracy" and est.n == 12
    rows = load_split("piqa", "test").head(12).rows  # quick_eval's rows: the seeded order's first 12
    hand = [_by_hand(model, tok, make_prompt("piqa", r)) for r in rows]
    k_norm, k_raw = sum(h[0] for h in hand), sum(h[1] for h in hand)
    assert list(est.scores) == [h[0] for h in hand]
    assert est.value == k_norm / 12 and est.extra["acc_unnormalized"] == k_raw / 12
    assert est.stderr == pytest.approx(math.sqrt(k_norm / 12 * (1 - k_norm / 12) / 12), rel=1e-12)


def test_label_accuracy_and_stderr_on_a_model_whose_predictions_are_known(lm):
    """A model that always prefers ' negative': accuracy = share of negative rows, stderr
    sqrt(p (1 - p) / n), all counted by hand from the labels."""
    _, tok = lm
    neg = tok(" negative", add_special_tokens=False)["input_ids"][0]

    class AlwaysNegative(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, **kwargs):
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[..., neg] = 5.0
            return type("Out", (), {"logits": logits})()

    split = load_split("sst2", "test").head(20)
    prompts = [make_prompt("sst2", r) for r in split.rows]
    neg_label = prompts[0].label_words.index(" negative")
    k = sum(p.label == neg_label for p in prompts)
    assert 0 < k < 20  # both labels occur in the first 20 rows
    est = full_eval_on(AlwaysNegative(), tok, split)
    assert est.value == k / 20
    assert est.stderr == pytest.approx(math.sqrt(k / 20 * (1 - k / 20) / 20), rel=1e-12)
    assert list(est.scores) == [float(p.label == neg_label) for p in prompts]


def test_continuation_logprob_in_row_chunks_equals_the_whole_batch(monkeypatch):
    """Chunking the fp32 log-probabilities over rows (memory) changes no float."""
    from coalora.eval import scoring

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(7, 13, 301, generator=g) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 301, (7, 13), generator=g)
    mask = (torch.rand(7, 13, generator=g) > 0.2).float()
    whole = scoring._continuation_logprob(logits, targets, mask)
    monkeypatch.setattr(scoring, "LOGPROB_CHUNK_ELEMENTS", 2 * 13 * 301)  # 2 rows a chunk: 4 chunks
    chunked = scoring._continuation_logprob(logits, targets, mask)
    assert chunked.shape == (7,) and torch.equal(chunked, whole)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(whole, (ref * mask).sum(-1), atol=1e-4)
