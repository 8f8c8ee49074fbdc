"""`coalora search` end to end on a tiny checkpoint (records, pool continued, front), and
its bad-input errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from coalora.cli import main
from coalora.results import read_records
from conftest import save_tiny_checkpoint

pytestmark = pytest.mark.slow  # GP fits and search runs on tiny models: `make test`, not `make test-fast`


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint with non-trivial B and θ and a 3-configuration training set on a tiny base."""
    folder, _, space = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-search"), ("nf3", "nf4", "nf8"))
    return folder, space


def run_cli(capsys, *argv):
    code = main(["search", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def common(tmp_path, ckpt, *extra):
    return ["--checkpoint", str(ckpt), "--dev-rows", "8", "--dtype", "fp32", "--records", str(tmp_path / "r.jsonl"),
            "--pool", str(tmp_path / "pool.json"), "--front", str(tmp_path / "front.json"), "--budgets", "3,5", "--starts", "1", "--steps", "2",
            "--mc-samples", "16", "--json", *extra]


def test_search_records_pool_and_front_then_continues(tiny_ckpt, tmp_path, capsys):
    from coalora.search.front import load_front
    from coalora.search.loop import Pool

    ckpt, space = tiny_ckpt
    code, out, err = run_cli(capsys, *common(tmp_path, ckpt, "--iterations", "1", "--batch", "2"))
    assert code == 0, err
    first = json.loads(out)
    pool = Pool.load(tmp_path / "pool.json", space)
    # Training set (3) + allocator configurations (distinct) + at most 2 proposals, all distinct.
    assert first["pool_size"] == len(pool) == first["evaluated"] == len(set(pool.configs))
    assert all(space.preset(n) in pool for n in ("nf3", "nf4", "nf8"))
    records = read_records(tmp_path / "r.jsonl")
    assert len(records) == len(pool)
    r = records[0]
    assert r.method == "coalora" and r.checkpoint.startswith("ckpt@sha256:") and r.metric == "accuracy" and r.n == 8
    assert r.extra["part"] == "dev" and r.split["part"] == "dev" and r.code_version
    # f1 = 1 - accuracy, and the pool holds exactly the recorded values.
    by_hash = {c.hash: v for c, v in zip(pool.configs, pool.values)}
    assert all(by_hash[x.config_hash] == pytest.approx(1 - x.value) == pytest.approx(x.extra["f1"]) for x in records)

    front = load_front(tmp_path / "front.json", space)
    assert front.points and front.meta["task"] == "sst2" and len(front.meta["observed"]) == len(pool)
    for p in front.points:
        assert p.avg_bits <= p.budget and p.std >= 0

    # A second call continues the pool: the old points stay, only new configurations are evaluated.
    code, out, err = run_cli(capsys, *common(tmp_path, ckpt, "--iterations", "1", "--batch", "2", "--seed", "1"))
    assert code == 0, err
    second = json.loads(out)
    pool2 = Pool.load(tmp_path / "pool.json", space)
    assert pool2.configs[: len(pool)] == pool.configs and len(pool2) == len(pool) + second["evaluated"]
    assert len(read_records(tmp_path / "r.jsonl")) == len(pool2)


def test_loss_objective(tiny_ckpt, tmp_path, capsys):
    ckpt, space = tiny_ckpt
    code, out, err = run_cli(capsys, *common(tmp_path, ckpt, "--iterations", "0", "--objective", "loss"))
    assert code == 0, err
    records = read_records(tmp_path / "r.jsonl")
    assert records and all(r.metric == "loss" and r.value > 0 and r.extra["f1"] == r.value for r in records)


def test_bad_inputs_exit_2(tiny_ckpt, tmp_path, capsys):
    ckpt, space = tiny_ckpt
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--task", "nope"))
    assert code == 2 and "nope" in err
    code, _, err = run_cli(capsys, *common(tmp_path, tmp_path / "missing"))
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--batch", "0"))
    assert code == 2 and "--batch" in err
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--budgets", "1.0"))
    assert code == 2 and "1" in err and "2.03" in err  # below the cheapest setting, named
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--dev-rows", "100000"))
    assert code == 2 and "limit must be" in err
    # A pool measured on another batch, or for another checkpoint, is never continued.
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--iterations", "0", "--no-initial"))
    assert code == 2 and "at least 2" in err  # nothing to fit a GP on
    (tmp_path / "pool.json").write_text(json.dumps({"format": "coalora.search_pool/v1", "checkpoint_sha256": "0" * 64,
                                                    "fingerprint": space.fingerprint, "points": []}))
    code, _, err = run_cli(capsys, *common(tmp_path, ckpt, "--iterations", "0"))
    assert code == 2 and "checkpoint (tensor sha256)" in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing was evaluated or recorded


def test_the_initial_pool_takes_only_the_nf_part_of_a_targets_aware_training_set(tiny_ckpt):
    """`coalora train --targets` puts bnb / gguf / torchao configurations into the training set;
    the NF-k search's pool, GP and front must not take them (they did: 20 of the lm
    checkpoint's first 38 pool points were target configurations)."""
    from coalora.cli.search import initial_configs

    _, space = tiny_ckpt
    nf3 = space.preset("nf3")
    gguf = space.target_configuration("gguf", "Q8_0")
    meta = {"training": {"train_set": [nf3.to_dict(), gguf.to_dict()]}}
    configs, source = initial_configs(space, meta, [3.0])
    assert nf3 in configs and all(c.target == "coalora" for c in configs)
    assert source.startswith("1 training-set (its 1 deployment-target configurations left out) + ")
