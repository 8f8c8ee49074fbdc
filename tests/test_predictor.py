"""The app's Predictor: which pools it accepts (one measure, one checkpoint), P(on front)."""

from __future__ import annotations

import json

import pytest

from coalora.search.loop import Pool
from coalora.search.predictor import Predictor

ROWS, CKPT = "rows-a", "tiny@sha256:0123456789abcdef"


def synthetic(configs):
    return [1.0 / c.avg_bits for c in configs]  # error falls with bits


def pool_file(space, tmp_path, **meta):
    configs = space.sample(6, seed=0) + [space.preset("nf2"), space.preset("nf4")]
    pool = Pool(space)
    pool.add(configs, synthetic(configs))
    stamp = {"split_hash": ROWS, "checkpoint_sha256": "0123456789abcdef" + "0" * 48}
    return pool.save(tmp_path / "pool.json", {**stamp, **meta}), configs


def records_file(space, tmp_path, split_hash=ROWS, checkpoint=CKPT):
    configs = space.sample(4, seed=1)
    lines = [json.dumps({"task": "sst2", "metric": "accuracy", "value": 1 - v, "config": c.to_dict(),
                         "split_hash": split_hash, "checkpoint": checkpoint})
             for c, v in zip(configs, synthetic(configs))]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow  # fits a GP
def test_a_matching_pool_is_used_and_gives_probabilities(tiny_space, tmp_path):
    path, configs = pool_file(tiny_space, tmp_path)
    p = Predictor(tiny_space, "sst2", None, path, split_hash=ROWS, checkpoint=CKPT)
    assert p.surrogate() is not None and p.observed == {c.hash for c in configs}
    mean, std = p.predict(tiny_space.preset("nf3"))
    assert 0.0 < mean < 1.0 and std > 0
    probs = p.prob_on_front([tiny_space.preset("min"), tiny_space.preset("nf4")])
    assert probs[0] == 1.0 and 0.0 <= probs[1] <= 1.0  # nothing is cheaper than "min"
    # the best measured configuration within a size: lowest f1 among those that fit, as accuracy
    fit = [c for c in configs if c.avg_bits <= 4.2]
    best, value, n = p.best_measured(lambda c: c.avg_bits <= 4.2)
    assert n == len(fit) and best == min(fit, key=lambda c: synthetic([c])[0])
    assert value == pytest.approx(1 - synthetic([best])[0])
    assert p.best_measured(lambda c: False) is None
    # the pool is read once per file version: a rewritten pool (here: of other rows) is checked again
    import os

    pool_file(tiny_space, tmp_path, split_hash="rows-b")
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse-clock filesystem
    p._dirty.set()
    p.refit(wait=True)
    assert "measured on rows 'rows-b'" in p.notices[-1] and p.surrogate() is not None  # the previous GP is kept


@pytest.mark.parametrize("meta, words", [
    ({"split_hash": "rows-b"}, "measured on rows 'rows-b'; the quick eval uses rows 'rows-a'"),
    ({"checkpoint_sha256": "f" * 64}, "checkpoint sha256 ffffffffffffffff; this app runs tiny@sha256:0123456789abcdef"),
])
def test_a_pool_of_other_rows_or_another_checkpoint_is_refused(tiny_space, tmp_path, meta, words):
    path, _ = pool_file(tiny_space, tmp_path, **meta)
    p = Predictor(tiny_space, "sst2", None, path, split_hash=ROWS, checkpoint=CKPT)
    assert p.surrogate() is None and p.prob_on_front([tiny_space.preset("nf4")]) is None
    assert words in p.notices[-1] and "\n" not in p.notices[-1]


@pytest.mark.parametrize("kw, words", [({"split_hash": "rows-b"}, "measured on rows 'rows-b'"),
                                       ({"checkpoint": "tiny@sha256:ffffffffffffffff"}, "checkpoint sha256 ffff")])
def test_records_of_other_rows_or_checkpoints_are_refused(tiny_space, tmp_path, kw, words):
    p = Predictor(tiny_space, "sst2", None, records_file(tiny_space, tmp_path, **kw), split_hash=ROWS, checkpoint=CKPT)
    assert p.surrogate() is None and words in p.notices[-1]


@pytest.mark.slow  # fits a GP
def test_target_configurations_stay_out_of_the_gp(tiny_space, tmp_path):
    """A bnb/gguf configuration enters θ only as an approximate NF-k proxy: the GP (which
    models the NF-k space) neither learns from nor predicts it."""
    from coalora.search.loop import pool_from_records

    path = records_file(tiny_space, tmp_path)
    target = tiny_space.load("bnb:nf4")
    row = {"task": "sst2", "metric": "accuracy", "value": 0.9, "config": target.to_dict(),
           "split_hash": ROWS, "checkpoint": CKPT}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    pool = pool_from_records(path, tiny_space, "sst2")
    assert len(pool) == 4 and target not in pool
    p = Predictor(tiny_space, "sst2", None, path, split_hash=ROWS, checkpoint=CKPT)
    assert p.predict(tiny_space.preset("nf4")) is not None and len(p.observed) == 4
    assert p.predict(target) is None and p.prob_on_front([target]) is None


def test_a_front_of_another_task_is_refused_with_a_notice(tiny_space, tmp_path):
    """A checkpoint's front on SST-2 accuracy must not be drawn for an lm checkpoint's bits per byte."""
    from coalora.search.front import FrontPoint, PredictedFront

    pts = (FrontPoint(3.2, tiny_space.preset("nf3"), 0.3, 0.02),)
    path = PredictedFront(pts, tiny_space, meta={"metric": "accuracy", "task": "sst2"}).save(tmp_path / "front.json")
    p = Predictor(tiny_space, "lambada", path, None)
    assert p.front is None and p.metric == "bits_per_byte"  # what f1 encodes on lambada, front or not
    assert any("fitted on task 'sst2', not 'lambada'" in n for n in p.notices)
    assert Predictor(tiny_space, "sst2", path, None).front is not None


@pytest.mark.slow  # fits a GP
def test_a_background_refit_waits_until_the_model_is_quiet(tiny_space, tmp_path, monkeypatch):
    """A refit beside an evaluation slowed the next slider move (its CPU): observe() refits only
    once busy() has been False for REFIT_GRACE_S, and one waiting thread takes every observation."""
    import threading
    import time

    import coalora.search.predictor as P
    from coalora.results import ResultRecord

    monkeypatch.setattr(P, "REFIT_GRACE_S", 0.2)
    path, _ = pool_file(tiny_space, tmp_path)
    p = Predictor(tiny_space, "sst2", None, path, tmp_path / "obs.jsonl", split_hash=ROWS, checkpoint=CKPT)
    p.surrogate()
    busy = threading.Event()
    busy.set()
    p.busy = busy.is_set
    for c in tiny_space.sample(3, seed=5):
        rec = ResultRecord(task="sst2", metric="accuracy", value=0.7, stderr=0.05, n=8, model=tiny_space.model_name,
                           checkpoint=CKPT, config=c.to_dict(), config_hash=c.hash, split_hash=ROWS, extra={"done": True})
        assert p.observe(rec)
    assert [t.name for t in threading.enumerate()].count("coalora-gp-refit") == 1
    time.sleep(0.6)
    assert p.refits == 0  # still evaluating: no refit yet
    busy.clear()
    deadline = time.monotonic() + 30
    while p.refits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.refits == 1 and len(p.observed) == 8 + 3  # one refit took all three observations


EXIT_DURING_REFIT = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import coalora.search.gp as gp
import coalora.search.predictor as P
from coalora.results import ResultRecord
from coalora.space import ConfigSpace
from conftest import make_tiny_llama
from test_predictor import CKPT, ROWS, pool_file

space = ConfigSpace.from_model(make_tiny_llama(), "tiny-llama")
tmp = Path(sys.argv[2])
path, _ = pool_file(space, tmp)
p = P.Predictor(space, "sst2", None, path, tmp / "obs.jsonl", split_hash=ROWS, checkpoint=CKPT)
p.surrogate()
fitting, fit = threading.Event(), gp.fit_surrogate
gp.fit_surrogate = lambda *a, **k: (fitting.set(), fit(*a, **k))[1]
c = space.sample(1, seed=5)[0]
assert p.observe(ResultRecord(task="sst2", metric="accuracy", value=0.7, stderr=0.05, n=8, model=space.model_name,
                              checkpoint=CKPT, config=c.to_dict(), config_hash=c.hash, split_hash=ROWS,
                              extra={"done": True}))
assert fitting.wait(60)
print("exiting mid-refit", flush=True)
"""


@pytest.mark.slow  # a subprocess fits a GP
def test_the_process_exits_cleanly_while_a_background_refit_runs(tmp_path):
    """A daemon refit thread still inside torch when the interpreter finalized aborted the whole
    process ("terminate called without an active exception", exit 134; it failed a CI run after
    every test had passed): the refit thread is joined at exit instead."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", EXIT_DURING_REFIT, str(tests), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tests.parent)
    assert out.returncode == 0 and "exiting mid-refit" in out.stdout, (out.returncode, out.stderr[-2000:])
    assert "terminate called" not in out.stderr
