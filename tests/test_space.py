"""Configuration space: target matrices, presets, encodings, JSON, storage, bad input."""

import json

import pytest
import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.quant import QuantSetting, fake_quantize
from coalora.lora.switcher import WeightSwitcher
from coalora.space import CONFIG_FORMAT, MODULE_TYPES, PRESETS, ConfigSpace
from conftest import make_tiny_llama


def test_space_lists_seven_projections_per_block(tiny_space):
    assert tiny_space.n_matrices == 2 * 7 and tiny_space.n_blocks == 2
    assert [m.module_type for m in tiny_space.matrices[:7]] == list(MODULE_TYPES)
    q = tiny_space.matrices[0]
    assert q.name == "model.layers.0.self_attn.q_proj" and q.block == 0 and q.shape == (64, 64)
    k = tiny_space.matrices[1]
    assert k.shape == (32, 64)  # 2 KV heads of 16
    assert tiny_space.n_params == sum(m.numel for m in tiny_space.matrices)


def test_fingerprint_depends_on_names_and_shapes():
    a = ConfigSpace.from_model(make_tiny_llama(), "a")
    b = ConfigSpace.from_model(make_tiny_llama(seed=5), "b")  # same shapes, other weights
    c = ConfigSpace.from_model(make_tiny_llama(hidden=32), "c")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_avg_bits_follows_the_formula(tiny_space):
    for name, s in PRESETS.items():
        assert tiny_space.preset(name).avg_bits == pytest.approx(s.bits_per_param, abs=1e-12)
    mixed = tiny_space.preset("nf4").with_settings({tiny_space.matrices[0].name: QuantSetting(bits=2)})
    n = [m.numel for m in tiny_space.matrices]
    expect = (n[0] * QuantSetting(bits=2).bits_per_param + sum(n[1:]) * PRESETS["nf4"].bits_per_param) / sum(n)
    assert mixed.avg_bits == pytest.approx(expect, abs=1e-12)


def test_packed_bytes_of_a_configuration_is_measured_exactly(tiny_model, tiny_space):
    from coalora.quant import quantize

    config = tiny_space.sample(1, seed=3)[0]
    modules = dict(tiny_model.named_modules())
    measured = sum(quantize(modules[m.name].weight, s)[0].nbytes for m, s in config.items())
    assert config.packed_bytes == measured


def test_encode_decode_round_trip(tiny_space):
    for config in tiny_space.sample(5, seed=1):
        enc = config.encode()
        assert enc.shape == (tiny_space.n_matrices, 5) and enc.dtype == torch.long
        assert tiny_space.decode(enc) == config
        assert tiny_space.decode(enc.reshape(-1)) == config


def test_encode_and_hashes_are_made_once_and_encode_hands_out_copies(tiny_space):
    c = tiny_space.sample(1, seed=4)[0]
    twin = tiny_space.decode(c.encode())  # built separately: nothing memoized yet
    first = c.encode()
    first.zero_()  # a caller changing its tensor changes nothing for the next one
    assert torch.equal(c.encode(), twin.encode()) and not torch.equal(c.encode(), first)
    assert c.encode() is not c.encode()
    assert hash(c) == hash(twin) and c.hash == twin.hash and c == twin
    other = c.with_settings({tiny_space.matrices[0].name: QuantSetting(2, 8, "fp32", 64, 256)})
    assert other.hash != c.hash and not torch.equal(other.encode(), c.encode())


def test_sampling_is_seeded(tiny_space):
    assert tiny_space.sample(3, seed=7) == tiny_space.sample(3, seed=7)
    assert tiny_space.sample(3, seed=7) != tiny_space.sample(3, seed=8)


def test_json_round_trip(tmp_path, tiny_space):
    for config in [tiny_space.preset("nf3"), *tiny_space.sample(3, seed=2)]:
        path = config.save(tmp_path / "c.json")
        data = json.loads(path.read_text())
        assert data["format"] == CONFIG_FORMAT and data["fingerprint"] == tiny_space.fingerprint
        again = tiny_space.load(path)
        assert again == config and again.hash == config.hash
    assert json.loads(tiny_space.preset("nf3").to_json())["matrices"] == {}


def test_json_overrides_apply_over_default(tiny_space):
    name = tiny_space.matrices[3].name
    config = tiny_space.from_dict({
        "format": CONFIG_FORMAT,
        "default": {"bits": 3},
        "matrices": {name: {"bits": 8, "block_size": 16}},
    })
    assert config.setting(name) == QuantSetting(8, 8, "fp32", 16, 256)
    assert config.setting(tiny_space.matrices[0].name) == PRESETS["nf3"]


def test_bad_inputs_are_clear_errors(tmp_path, tiny_space):
    name = tiny_space.matrices[0].name
    base = {"format": CONFIG_FORMAT, "fingerprint": tiny_space.fingerprint}
    with pytest.raises(ConfigError, match="unknown preset 'nf5'; known presets are nf4"):
        tiny_space.load("nf5")
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        tiny_space.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        tiny_space.load(bad)
    with pytest.raises(ConfigError, match="unknown matrix name 'model.layers.9.mlp.up_proj'"):
        tiny_space.from_dict({**base, "matrices": {"model.layers.9.mlp.up_proj": {"bits": 2}}})
    with pytest.raises(ConfigError) as e:
        tiny_space.from_dict({**base, "matrices": {name: {"block_size": 128}}})
    msg = str(e.value)
    assert name in msg and "block_size" in msg and "128" in msg and "16, 32, 64" in msg
    with pytest.raises(ConfigError, match="unknown field 'bitz'"):
        tiny_space.from_dict({**base, "default": {"bitz": 4}})
    with pytest.raises(ConfigError, match="format"):
        tiny_space.from_dict({"format": "other/v9"})
    with pytest.raises(ConfigError, match="unknown key"):
        tiny_space.from_dict({**base, "colour": "red"})
    with pytest.raises(ModelMismatchError, match="made for model"):
        tiny_space.from_dict({**base, "model": "other", "fingerprint": "0" * 16})
    with pytest.raises(ConfigError, match="entries"):
        tiny_space.decode(torch.zeros(3, dtype=torch.long))


def test_weight_switcher_requantizes_only_changed_matrices(tiny_model, tiny_space):
    sw = WeightSwitcher(tiny_model, tiny_space)
    x = torch.randint(0, 256, (2, 8))
    base = tiny_model(x).logits
    nf4 = tiny_space.preset("nf4")
    assert sw.apply(nf4) == tiny_space.n_matrices
    out4 = tiny_model(x).logits
    name = tiny_space.matrices[5].name
    one = nf4.with_settings({name: QuantSetting(bits=2)})
    assert sw.apply(one) == 1
    quantized_before = sw.stats["quantized"]
    assert sw.apply(nf4) == 1 and sw.stats["quantized"] == quantized_before  # a cache hit
    assert torch.equal(tiny_model(x).logits, out4)  # deterministic: bit-identical
    w = dict(tiny_model.named_modules())[name].weight
    assert torch.equal(w, fake_quantize(sw.originals[name], PRESETS["nf4"]))
    sw.apply(None)
    assert torch.equal(tiny_model(x).logits, base)


def test_weight_switcher_cache_is_bounded(tiny_model, tiny_space):
    sw = WeightSwitcher(tiny_model, tiny_space, cache_bytes=64 * 64 * 4 * 3)
    for config in tiny_space.sample(4, seed=0):
        sw.apply(config)
        assert sw._cached_bytes <= sw.cache_bytes


def test_weight_switcher_refuses_foreign_configuration(tiny_model, tiny_space):
    other = ConfigSpace.from_model(make_tiny_llama(hidden=32), "other")
    with pytest.raises(ModelMismatchError):
        WeightSwitcher(tiny_model, tiny_space).apply(other.preset("nf4"))
