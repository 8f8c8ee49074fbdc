"""Target configurations (docs/targets.md, "Target configurations"): one bnb / gguf format per
matrix in the configuration space, JSON round trips, exact storage, θ proxies, and the weight
switcher applying Target.simulate bit for bit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from coalora.errors import ConfigError
from coalora.quant.targets import TARGETS, get_target
from coalora.quant.targets.assign import assign
from coalora.quant.targets.proxy import THETA_PROXY, theta_proxy
from coalora.space import ConfigSpace, Configuration, MatrixInfo, TargetConfiguration
from conftest import make_tiny_llama

# SmolLM2-135M's shapes without loading it: 30 blocks of q, k, v, o, gate, up, down.
_SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
           "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}


@pytest.fixture(scope="module")
def smol_space() -> ConfigSpace:
    mats = [MatrixInfo(f"model.layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}", t, b, s)
            for b in range(30) for t, s in _SHAPES.items()]
    return ConfigSpace("smollm2-135m", tuple(mats), 30)


# Mixed configurations that use most formats on the tiny model (rows 64 or 128 wide).
BNB_MIX = ("nf4", "fp4", "nf4-dq", "fp4-dq", "int8", "fp16", "bf16")
GGUF_MIX = ("Q4_0", "Q8_0", "MXFP4", "Q5_1", "Q5_0", "Q4_1", "F16", "BF16", "F32")


def _mixed(space: ConfigSpace, target: str, cycle: tuple[str, ...]) -> TargetConfiguration:
    return TargetConfiguration(space, target, [cycle[i % len(cycle)] for i in range(space.n_matrices)])


# ---------------------------------------------------------------- configuration, JSON, storage
@pytest.mark.parametrize("target, cycle", [("bnb", BNB_MIX), ("gguf", GGUF_MIX)])
def test_json_round_trip_names_the_target(tiny_space, tmp_path, target, cycle):
    config = _mixed(tiny_space, target, cycle)
    d = json.loads(config.to_json())
    assert d["target"] == target and isinstance(d["default"], str) and "family" not in d
    assert all(isinstance(v, str) for v in d["matrices"].values())
    back = tiny_space.load(config.save(tmp_path / "c.json"))
    assert isinstance(back, TargetConfiguration) and back == config and back.hash == config.hash
    assert back.formats == config.formats and back.target == target


def test_uniform_spec_and_with_formats(tiny_space):
    c = tiny_space.load("gguf:Q4_0")
    assert c.formats == ("Q4_0",) * tiny_space.n_matrices
    name = tiny_space.matrices[2].name
    d = c.with_formats({name: "Q8_0"})
    assert d.format(name) == "Q8_0" and c.format(name) == "Q4_0" and d != c
    with pytest.raises(ConfigError, match="use with_formats"):
        c.with_settings({name: theta_proxy("gguf", "Q8_0")})


def test_storage_is_the_targets_accounting(smol_space):
    # docs/targets.md's table: whole-model bits for uniform formats on SmolLM2's shapes.
    assert smol_space.load("bnb:nf4").avg_bits == 4.5
    assert smol_space.load("gguf:Q4_0").avg_bits == 4.5
    assert smol_space.load("gguf:MXFP4").avg_bits == 4.25
    assert round(smol_space.load("bnb:int8").avg_bits, 4) == 8.0469
    assert round(smol_space.load("bnb:nf4-dq").avg_bits, 4) == 4.1270
    # A mixed configuration: bytes = the per-tensor sum of Target.storage_bytes = assign()'s total.
    fmts = ["TQ1_0" if m.module_type == "down_proj" else ("Q8_0" if m.block < 3 else "Q4_1") for m in smol_space.matrices]
    c = TargetConfiguration(smol_space, "gguf", fmts)
    want = sum(get_target("gguf").storage_bytes(m.shape, f) for m, f in zip(smol_space.matrices, fmts))
    assert c.storage_bytes == c.packed_bytes == want
    spec = {"default": "Q4_1", "matrices": {m.name: f for m, f in zip(smol_space.matrices, fmts) if f != "Q4_1"}}
    assert assign(get_target("gguf"), [(m.name, m.shape) for m in smol_space.matrices], spec).storage_bytes == want
    assert c.avg_bits == want * 8 / smol_space.n_params
    s = c.summary()
    assert s["target"] == "gguf" and s["storage_bytes"] == want and s["formats"]["TQ1_0"] == 30
    assert s["per_module_type"]["down_proj"] == 54 * 8 / 256  # TQ1_0: 54 bytes per 256 weights
    assert s["avg_bits"] == c.avg_bits


def test_illegal_format_is_one_line_naming_tensor_shape_and_legal_values(smol_space):
    d = smol_space.load("gguf:Q4_0").to_dict()
    d["matrices"] = {"model.layers.3.self_attn.q_proj": "TQ1_0"}
    with pytest.raises(ConfigError) as e:
        smol_space.from_dict(d)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model.layers.3.self_attn.q_proj [576, 576]: gguf format 'TQ1_0'")
    assert msg.endswith("legal for this tensor: F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, MXFP4")
    with pytest.raises(ConfigError, match=r"^model.layers.0.self_attn.q_proj \[576, 576\]: 'nf5' is not a bnb format; "
                                          r"legal for this tensor: nf4, fp4, nf4-dq, fp4-dq, int8, fp16, bf16$"):
        smol_space.load("bnb:nf5")
    with pytest.raises(ConfigError, match="field 'target' has value 'mlx'; allowed values are coalora, bnb, gguf, torchao"):
        smol_space.from_dict({**d, "target": "mlx"})
    with pytest.raises(ConfigError, match="unknown key\\(s\\) 'family' in a gguf configuration"):
        smol_space.from_dict({**smol_space.load("gguf:Q4_0").to_dict(), "family": "int"})


def test_nfk_files_load_unchanged_and_differ_from_targets(smol_space):
    nf4 = smol_space.preset("nf4")
    d = nf4.to_dict()
    assert "target" not in d  # files written for the NF-k space are as before
    # The content hash of an NF-k configuration is the formula it always was.
    text = json.dumps([smol_space.fingerprint, "nf", [s.to_indices() for s in nf4.settings]])
    import hashlib

    assert nf4.hash == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert smol_space.from_dict({**d, "target": "coalora"}) == nf4
    assert type(smol_space.from_dict(d)) is Configuration
    # bnb nf4-dq's θ proxy is exactly the nf4 preset's setting, yet the configurations differ.
    dq = smol_space.load("bnb:nf4-dq")
    assert dq.settings == nf4.settings and dq != nf4 and nf4 != dq and dq.hash != nf4.hash
    assert len({dq, nf4}) == 2


def test_every_format_has_a_theta_proxy_in_the_encoding(tiny_space):
    for name, target in TARGETS.items():
        assert set(THETA_PROXY[name]) == set(target.formats)
    c = _mixed(tiny_space, "gguf", GGUF_MIX)
    want = torch.tensor([theta_proxy("gguf", f).to_indices() for f in c.formats])
    assert torch.equal(c.encode(), want)


# ---------------------------------------------------------------- evaluation under a target
@pytest.mark.parametrize("target, cycle", [("bnb", BNB_MIX), ("gguf", GGUF_MIX)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_switched_weights_equal_target_simulate(target, cycle, dtype):
    """CoaLoraModel.set_configuration(target config): every matrix's weight is
    Target.simulate(original weight in the model's dtype) in that dtype, bit for bit; θ gets
    the proxies; switching to NF-k and back re-simulates the same bits."""
    from coalora.lora import CoaLoraModel, LoraSpec

    base = make_tiny_llama(seed=3).to(dtype)
    originals = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    space = ConfigSpace.from_model(base, "tiny-llama")
    model = CoaLoraModel(base, space, LoraSpec(rank=4, theta_hidden=16))
    config = _mixed(space, target, cycle)
    assert model.set_configuration(config) == space.n_matrices
    t = get_target(target)

    def check():
        for m, fmt in zip(space.matrices, config.formats):
            w = model.adapted[m.name].base_layer.weight
            want = t.simulate(originals[m.name], fmt, m.name).to(dtype)
            assert w.dtype == dtype and torch.equal(w, want), (m.name, fmt)

    check()
    assert torch.equal(model.codes(config)[:, :5], config.encode())
    model.set_configuration(space.preset("nf3"))
    assert not torch.equal(model.adapted[space.matrices[0].name].base_layer.weight,
                           t.simulate(originals[space.matrices[0].name], cycle[0]).to(dtype))
    model.set_configuration(config)
    check()


def test_eval_cli_scores_bnb_and_gguf_configurations(tmp_path, capsys):
    """`coalora eval --checkpoint CKPT --config FILE` for a bnb and a gguf configuration on a
    tiny random model with a non-zero adapter: scores, and records name the target and its bytes."""
    from coalora.cli import main
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.results import read_records
    from test_eval import VOCAB, make_byte_tokenizer

    folder = tmp_path / "tiny"
    make_tiny_llama(vocab_size=VOCAB, seed=1).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    base, _ = load_model(str(folder), quiet=True)
    space = ConfigSpace.from_model(base, str(folder))
    wrapped = CoaLoraModel(base, space, LoraSpec(rank=4, alpha=8.0, theta_hidden=16))
    with torch.no_grad():
        for layer in wrapped.adapted.values():
            layer.lora_B.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    ckpt = save_checkpoint(wrapped, tmp_path / "ckpt", metadata={"training": {"method": "coalora"}})
    records = tmp_path / "r.jsonl"
    values = {}
    for target, cycle in (("bnb", BNB_MIX), ("gguf", GGUF_MIX)):
        path = _mixed(space, target, cycle).save(tmp_path / f"{target}.json")
        code = main(["eval", "--model", str(folder), "--checkpoint", str(ckpt), "--config", str(path),
                     "--task", "sst2", "--limit", "12", "--dtype", "fp32", "--records", str(records), "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0 and out["n"] == 12 and 0 <= out["value"] <= 1 and out["method"] == "coalora"
        config = space.load(path)
        assert out["avg_bits"] == config.avg_bits and out["packed_bytes"] == config.storage_bytes
        values[target] = out["value"]
    recs = read_records(records)
    assert [r.config["target"] for r in recs] == ["bnb", "gguf"]
    assert all(math.isfinite(r.value) for r in recs)
