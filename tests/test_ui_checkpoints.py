"""Several checkpoints in one app (the checkpoint selector): engines sharing one model
(Engine.alongside, CoaLoraModel.use_adapter), each scoring exactly as when loaded alone."""

from __future__ import annotations

import threading

import gradio as gr
import pytest
import torch

from coalora.errors import CheckpointError, ModelMismatchError
from ui import handlers as h
from ui.state import SessionState
from ui_fixtures import make_tiny_engine, save_adapter_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(engine of checkpoint 'ckpt', engine of a second checkpoint 'other' (another adapter)
    alongside it, the second loaded alone, the tmp folder). Both on lambada: bits per byte is
    continuous, so two adapters never tie and 'the same result' means the same floats."""
    from coalora.models import load_model
    from coalora.space import ConfigSpace
    from ui.engine import Engine

    tmp = tmp_path_factory.mktemp("ui-pair")
    first = make_tiny_engine(tmp, n_rows=24, task="lambada", with_costs=False)
    base, _ = load_model(str(tmp / "tiny-base"), quiet=True)
    other = save_adapter_checkpoint(base, ConfigSpace.from_model(base, str(tmp / "tiny-base")), tmp / "other",
                                    seed=7, training={"task": "lambada", "recipe": "lm", "method": "coalora"})
    second = first.alongside(other)
    alone = Engine.load(str(other), str(tmp / "tiny-base"), front_path=None, baselines_path=None, pool_paths=(),
                        n_rows=24, dtype="fp32")
    return first, second, alone, tmp


@pytest.fixture(scope="module")
def sst2_other(pair):
    """A third checkpoint alongside, trained on another task (sst2): the selector's case."""
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    first, _, _, tmp = pair
    base, _ = load_model(str(tmp / "tiny-base"), quiet=True)
    path = save_adapter_checkpoint(base, ConfigSpace.from_model(base, str(tmp / "tiny-base")), tmp / "sst",
                                   seed=9, training={"task": "sst2", "recipe": "task", "method": "coalora"})
    return first.alongside(path)


def scores(engine, config):
    return [(r.n, r.value, r.stderr) for r in engine.evaluate(config)]


def test_alongside_shares_the_model_and_scores_as_if_loaded_alone(pair):
    first, second, alone, _ = pair
    assert second.model is first.model and second.lock is first.lock and second.turns is first.turns
    assert second.loaded.checkpoint.startswith("other@sha256:") and first.loaded.checkpoint.startswith("ckpt@")
    nf3, nf4 = first.preset("nf3"), first.preset("nf4")
    solo = scores(first, nf4)
    assert scores(alone, nf4)[-1] != solo[-1]  # the two adapters differ, so a missed swap would show
    # alternate adapters and configurations: every result equals the one computed alone
    assert scores(second, nf4) == scores(alone, nf4)
    assert scores(first, nf4) == solo
    assert scores(second, nf3) == scores(alone, nf3)
    assert scores(first, nf4) == solo
    assert first.evaluate_final(nf4).checkpoint == first.loaded.checkpoint
    assert second.evaluate_final(nf4).checkpoint == second.loaded.checkpoint


def test_alongside_evaluations_interleaved_in_threads_stay_exact(pair):
    first, second, alone, _ = pair
    nf3 = first.preset("nf3")
    want = {"first": scores(first, nf3), "second": scores(alone, nf3)}
    got: dict[str, list] = {}
    threads = [threading.Thread(target=lambda k=k, e=e: got.__setitem__(k, scores(e, nf3)))
               for k, e in (("first", first), ("second", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == want


def test_use_adapter_swaps_parameters_without_copying(pair):
    first, second, _, _ = pair
    model = first.model
    with first.lock:
        second._put_adapter()
        own = dict(model.named_trainable_parameters())
        assert all(own[n] is p for n, p in second.adapter.items())
        first._put_adapter()
        assert all(dict(model.named_trainable_parameters())[n] is p for n, p in first.adapter.items())
    bad = dict(first.adapter)
    bad.pop(next(iter(bad)))
    with pytest.raises(KeyError, match="adapter parameters differ"):
        model.use_adapter(bad)


def test_alongside_refuses_another_adapter_structure_or_base(pair):
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    first, _, _, tmp = pair
    base, _ = load_model(str(tmp / "tiny-base"), quiet=True)
    space = ConfigSpace.from_model(base, str(tmp / "tiny-base"))
    wide = save_adapter_checkpoint(base, space, tmp / "rank8", rank=8)
    with pytest.raises(CheckpointError, match=r"another adapter structure .*rank 8 vs 4"):
        first.alongside(wide)
    with torch.no_grad():
        next(p for n, p in base.named_parameters() if n.endswith("q_proj.weight")).add_(0.01)
    moved = save_adapter_checkpoint(base, space, tmp / "other-weights")
    with pytest.raises(ModelMismatchError, match="trained on other weights"):
        first.alongside(moved)


def test_select_checkpoint_shelves_each_checkpoints_points(pair, sst2_other):
    first, second = pair[0], sst2_other
    assert second.task == "sst2" and first.task == "lambada"  # each its own task: the checkpoint's
    engines = {"ckpt": first, "other": second}
    state = SessionState()
    assert h.engine_of(engines, state) is first
    run = h.per_session(engines, h.evaluate_stream)
    outs = list(run(state))
    assert outs and len(state.points) == 1 and state.points[0]["task"] == "lambada"
    out = h.select_checkpoint(engines, state, "other")
    assert out[0] is state and state.checkpoint == "other" and state.points == [] and state.current is None
    assert "SST2" in out[1] and "sst@sha256:" in out[1]  # the labels name the task and the checkpoint
    assert h.engine_of(engines, state) is second
    list(run(state))
    assert [p["task"] for p in state.points] == ["sst2"] and state.points[0]["checkpoint"] == second.loaded.checkpoint
    h.select_checkpoint(engines, state, "ckpt")
    assert [p["task"] for p in state.points] == ["lambada"]  # its points are back
    with pytest.raises(gr.Error, match=r"checkpoint 'nope' is not loaded in this app; loaded: ckpt, other"):
        h.select_checkpoint(engines, state, "nope")
    with pytest.raises(gr.Error, match=r"checkpoint 'nope' is not loaded"):
        h.api_engine(engines, "nope")
    assert h.api_engine(engines, "") is first and h.api_engine(engines, "other") is second
    labels = dict((name, label) for label, name in h.checkpoint_choices(engines))
    assert labels["ckpt"].startswith("ckpt: lambada (bits_per_byte;") and "sst2 (accuracy;" in labels["other"]


def test_a_checkpoint_switch_supersedes_the_running_evaluation(pair):
    first, second, _, _ = pair
    engines = {"ckpt": first, "other": second}
    state = SessionState()
    stream = h.per_session(engines, h.evaluate_stream)(state)
    next(stream)  # the first chunk of 'ckpt'
    h.select_checkpoint(engines, state, "other")
    assert list(stream) == []  # stopped at its next chunk boundary, the session untouched
    assert state.points == [] and state.checkpoint == "other"


def test_write_baselines_measures_each_task_and_keeps_other_records(pair, sst2_other, tmp_path, monkeypatch):
    """`app.py --write-baselines`: the base without adapter at nf2/3/4/8 once per task of the
    loaded checkpoints, merged into the file (records of other tasks stay)."""
    import dataclasses
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import app
    from coalora.lora import budget
    from coalora.results import iter_records, write_records

    first, second = pair[0], sst2_other
    old = dataclasses.replace(first.evaluate_final(first.preset("nf4"), adapter=False), task="piqa")
    path = write_records(tmp_path / "baselines.json", [old])
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setattr(app, "ensure_nodeps", lambda: False)
    monkeypatch.setattr(budget, "configure_allocator", lambda: None)
    monkeypatch.setattr(app, "load_engines", lambda env: {"ckpt": first, "other": second})
    app.main(["--write-baselines", str(path)])
    recs = list(iter_records(path))
    assert [r.task for r in recs] == ["piqa"] + ["lambada"] * 4 + ["sst2"] * 4
    assert {r.method for r in recs} == {"base"} and [r.config_path for r in recs[1:5]] == ["nf2", "nf3", "nf4", "nf8"]
    assert recs[1].metric == "bits_per_byte" and recs[5].metric == "accuracy"


@pytest.mark.real
def test_the_shipped_lm_checkpoint_runs_beside_the_default_and_lowers_bits_per_byte(tmp_path):
    """The two shipped checkpoints on one SmolLM2 (as the app loads them): the lm one scores
    LAMBADA in bits per byte, its own front is loaded, and its adapter lowers bits per byte
    against the quantized base (by ~0.15 on the test rows, docs/results.md; here 16 dev rows)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import app
    from ui.engine import Engine

    assert [p.name for p in app.shipped_checkpoints()] == ["default", "lm"]
    default = Engine.load("default", n_rows=16, baselines_path=None, observations=tmp_path / "obs.jsonl")
    lm = default.alongside("lm", observations=tmp_path / "obs.jsonl")
    assert lm.model is default.model and lm.task == "lambada" and default.task == "sst2"
    assert lm.predictor.front is not None and lm.predictor.metric == "bits_per_byte"
    assert lm.predictor.front.meta["task"] == "lambada" and not lm.notices
    nf4 = lm.preset("nf4")
    adapted, base = lm.evaluate_final(nf4), lm.evaluate_final(nf4, adapter=False)
    assert adapted.metric == "bits_per_byte" and adapted.extra["perplexity"] < base.extra["perplexity"]
    assert adapted.value < base.value - 0.05, (adapted.value, base.value)
    assert default.evaluate_final(default.preset("nf4")).metric == "accuracy"  # the default's adapter is back
