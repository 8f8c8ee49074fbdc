"""export_peft and `coalora export`: peft parity, determinism, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from coalora.cli import main
from coalora.errors import ModelMismatchError, OutputExistsError
from coalora.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIGURATION_FILE, export_peft, load_peft_export
from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
from coalora.models import load_model
from coalora.space import ConfigSpace
from conftest import make_tiny_llama

X = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))


def perturb(cm: CoaLoraModel, std: float = 0.05, seed: int = 1) -> CoaLoraModel:
    """Make B and θ non-trivial (as after training), so U and B' matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cm.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return cm


@pytest.fixture
def cm(tiny_space):
    base = make_tiny_llama()
    return perturb(CoaLoraModel(base, tiny_space, LoraSpec(rank=4, theta_init_std=0.2)))


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_peft_on_the_quantized_base_reproduces_our_logits(cm, tmp_path):
    config = cm.space.sample(1, seed=11)[0]
    cm.set_configuration(config)
    ours = cm(input_ids=X).logits
    out = export_peft(cm, config, tmp_path / "adapter")
    assert sorted(files(out)) == sorted(["README.md", ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIGURATION_FILE])
    peft_model, _ = load_peft_export(out, make_tiny_llama())
    torch.testing.assert_close(peft_model(input_ids=X).logits, ours, rtol=0, atol=1e-4)
    # Without the quantized base the adapter still loads, but the logits differ (the README says so).
    from peft import PeftModel

    plain = PeftModel.from_pretrained(make_tiny_llama(), str(out))
    assert not torch.allclose(plain(input_ids=X).logits, ours, atol=1e-3)


def test_adapter_config_is_a_peft_lora_config(cm, tmp_path):
    out = export_peft(cm, cm.space.preset("nf3"), tmp_path / "a")
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 32.0
    assert cfg["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert cm.space.load(out / CONFIGURATION_FILE) == cm.space.preset("nf3")
    readme = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "different" in readme and "WeightSwitcher" in readme


def test_same_configuration_gives_identical_files_and_different_ones_differ(cm, tmp_path):
    a, b = cm.space.sample(2, seed=5)
    fa1 = files(export_peft(cm, a, tmp_path / "a1"))
    cm.set_configuration(b)  # the model's current state must not matter
    fa2 = files(export_peft(cm, a, tmp_path / "a2"))
    fb = files(export_peft(cm, b, tmp_path / "b"))
    assert fa1 == fa2
    assert fa1[ADAPTER_WEIGHTS] != fb[ADAPTER_WEIGHTS]


def test_plain_lora_exports_B_unchanged(tiny_space, tmp_path):
    from safetensors.torch import load_file

    cm = perturb(CoaLoraModel(make_tiny_llama(), tiny_space, LoraSpec(rank=4, use_theta=False)))
    out = export_peft(cm, tiny_space.preset("nf4"), tmp_path / "p")
    t = load_file(str(out / ADAPTER_WEIGHTS))
    name = tiny_space.matrices[0].name
    assert torch.equal(t[f"base_model.model.{name}.lora_B.weight"], cm.adapted[name].lora_B.weight)


def test_existing_output_is_refused_unless_forced(cm, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="already exists"):
        export_peft(cm, cm.space.preset("nf4"), out)
    assert files(out) == {"mine.txt": b"keep"}
    export_peft(cm, cm.space.preset("nf4"), out, force=True)
    assert "mine.txt" not in files(out) and ADAPTER_WEIGHTS in files(out)


def test_configuration_of_another_model_is_refused(cm, tmp_path):
    other = make_tiny_llama(n_layers=3)
    with pytest.raises(ModelMismatchError):
        export_peft(cm, ConfigSpace.from_model(other, "other").preset("nf4"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ---- the CLI ------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path, tiny_model_dir):
    base, _ = load_model(str(tiny_model_dir), quiet=True)
    cm = perturb(CoaLoraModel(base, ConfigSpace.from_model(base, str(tiny_model_dir)), LoraSpec(rank=4)))
    return save_checkpoint(cm, tmp_path / "ckpt", {"seed": 0})


def no_leftovers(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_cli_export_writes_the_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(checkpoint), "--config", "nf3", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert ADAPTER_WEIGHTS in files(out) and no_leftovers(tmp_path)


@pytest.mark.parametrize("case", ["exists", "no_checkpoint", "not_a_checkpoint", "bad_config", "foreign_config",
                                  "mismatched_model"])
def test_cli_bad_input_exits_2_and_writes_nothing(case, checkpoint, tmp_path, capsys):
    out, ckpt, config = tmp_path / "out", str(checkpoint), "nf4"
    if case == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    elif case == "no_checkpoint":
        ckpt = str(tmp_path / "missing")
    elif case == "not_a_checkpoint":
        ckpt = str(tmp_path)
    elif case == "bad_config":
        config = "nf5"
    elif case == "mismatched_model":  # the named base model's weights are not those it was trained on
        meta = json.loads((checkpoint / "checkpoint.json").read_text())
        meta["base_model"]["weights_fingerprint"] = "0" * 16
        (checkpoint / "checkpoint.json").write_text(json.dumps(meta))
    else:
        config = str(ConfigSpace.from_model(make_tiny_llama(n_layers=3), "other").preset("nf4").save(tmp_path / "c.json"))
    assert main(["export", "--checkpoint", ckpt, "--config", config, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any model-loading progress bar
    assert err.startswith("coalora export: error:")
    expected = {"exists": "already exists", "no_checkpoint": "does not exist", "not_a_checkpoint": "checkpoint.json is missing",
                "bad_config": "unknown preset 'nf5'", "foreign_config": "made for model 'other'",
                "mismatched_model": "trained on other weights"}[case]
    assert expected in err
    if case == "exists":
        assert files(out) == {"mine.txt": b"keep"}
    else:
        assert not out.exists()
    assert no_leftovers(tmp_path)


def test_cli_force_replaces(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", "--checkpoint", str(checkpoint), "--config", "nf4", "--out", str(out), "--force"]) == 0
    assert ADAPTER_WEIGHTS in files(out)


@pytest.mark.real
def test_peft_parity_on_smollm2(real_model, tmp_path):
    """Export one random configuration of SmolLM2 and compare peft's logits with ours."""
    from peft import PeftModel

    base, tok = real_model
    space = ConfigSpace.from_model(base, "smollm2-135m")
    x = tok("The capital of France is", return_tensors="pt")["input_ids"]
    # Mostly nf4 (the cheapest to quantize) with a random first block: mixed, and quick.
    random_block0 = {m.name: s for m, s in space.sample(1, seed=0)[0].items() if m.block == 0}
    config = space.preset("nf4").with_settings(random_block0)
    cm = perturb(CoaLoraModel(base, space, LoraSpec(theta_init_std=0.05)), std=0.01)
    try:
        cm.set_configuration(config)
        with torch.no_grad():
            ours = cm(input_ids=x).logits
        out = export_peft(cm, config, tmp_path / "adapter")
        # Quantizing 210 matrices is the slow part: keep the quantized weights for peft's turn.
        quantized_base = cm.unwrap(restore_weights=False)
        with torch.no_grad():
            base_only = quantized_base(input_ids=x).logits
        peft_model = PeftModel.from_pretrained(quantized_base, str(out))
        with torch.no_grad():
            theirs = peft_model(input_ids=x).logits
        peft_model.unload()
    finally:
        cm.unwrap()  # the session-wide model must come back unchanged (original weights)
    assert (ours - base_only).abs().max() > 1e-2  # the adapter does change the logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
