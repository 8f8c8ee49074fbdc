"""save_checkpoint / load_checkpoint: round trip and every refusal."""

from __future__ import annotations

from pathlib import Path
import json

import pytest
import torch

from coalora.errors import CheckpointError, CoaloraError, ConfigError, ModelMismatchError, OutputExistsError
from coalora.lora import CoaLoraLinear, CoaLoraModel, LoraSpec, load_checkpoint, save_checkpoint
from coalora.lora.checkpoint import CHECKPOINT_FORMAT, DEFAULT_CHECKPOINT, resolve_checkpoint
from coalora.models import load_model
from coalora.space import ConfigSpace
from conftest import make_tiny_llama, save_tiny_model_dir

X = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))


def trained_model(model_dir, spec=None) -> CoaLoraModel:
    """A CoaLoraModel on the saved tiny base with non-trivial B and θ (as if trained)."""
    base, _ = load_model(str(model_dir), quiet=True)
    cm = CoaLoraModel(base, ConfigSpace.from_model(base, str(model_dir)), spec or LoraSpec(rank=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in cm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return cm


@pytest.fixture
def saved(tmp_path, tiny_model_dir):
    cm = trained_model(tiny_model_dir)
    path = save_checkpoint(cm, tmp_path / "ckpt", {"recipe": {"lr": 1e-4}, "data_split": {"train": "abc"}, "seed": 3})
    return cm, path


def test_round_trip_gives_identical_outputs(saved):
    cm, path = saved
    config = cm.space.sample(1, seed=4)[0]
    cm.set_configuration(config)
    ref = cm(input_ids=X).logits
    loaded, tok, meta = load_checkpoint(path)
    assert tok is not None and tok("t1 t2")["input_ids"] == [1, 2]
    loaded.set_configuration(loaded.space.decode(config.encode()))
    assert torch.equal(loaded(input_ids=X).logits, ref)
    assert loaded.spec == cm.spec


def test_metadata_records_what_the_checkpoint_needs(saved):
    cm, path = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["format"] == CHECKPOINT_FORMAT
    assert meta["base_model"]["name"] == cm.space.model_name
    assert meta["base_model"]["fingerprint"] == cm.space.fingerprint
    assert meta["lora"]["rank"] == 4 and meta["lora"]["alpha"] == 32.0 and meta["lora"]["dropout"] == 0.0
    assert meta["theta"]["hidden"] == 128 and meta["theta"]["embedding"] == 8
    assert meta["space"]["n_matrices"] == cm.space.n_matrices and meta["space"]["n_blocks"] == 2
    assert meta["recipe"] == {"lr": 1e-4} and meta["data_split"] == {"train": "abc"} and meta["seed"] == 3
    assert meta["code_version"].startswith("0.")
    assert sorted(p.name for p in path.iterdir()) == ["adapter.safetensors", "checkpoint.json"]


def test_load_onto_a_given_model(saved, tiny_model_dir):
    cm, path = saved
    base, _ = load_model(str(tiny_model_dir), quiet=True)
    loaded, tok, _ = load_checkpoint(path, model=base)
    assert tok is None and loaded.model is base
    for (n, p), (m, q) in zip(cm.named_trainable_parameters(), loaded.named_trainable_parameters()):
        assert n == m and torch.equal(p, q)


def test_plain_lora_checkpoint_round_trips(tmp_path, tiny_model_dir):
    cm = trained_model(tiny_model_dir, LoraSpec(rank=2, use_theta=False))
    path = save_checkpoint(cm, tmp_path / "plain", {})
    loaded, _, meta = load_checkpoint(path)
    assert loaded.theta is None and meta["theta"] is None


def test_bf16_load(saved):
    _, path = saved
    loaded, _, _ = load_checkpoint(path, dtype=torch.bfloat16)  # same weights fingerprint in bf16
    loaded.set_configuration(loaded.space.preset("nf4"))
    assert loaded(input_ids=X).logits.dtype == torch.bfloat16


def test_tensor_file_is_safetensors_not_pickle(saved):
    _, path = saved
    assert (path / "adapter.safetensors").read_bytes()[8:9] == b"{"  # safetensors: u64 header size, then JSON


def test_default_resolves_to_the_assets_folder():
    assert resolve_checkpoint("default") == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.parts[-3:] == ("assets", "checkpoints", "default")


# ---- refusals ------------------------------------------------------------------------------
def test_missing_folder_and_files(tmp_path, saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.json is missing"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(path / "checkpoint.json")
    (path / "adapter.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete: adapter.safetensors is missing"):
        load_checkpoint(path)


def _edit_meta(path, **changes):
    meta = json.loads((path / "checkpoint.json").read_text())
    meta.update(changes)
    (path / "checkpoint.json").write_text(json.dumps(meta))


def test_unknown_format_and_bad_json(saved):
    _, path = saved
    _edit_meta(path, format="coalora.checkpoint/v99")
    with pytest.raises(CheckpointError, match="unknown metadata format 'coalora.checkpoint/v99'"):
        load_checkpoint(path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_pickle_or_garbage_instead_of_safetensors_is_refused(saved):
    _, path = saved
    meta = json.loads((path / "checkpoint.json").read_text())
    torch.save({"x": torch.zeros(2)}, path / "adapter.safetensors")  # a pickle in disguise
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)
    meta["tensors"]["file"] = "adapter.bin"
    (path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="must be a '.safetensors' file name"):
        load_checkpoint(path)


def test_altered_tensor_file_is_refused(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = saved
    t = load_file(str(path / "adapter.safetensors"))
    t["theta.gamma"] = t["theta.gamma"] + 1
    save_file(t, str(path / "adapter.safetensors"))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(path)


def test_mismatched_base_models_are_refused_and_left_unwrapped(saved):
    _, path = saved
    other = make_tiny_llama(n_layers=3)
    with pytest.raises(ModelMismatchError, match="projection names or shapes differ"):
        load_checkpoint(path, model=other)
    same_shape = make_tiny_llama(seed=1)  # same architecture, other weights
    before = same_shape.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(ModelMismatchError, match="other weights"):
        load_checkpoint(path, model=same_shape)
    assert not any(isinstance(m, CoaLoraLinear) for m in same_shape.modules())
    assert torch.equal(same_shape.model.layers[0].self_attn.q_proj.weight, before)


def test_tensors_that_do_not_fit_are_refused(tmp_path, tiny_model_dir):
    cm = trained_model(tiny_model_dir, LoraSpec(rank=4))
    path = save_checkpoint(cm, tmp_path / "ck", {})
    _edit_meta(path, lora={**cm.spec.to_dict(), "rank": 2})  # metadata says rank 2, tensors are rank 4
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(path)
    _edit_meta(path, lora={**cm.spec.to_dict(), "use_theta": False})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(path)
    _edit_meta(path, lora={**cm.spec.to_dict(), "rank": 0})
    with pytest.raises(CheckpointError, match="'rank' has value 0"):
        load_checkpoint(path)


def test_save_refusals(tmp_path, saved):
    cm, path = saved
    with pytest.raises(ConfigError, match="'format'.* reserved"):
        save_checkpoint(cm, tmp_path / "x", {"format": "mine"})
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        save_checkpoint(cm, tmp_path / "y", {"recipe": object()})
    assert not (tmp_path / "y").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".y.")]  # no temp folder left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="not a coalora checkpoint"):
        save_checkpoint(cm, other, {})
    assert (other / "mine.txt").read_text() == "keep"
    save_checkpoint(cm, path, {"seed": 9})  # an existing checkpoint is replaced
    assert json.loads((path / "checkpoint.json").read_text())["seed"] == 9


def test_errors_are_coalora_errors():
    assert issubclass(CheckpointError, CoaloraError) and issubclass(OutputExistsError, CoaloraError)


def test_load_weights_into_an_existing_model(saved, tiny_model_dir):
    from coalora.lora import load_weights

    cm, path = saved
    fresh = trained_model(tiny_model_dir)  # other random values
    with torch.no_grad():
        for p in fresh.trainable_parameters():
            p.zero_()
    meta = load_weights(fresh, path)
    assert meta["seed"] == 3
    for (_, p), (_, q) in zip(cm.named_trainable_parameters(), fresh.named_trainable_parameters()):
        assert torch.equal(p, q)
    other = make_tiny_llama(n_layers=3)
    with pytest.raises(ModelMismatchError, match="trained on"):
        load_weights(CoaLoraModel(other, ConfigSpace.from_model(other, "other"), LoraSpec(rank=4)), path)



def test_checkpoint_files_get_plain_permissions(saved):
    """Every file of a saved checkpoint has the mode a plain open() gives under the umask
    (safetensors and mkstemp alone would leave owner-only files)."""
    import os

    from coalora.io import plain_mode

    _, path = saved
    files = list(path.iterdir())
    assert {f.name for f in files} >= {"adapter.safetensors", "checkpoint.json"}
    for f in files:
        assert os.stat(f).st_mode & 0o777 == plain_mode(), f.name


def test_a_checkpoint_saved_before_the_target_inputs_loads_with_the_nf_inputs(tmp_path, tiny_model_dir):
    """A checkpoint whose metadata lacks lora.theta_inputs (saved before θ embedded the
    target formats) gets θ's 7 NF-k inputs back, and computes what it computed then; a
    target configuration reaches it through its NF-k proxy only."""
    cm = trained_model(tiny_model_dir, LoraSpec(rank=4, theta_inputs="nf"))
    assert cm.theta.n_inputs == 7
    path = save_checkpoint(cm, tmp_path / "old")
    meta = json.loads((path / "checkpoint.json").read_text())
    del meta["lora"]["theta_inputs"]  # as an older coalora wrote it
    (path / "checkpoint.json").write_text(json.dumps(meta))
    loaded, _, _ = load_checkpoint(path)
    assert loaded.spec.theta_inputs == "nf" and loaded.theta.n_inputs == 7
    config = cm.space.sample(1, seed=5)[0]
    with torch.no_grad():
        assert torch.equal(loaded.compute_U(loaded.space.decode(config.encode())), cm.compute_U(config))
        nf4, fp4 = (loaded.space.target_configuration("bnb", f) for f in ("nf4", "fp4"))
        assert torch.equal(loaded.compute_U(nf4), loaded.compute_U(fp4))  # same proxy, nothing else seen
    new = trained_model(tiny_model_dir)
    assert new.spec.theta_inputs == "targets" and new.theta.n_inputs == 9


def test_a_shipped_checkpoint_is_found_by_its_name(tmp_path, monkeypatch):
    """`--checkpoint lm` is assets/checkpoints/lm, unless a path named lm exists where the
    command runs (a user's own folder wins); other names stay paths."""
    from coalora.lora.checkpoint import DEFAULT_CHECKPOINT, resolve_checkpoint

    shipped = DEFAULT_CHECKPOINT.parent / "lm"
    assert (shipped / "checkpoint.json").is_file()  # shipped with the repository
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("lm") == shipped and resolve_checkpoint("default") == DEFAULT_CHECKPOINT
    assert resolve_checkpoint("runs/lm") == Path("runs/lm") and resolve_checkpoint("nope") == Path("nope")
    (tmp_path / "lm").mkdir()
    assert resolve_checkpoint("lm") == Path("lm")
