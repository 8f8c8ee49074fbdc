"""`coalora space` end to end (a subprocess, as a user runs it) and the model loader."""

import json
import os
import subprocess
import sys

import pytest

from conftest import make_tiny_llama

pytestmark = pytest.mark.integration  # every test runs `python -m coalora` in a subprocess


def run_cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "coalora", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(path)
    return path


def test_space_json_on_a_local_folder(tiny_folder):
    r = run_cli("space", "--model", str(tiny_folder), "--config", "nf3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_matrices"] == 14 and out["avg_bits"] == pytest.approx(3.127, abs=1e-3)
    assert out["packed_bytes"] > out["n_params"] * 3.127 / 8


def test_space_readable_summary(tiny_folder):
    r = run_cli("space", "--model", str(tiny_folder), "--config", "min")
    assert r.returncode == 0, r.stderr
    assert "avg bits     2.0322" in r.stdout and "per block:" in r.stdout and "down_proj" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nf5"], "unknown preset 'nf5'"),
        (["--config", "/nonexistent/c.json"], "cannot read configuration file"),
    ],
)
def test_space_bad_input_exits_2_without_traceback(tiny_folder, args, message):
    r = run_cli("space", "--model", str(tiny_folder), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_space_refuses_configuration_of_another_model(tiny_folder, tmp_path):
    from coalora.space import ConfigSpace

    other = ConfigSpace.from_model(make_tiny_llama(hidden=32), "other-model")
    path = other.preset("nf4").save(tmp_path / "other.json")
    r = run_cli("space", "--model", str(tiny_folder), "--config", str(path))
    assert r.returncode == 2 and "made for model 'other-model'" in r.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    r = run_cli("space", "--model", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "cannot load model 'no-such-org/no-such-model' offline" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("space", "--model", str(tmp_path / "empty"))
    assert r.returncode == 2 and "has no config.json" in r.stderr


def test_unsupported_family_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    r = run_cli("space", "--model", str(tmp_path))
    assert r.returncode == 2 and "supported families are llama" in r.stderr


def test_help_explains_presets():
    r = run_cli("space", "--help")
    assert r.returncode == 0 and "nf4" in r.stdout and "JSON" in r.stdout


@pytest.mark.real
def test_space_on_the_default_model(real_model_dir):
    for preset, bits in [("nf4", 4.127), ("nf3", 3.127)]:
        r = run_cli("space", "--model", "smollm2-135m", "--config", preset, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["n_matrices"] == 210 and out["n_params"] == 106_168_320
        assert out["avg_bits"] == pytest.approx(bits, abs=1e-3)


@pytest.mark.real
def test_real_model_space_matches_its_weights(real_model):
    from coalora.models import build_space_for
    from coalora.space import ConfigSpace

    model, tok = real_model
    assert ConfigSpace.from_model(model, "smollm2-135m") == build_space_for("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and tok("hello").input_ids


@pytest.mark.real
def test_two_processes_convert_the_default_model_once(tmp_path):
    """Two cold starts at once: a lock serialises the GGUF conversion, one folder results."""
    code = (
        "from coalora.models import embedded_model_dir; import sys; "
        "print(embedded_model_dir(quiet=False))"
    )
    env = {**os.environ, "COALORA_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    conversions = sum("converting" in err for _, err in outs)
    assert conversions == 1  # the second process waited and reused the result
    folder = tmp_path / "models" / "smollm2-135m"
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]
