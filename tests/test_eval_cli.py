"""`coalora eval` end to end on a tiny saved Llama, and its bad-input errors (exit 2)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from coalora.cli import main
from coalora.results import read_records
from conftest import make_tiny_llama
from test_eval import VOCAB, make_byte_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-eval")
    make_tiny_llama(vocab_size=VOCAB, seed=1).save_pretrained(path)
    make_byte_tokenizer().save_pretrained(path)
    return str(path)


def run_cli(capsys, *argv):
    code = main(["eval", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_prints_json_and_appends_a_record(tiny_dir, tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    code, out, _ = run_cli(capsys, "--model", tiny_dir, "--config", "nf4", "--task", "sst2", "--limit", "20",
                           "--dtype", "fp32", "--records", str(records), "--json")
    assert code == 0
    d = json.loads(out)
    assert {"task", "metric", "value", "stderr", "n", "avg_bits", "seconds", "split_hash"} <= set(d)
    assert d["task"] == "sst2" and d["metric"] == "accuracy" and d["n"] == 20 and 0 <= d["value"] <= 1
    assert d["avg_bits"] == pytest.approx(4.127, abs=1e-3) and d["method"] == "base"
    (rec,) = read_records(records)
    assert rec.value == d["value"] and rec.config["default"]["bits"] == 4 and rec.split["n"] == 20
    # Unquantized: no configuration, no bits; the human-readable form.
    code, out, _ = run_cli(capsys, "--model", tiny_dir, "--task", "copa", "--full", "--dtype", "fp32",
                           "--records", str(records))
    assert code == 0 and "as loaded" in out and "copa / test" in out
    assert [r.avg_bits for r in read_records(records)] == [pytest.approx(4.127, abs=1e-3), None]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "mnli"], "unknown task 'mnli'; known tasks are sst2, boolq"),
        (["--limit", "0"], "limit must be an integer in 1..262"),
        (["--task", "copa", "--limit", "31"], "limit must be an integer in 1..30"),
        (["--full", "--limit", "5"], "--limit and --full exclude each other"),
        (["--config", "nf5"], "unknown preset 'nf5'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_dir, capsys, argv, message):
    code, out, err = run_cli(capsys, "--model", tiny_dir, "--no-record", *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_configuration_for_another_model_is_refused(tiny_dir, tmp_path, capsys):
    from coalora.space import ConfigSpace

    other = ConfigSpace.from_model(make_tiny_llama(hidden=32), "other-model").preset("nf3")
    path = other.save(tmp_path / "other.json")
    code, _, err = run_cli(capsys, "--model", tiny_dir, "--config", str(path), "--no-record")
    assert code == 2 and "made for model 'other-model'" in err


def test_missing_checkpoint_and_config_none_with_checkpoint(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", tiny_dir, "--checkpoint", str(tmp_path / "nope"), "--config", "nf4", "--no-record")
    assert code == 2 and "nope" in err
    code, _, err = run_cli(capsys, "--model", tiny_dir, "--checkpoint", str(tmp_path), "--no-record")
    assert code == 2 and "--config none cannot be used with --checkpoint" in err


@pytest.mark.skipif(importlib.util.find_spec("coalora.lora") is None, reason="coalora.lora not built")
def test_fresh_checkpoint_scores_like_the_quantized_base(tiny_dir, tmp_path, capsys):
    """A just-initialised adapter has B = 0, so it must score exactly as the base."""
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    base, _ = load_model(tiny_dir, quiet=True)
    wrapped = CoaLoraModel(base, ConfigSpace.from_model(base, tiny_dir), LoraSpec(rank=4, alpha=8.0, theta_hidden=16))
    ckpt = save_checkpoint(wrapped, tmp_path / "ckpt", metadata={"training": {"method": "coalora"}})
    common = ["--model", tiny_dir, "--config", "nf3", "--task", "piqa", "--limit", "16", "--dtype", "fp32", "--json", "--no-record"]
    code, out, _ = run_cli(capsys, *common, "--checkpoint", str(ckpt))
    assert code == 0
    adapted = json.loads(out)
    code, out, _ = run_cli(capsys, *common)
    plain = json.loads(out)
    assert adapted["method"] == "coalora" and adapted["checkpoint"].startswith("ckpt@sha256:")
    assert str(tmp_path) not in out  # results name a checkpoint by name and sha256, never by a server path
    assert adapted["value"] == plain["value"] and adapted["split_hash"] == plain["split_hash"]


def test_a_checkpoint_is_scored_on_its_own_task_by_default(tiny_dir, tmp_path, capsys):
    """Without --task, `coalora eval --checkpoint C` scores C's training task (the lm checkpoint:
    lambada in bits per byte), not SST-2; --task still overrides it."""
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    base, _ = load_model(tiny_dir, quiet=True)
    wrapped = CoaLoraModel(base, ConfigSpace.from_model(base, tiny_dir), LoraSpec(rank=4, alpha=8.0, theta_hidden=16))
    ckpt = save_checkpoint(wrapped, tmp_path / "ckpt", metadata={"training": {"method": "coalora", "task": "lambada",
                                                                              "recipe": "lm"}})
    common = ["--model", tiny_dir, "--checkpoint", str(ckpt), "--config", "nf4", "--limit", "4", "--dtype", "fp32",
              "--json", "--no-record"]
    code, out, _ = run_cli(capsys, *common)
    assert code == 0 and json.loads(out)["task"] == "lambada" and json.loads(out)["metric"] == "bits_per_byte"
    code, out, _ = run_cli(capsys, *common, "--task", "sst2")
    assert code == 0 and json.loads(out)["task"] == "sst2"
