"""`coalora predict` (GP prediction from a checkpoint's pool) and `coalora eval --quick/--report`
on a tiny checkpoint; their refusals are one line with exit 2 (issue 12)."""

from __future__ import annotations

import json

import pytest
import torch

from coalora.cli import main
from conftest import make_tiny_llama, save_tiny_checkpoint
from test_eval import VOCAB

pytestmark = pytest.mark.slow  # GP fits and search runs on tiny models: `make test`, not `make test-fast`


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, base folder, space, pool path) with a 12-point pool on the quick-eval rows."""
    from coalora.eval.harness import quick_split
    from coalora.lora import read_metadata
    from coalora.search.loop import Pool
    from coalora.search.objective import describe

    root = tmp_path_factory.mktemp("tiny-predict")
    folder, base_dir, space = save_tiny_checkpoint(root, perturb=False)
    _, m = read_metadata(folder)
    configs = space.sample(8, seed=0) + [space.preset(n) for n in ("nf2", "nf3", "nf4", "nf8")]
    values = [0.5 * torch.exp(-torch.tensor(c.avg_bits - 2.0)).item() + 0.1 for c in configs]  # error falls with bits
    pool = Pool(space)
    pool.add(configs, values)
    header = {"checkpoint": str(folder), "checkpoint_sha256": m["tensors"]["sha256"],
              **describe(quick_split("sst2"), "error")}
    pool_path = pool.save(root / "pool.json", header)
    return folder, base_dir, space, pool_path, header


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_json(tiny, capsys):
    from coalora.eval.harness import QUICK_ROWS, quick_split

    folder, _, space, pool_path, _ = tiny
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(folder), "--config", "nf3", "--pool", str(pool_path), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert {"mean", "std", "metric", "rows", "split_hash", "n_observations"} <= set(d)
    split = quick_split("sst2")
    assert d["metric"] == "accuracy" and d["rows"] == len(split) == min(QUICK_ROWS, 174)
    assert d["split_hash"] == split.manifest_hash and d["n_observations"] == 12
    assert 0.0 < d["mean"] < 1.0 and d["std"] >= 0.0
    # Higher bits predict higher accuracy on this monotone pool.
    code, out8, _ = run_cli(capsys, "predict", "--checkpoint", str(folder), "--config", "nf8", "--pool", str(pool_path), "--json")
    assert code == 0 and json.loads(out8)["mean"] > d["mean"]


def test_predict_serves_a_language_modelling_pool_in_bits_per_byte(tiny, tmp_path, capsys):
    from coalora.eval.harness import quick_split
    from coalora.search.loop import Pool
    from coalora.search.objective import describe

    folder, _, space, _, header = tiny
    configs = space.sample(8, seed=1) + [space.preset(n) for n in ("nf2", "nf3", "nf4", "nf8")]
    values = [1.2 + 2.0 * torch.exp(-torch.tensor(c.avg_bits - 2.0)).item() for c in configs]  # bpb falls with bits
    pool = Pool(space)
    pool.add(configs, values)
    path = pool.save(tmp_path / "lm_pool.json", {**header, **describe(quick_split("lambada"), "error")})
    argv = ["predict", "--checkpoint", str(folder), "--pool", str(path), "--task", "lambada", "--json"]
    code, out, err = run_cli(capsys, *argv, "--config", "nf2")
    assert code == 0, err
    low = json.loads(out)
    assert low["metric"] == "bits_per_byte" and low["task"] == "lambada" and low["mean"] > 1.2
    code, out, _ = run_cli(capsys, *argv, "--config", "nf8")
    assert code == 0 and json.loads(out)["mean"] < low["mean"]  # more bits, fewer bits per byte: not 1 - value


def test_predict_refusals(tiny, tmp_path, capsys):
    from coalora.space import ConfigSpace

    folder, _, space, pool_path, header = tiny
    base = ["predict", "--checkpoint", str(folder), "--json"]
    # A configuration of another model.
    other = ConfigSpace.from_model(make_tiny_llama(n_layers=3, vocab_size=VOCAB), "other-tiny")
    other.preset("nf4").save(tmp_path / "other.json")
    code, out, err = run_cli(capsys, *base, "--config", str(tmp_path / "other.json"), "--pool", str(pool_path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "other-tiny" in err
    # An unreadable pool.
    (tmp_path / "bad.json").write_text("{not json")
    code, out, err = run_cli(capsys, *base, "--config", "nf4", "--pool", str(tmp_path / "bad.json"))
    assert code == 2 and "not a readable JSON pool file" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, *base, "--config", "nf4", "--pool", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in err
    # A pool measured on other rows, or for another checkpoint.
    data = json.loads(pool_path.read_text())
    (tmp_path / "rows.json").write_text(json.dumps({**data, "split_hash": "0123456789ab", "dev_rows": 64}))
    code, out, err = run_cli(capsys, *base, "--config", "nf4", "--pool", str(tmp_path / "rows.json"))
    assert code == 2 and "split_hash '0123456789ab'" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "sha.json").write_text(json.dumps({**data, "checkpoint_sha256": "f" * 64}))
    code, out, err = run_cli(capsys, *base, "--config", "nf4", "--pool", str(tmp_path / "sha.json"))
    assert code == 2 and "sha256 'ffffffffffffffff'" in err


def test_eval_quick_and_report_roles(tiny, tmp_path, capsys):
    from coalora.data import load_split
    from coalora.eval.harness import quick_split
    from coalora.results import read_records

    folder, base_dir, *_ = tiny
    rec = tmp_path / "r.jsonl"
    common = ["eval", "--model", str(base_dir), "--checkpoint", str(folder), "--config", "nf4", "--dtype", "fp32",
              "--records", str(rec), "--json"]
    code, out, err = run_cli(capsys, *common, "--quick")
    assert code == 0, err
    d = json.loads(out)
    q = quick_split("sst2")
    assert d["n"] == len(q) and d["split_hash"] == q.manifest_hash and d["extra"]["role"] == "select"
    code, out, err = run_cli(capsys, *common, "--report")
    assert code == 0, err
    d = json.loads(out)
    test = load_split("sst2", "test", 0)
    assert d["n"] == len(test) and d["split_hash"] == test.manifest_hash and d["extra"]["role"] == "report"
    assert [r.extra["role"] for r in read_records(rec)] == ["select", "report"]
    for extra in (["--quick", "--limit", "5"], ["--quick", "--report"], ["--report", "--part", "dev"]):
        code, out, err = run_cli(capsys, *common, *extra)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_predict_without_a_named_task_uses_sst2_as_eval_and_the_app_do(tiny, tmp_path, capsys):
    """A checkpoint whose metadata names no training task: predict (like search, eval and the
    app) measures sst2 instead of refusing to run without --task."""
    import shutil

    from coalora.eval.harness import quick_split

    folder, _, _, pool_path, _ = tiny
    bare = shutil.copytree(folder, tmp_path / "no-task")
    meta = json.loads((bare / "checkpoint.json").read_text())
    meta.get("training", {}).pop("task", None)
    (bare / "checkpoint.json").write_text(json.dumps(meta))
    code, out, err = run_cli(capsys, "predict", "--checkpoint", str(bare), "--config", "nf3", "--pool", str(pool_path), "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["metric"] == "accuracy" and d["split_hash"] == quick_split("sst2").manifest_hash
