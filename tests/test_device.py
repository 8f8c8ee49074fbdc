"""--device / COALORA_DEVICE (coalora.device) and the CoaLoraModel state that must follow a
device move (issue 13, item 6).

No GPU here: the move is checked on torch's `meta` device (every tensor that should move must
land there; the switcher's originals and cache must stay in host memory), and a move to the
device the model is on must change nothing (bit-identical logits)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from coalora.cli import main
from coalora.device import cuda_status, place, resolve_device
from coalora.errors import ConfigError
from coalora.lora import CoaLoraModel, LoraSpec
from conftest import make_tiny_llama

NO_CUDA = cuda_status() is not None


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cpu") if NO_CUDA else torch.device("cuda"))
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ConfigError, match=r"--device 'tpu' is not a device; allowed: auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is available")
def test_cuda_without_gpu_is_one_line_naming_option_value_and_allowed():
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda", "COALORA_DEVICE")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("COALORA_DEVICE 'cuda': ") and msg.endswith("allowed here: auto, cpu")


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is available")
@pytest.mark.parametrize("argv", [
    ["eval", "--device", "cuda", "--no-record", "--limit", "4"],
    ["search", "--checkpoint", "default", "--device", "cuda", "--iterations", "0"],
])
def test_cli_cuda_without_gpu_exits_2_before_loading(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"coalora {argv[0]}: error: --device 'cuda': " in err and "allowed here: auto, cpu" in err


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is available")
def test_train_cuda_without_gpu_exits_2(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--device", "cuda", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "coalora train: error: --device 'cuda': " in err and "allowed here: auto, cpu" in err
    assert not (tmp_path / "run" / "state").exists()


def test_train_device_option_is_checked():
    from coalora.train.args import TrainArgs

    assert TrainArgs(out="x").device == "auto"
    with pytest.raises(ConfigError, match="train option 'device' has value 'gpu'; allowed: auto, cpu, cuda"):
        TrainArgs(out="x", device="gpu")
    assert "device" in TrainArgs.RESUMABLE_CHANGES  # a run may continue on another device


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is available")
def test_app_reads_coalora_device(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import app

    with pytest.raises(ConfigError, match=r"^COALORA_DEVICE 'cuda': .*allowed here: auto, cpu$"):
        app.load_engines({"COALORA_DEVICE": "cuda", "COALORA_OBSERVATIONS": str(tmp_path / "o.jsonl")})


def _tiny(seed: int = 0, theta: bool = True) -> CoaLoraModel:
    from coalora.space import ConfigSpace

    base = make_tiny_llama(seed=seed)
    space = ConfigSpace.from_model(base, "tiny-llama")
    m = CoaLoraModel(base, space, LoraSpec(rank=4, alpha=8.0, theta_hidden=16, use_theta=theta)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-zero adapter, so θ and B matter for the logits
        for layer in m.adapted.values():
            layer.lora_B.weight.copy_(0.05 * torch.randn(layer.lora_B.weight.shape, generator=g))
    return m


def _logits(m: CoaLoraModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


def test_move_takes_every_model_tensor_and_leaves_switcher_state_in_host_memory():
    m = _tiny(theta=False)  # θ validates its codes with .any(), which the meta device cannot answer
    nf4, nf3 = m.space.preset("nf4"), m.space.preset("nf3")
    m.set_configuration(nf4)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    _logits(m, ids)  # merged weights and prefix entries exist before the move
    assert any(layer.merged_weight is not None for layer in m.adapted.values()) and len(m.prefix) > 0
    place(m, torch.device("meta"))
    assert all(p.device.type == "meta" for p in m.parameters())
    assert all(mod.weight.device.type == "meta" for mod in m.switcher.modules.values())
    assert m._codes.device.type == "meta"
    assert all(layer.merged_weight is None for layer in m.adapted.values()) and len(m.prefix) == 0
    # The switcher quantizes on the CPU from host originals; its cache stays in host memory.
    assert all(t.device.type == "cpu" for t in m.switcher.originals.values())
    assert all(t.device.type == "cpu" for t in m.switcher._cache.values())
    m.set_configuration(nf3)  # new quantized weights land on the model's device
    assert all(mod.weight.device.type == "meta" for mod in m.switcher.modules.values())
    assert m.switcher.stats["quantized"] == 2 * len(m.adapted)  # quantized on the CPU, then moved


def test_move_to_the_same_device_changes_nothing():
    """`.to()` re-syncs the non-parameter state (_apply): on the device the model is already
    on, the logits stay bit-identical and the live weights stay the switcher's cache entries."""
    m = _tiny()
    c = m.space.preset("nf3")
    m.set_configuration(c)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    expected = _logits(m, ids)
    M = [layer.M.clone() for layer in m.adapted.values()]
    place(m, torch.device("cpu"))
    m.to("cpu")
    assert m._theta_version is None  # θ's mixing is re-made at the next forward, on the new device
    assert torch.equal(_logits(m, ids), expected)
    assert all(torch.equal(layer.M, M0) for layer, M0 in zip(m.adapted.values(), M))
    for name, mod in m.switcher.modules.items():  # not copied: still the cache entry
        key = (name, *m.switcher.current[name])
        assert mod.weight.data_ptr() == m.switcher._cache[key].data_ptr()


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is available: the check would run")
def test_gpu_check_without_gpu_says_so_and_exits_0():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("gpu-check: no CUDA GPU (") and "nothing was checked" in p.stdout
