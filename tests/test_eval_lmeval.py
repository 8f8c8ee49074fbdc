"""lm-evaluation-harness parity (issue 17, item 4): prompt style "lm-eval".

The expected strings are lm-eval 0.4.13's task YAMLs (glue/sst2/default.yaml, piqa/piqa.yaml,
arc/arc_easy.yaml) written out by hand; the expected scores come from an independent,
naive re-implementation of lm-eval's loglikelihood path (api/model.py `_encode_pair`, one
unpadded forward per choice, api/task.py `process_results`, api/metrics.py `mean_stderr`).
"""

from __future__ import annotations

import math

import pytest
import torch

from coalora.cli import main
from coalora.data import load_rows, load_split
from coalora.errors import DataError
from coalora.eval import iter_eval
from coalora.eval.harness import _encode_pair, choice_correct, sample_stderr
from coalora.eval.prompts import ChoicePrompt, LabelPrompt, make_prompt
from conftest import make_tiny_llama
from test_eval import VOCAB, make_byte_tokenizer


@pytest.fixture(scope="module")
def lm():
    return make_tiny_llama(vocab_size=VOCAB, seed=1), make_byte_tokenizer()


# ---- prompts: the YAMLs' doc_to_text / doc_to_choice / doc_to_target, nothing stripped ----------
def test_lmeval_prompts_are_the_task_yamls_verbatim():
    sst2 = make_prompt("sst2", {"sentence": "a gem . ", "label": 1}, "lm-eval")
    assert sst2 == ChoicePrompt(
        ("a gem . \nQuestion: Is this sentence positive or negative?\nAnswer:",) * 2,
        (" negative", " positive"), 1, norm_lengths=(8, 8), joint_tokens=True)

    piqa = make_prompt("piqa", {"goal": " Dry a cup ", "sol1": "Use a towel.", "sol2": " Use sand", "label": 0}, "lm-eval")
    assert piqa.contexts == ("Question:  Dry a cup \nAnswer:",) * 2
    assert piqa.continuations == (" Use a towel.", "  Use sand") and piqa.label == 0
    assert piqa.norm_lengths == (12, 9)  # len(choice): characters, without the delimiter

    row = {"question": "Which is a gas?", "answerKey": "3",
           "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]}}
    for task in ("arc_easy", "arc_challenge"):
        arc = make_prompt(task, row, "lm-eval")
        assert arc.contexts == ("Question: Which is a gas?\nAnswer:",) * 3
        assert arc.continuations == (" rock", " steam", " ice") and arc.label == 2
        assert arc.norm_lengths == (4, 5, 3) and arc.shared_context


def test_lmeval_coalora_style_is_coaloras_text_unstripped():
    sst2 = make_prompt("sst2", {"sentence": "a gem . ", "label": 0}, "lm-eval-coalora")
    assert sst2 == ChoicePrompt(("Review: a gem . \nSentiment:",) * 2, (" negative", " positive"), 0,
                                norm_lengths=(8, 8), joint_tokens=True)
    # PIQA and ARC: coalora's texts are lm-eval's, so the two styles agree row for row.
    for task in ("piqa", "arc_easy", "arc_challenge"):
        for r in load_rows(task)[:20]:
            assert make_prompt(task, r, "lm-eval-coalora") == make_prompt(task, r, "lm-eval")


def test_packaged_rows_render_as_lm_eval_logged_them():
    # The first validation row of each file, as lm-eval 0.4.13 logged its request (arg_0)
    # with --log_samples on these same files (docs/results.md, "lm-evaluation-harness parity").
    sst2 = make_prompt("sst2", load_rows("sst2")[0], "lm-eval")
    assert sst2.contexts[0] == "it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?\nAnswer:"
    piqa = make_prompt("piqa", load_rows("piqa")[0], "lm-eval")
    assert piqa.contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    arc = make_prompt("arc_easy", load_rows("arc_easy")[0], "lm-eval")
    assert arc.contexts[0] == "Question: Which technology was developed most recently?\nAnswer:"
    assert arc.continuations == (" cellular telephone", " television", " refrigerator", " airplane") and arc.label == 0


def test_default_style_is_unchanged_and_bad_styles_are_refused():
    row = load_rows("sst2")[0]
    assert make_prompt("sst2", row) == make_prompt("sst2", row, "coalora")
    assert isinstance(make_prompt("sst2", row), LabelPrompt)
    assert make_prompt("sst2", row).prompt == "Review: it 's a charming and often affecting journey .\nSentiment:"
    with pytest.raises(DataError, match="no lm-eval prompts"):
        make_prompt("lambada", load_rows("lambada")[0], "lm-eval")
    with pytest.raises(DataError, match="unknown prompt style"):
        make_prompt("sst2", row, "helm")


def test_cli_refuses_a_task_without_lm_eval_prompts_before_loading_a_model(capsys):
    assert main(["eval", "--task", "lambada", "--prompts", "lm-eval", "--no-record"]) == 2
    assert "no lm-eval prompts" in capsys.readouterr().err


# ---- tokens: lm-eval's causal _encode_pair ----------------------------------------------------
def test_encode_pair_splits_the_joint_encoding_and_moves_trailing_space():
    tok = make_byte_tokenizer()
    ids = lambda s: tok(s)["input_ids"]  # noqa: E731
    ctx, cont = _encode_pair(tok, "Answer:", " positive")
    assert ctx == ids("Answer:") and ctx + cont == ids("Answer: positive")
    assert cont[0] == tok.convert_tokens_to_ids("Ġp")  # the merged " p" token
    # A trailing space of the context belongs to the continuation, as in lm-eval.
    assert _encode_pair(tok, "Answer: ", "positive") == (ctx, cont)
    assert _encode_pair(tok, "Answer:  ", "positive") == (ctx, ids("Answer:  positive")[len(ctx):])


# ---- metrics: acc, acc_norm by len(choice), stderr of a mean -----------------------------------
def test_acc_norm_divides_by_the_choices_character_length():
    raw = [-10.0, -24.0]  # choice 0 wins unnormalised
    lmeval = ChoicePrompt(("Q:",) * 2, (" ab", " abcdef"), 1, norm_lengths=(2, 6), joint_tokens=True)
    # by characters: -10/2 = -5.0 < -24/6 = -4.0, so choice 1 wins: acc_norm right, acc wrong
    assert choice_correct(raw, lmeval) == (1.0, 0.0)
    # coalora style divides by the continuation's bytes (with its space): -10/3 > -24/7
    coalora = ChoicePrompt(("Q:",) * 2, (" ab", " abcdef"), 1)
    assert choice_correct(raw, coalora) == (0.0, 0.0)
    # ties go to the first choice (numpy argmax)
    assert choice_correct([-6.0, -6.0], ChoicePrompt(("Q:",) * 2, (" a", " b"), 0, norm_lengths=(1, 1))) == (1.0, 1.0)


def test_sample_stderr_is_lm_evals_mean_stderr():
    assert sample_stderr([1, 0, 1, 1]) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # sqrt(p(1-p)/(n-1)) = 0.25
    assert sample_stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(sample_stderr([1.0]))


# ---- the estimate equals a naive re-implementation of lm-eval's path ------------------------------
YAML = {
    "sst2_review": lambda r: (f"Review: {r['sentence']}\nSentiment:", ["negative", "positive"], r["label"]),
    "sst2": lambda r: (f"{r['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                       ["negative", "positive"], r["label"]),
    "piqa": lambda r: (f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"]),
    "arc_easy": lambda r: (f"Question: {r['question']}\nAnswer:", r["choices"]["text"],
                           r["choices"]["label"].index(r["answerKey"])),
}


def _naive_lmeval(model, tok, context: str, choices: list[str]) -> list[float]:
    lls = []
    for choice in choices:
        cont = " " + choice
        n = len(context) - len(context.rstrip())
        c, x = (context[:-n], context[-n:] + cont) if n else (context, cont)
        whole, ctx = tok(c + x)["input_ids"], tok(c)["input_ids"]
        cont_ids = whole[len(ctx):]
        inp = torch.tensor([(ctx + cont_ids)[:-1]])
        logp = torch.log_softmax(model(input_ids=inp).logits[0].float(), -1)[len(ctx) - 1:]
        lls.append(float(logp.gather(-1, torch.tensor(cont_ids)[:, None]).sum()))
    return lls


@pytest.mark.parametrize("task, style", [("sst2", "lm-eval"), ("sst2", "lm-eval-coalora"), ("piqa", "lm-eval"),
                                         ("arc_easy", "lm-eval")])
def test_lmeval_estimate_equals_naive_lmeval_computation(lm, task, style):
    model, tok = lm
    split = load_split(task, "all").head(12)
    est = next(iter(iter_eval(model, tok, split, dtype="fp32", stream=False, prompts=style)))
    acc, acc_norm = [], []
    with torch.no_grad():
        for r in split.rows:
            context, choices, gold = YAML["sst2_review" if style == "lm-eval-coalora" else task](r)
            lls = _naive_lmeval(model, tok, context, choices)
            norm = [ll / len(c) for ll, c in zip(lls, choices)]
            acc.append(float(max(range(len(lls)), key=lls.__getitem__) == gold))
            acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == gold))
    assert est.metric == "acc" and est.n == 12 and est.extra["prompts"] == style
    assert list(est.scores) == acc
    assert est.value == pytest.approx(sum(acc) / 12)
    assert est.extra["acc_norm"] == pytest.approx(sum(acc_norm) / 12)
    p, q = est.value, est.extra["acc_norm"]
    assert est.stderr == pytest.approx(math.sqrt(p * (1 - p) / 11))
    assert est.extra["acc_norm_stderr"] == pytest.approx(math.sqrt(q * (1 - q) / 11))


@pytest.mark.real
@pytest.mark.parametrize("task", ["sst2", "piqa", "arc_easy"])
def test_real_model_fast_path_equals_naive_lmeval_path(real_model, task):
    # SmolLM2-135M, fp32: the batched, shared-context scorer gives lm-eval's per-choice
    # log-likelihoods (naive path above) to float rounding, so the picks are the same.
    from coalora.eval.harness import choice_loglikelihoods

    model, tok = real_model
    rows = load_split(task, "all").head(4).rows
    # One thread: on the shared 2-core machine two OpenMP threads spinning against other
    # jobs made this test 20x slower (11 s vs 0.5 s for the fast path, measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = choice_loglikelihoods(model, tok, [make_prompt(task, r, "lm-eval") for r in rows])
        with torch.no_grad():
            naive = [_naive_lmeval(model, tok, *YAML[task](r)[:2]) for r in rows]
    finally:
        torch.set_num_threads(threads)
    for f, n in zip(fast, naive):
        assert f == pytest.approx(n, abs=2e-3)
        assert max(range(len(f)), key=f.__getitem__) == max(range(len(n)), key=n.__getitem__)
