"""Deployment targets simulated exactly (coalora/quant/targets; docs/targets.md).

Each exactness test compares coalora's simulated weights with what the runtime's own code
holds, with torch.equal / np.array_equal (bit for bit, dtype included). The fast tier uses
random matrices of SmolLM2-135M's four shapes; the `real` tier all 210 of its matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coalora.errors import ConfigError
from coalora.quant.targets import TARGETS, get_target
from coalora.quant.targets import bnb as bnb_target
from coalora.quant.targets import gguf as gguf_target

# SmolLM2-135M (out, in): q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536.
SMOLLM2_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
ODD_SHAPE = (5, 77)  # 385 weights: a partial last 64-block and an odd row length (bnb only)


def _weight(shape, dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w[0, 0] = 0.2  # an outlier, as real projections have
    return w.to(dtype)


# ---------------------------------------------------------------- bitsandbytes 4-bit
@pytest.mark.parametrize("fmt", bnb_target.FOUR_BIT)
def test_bnb_4bit_equals_params4bit(fmt):
    """simulate == dequantize_4bit of what a quantized bnb.nn.Params4bit holds (the weight
    Linear4bit dequantizes in its CPU forward), and storage_bytes == the bytes it holds."""
    import bitsandbytes as bnb

    F = bnb_target._functional()
    for shape in SMOLLM2_SHAPES + [ODD_SHAPE]:
        w = _weight(shape)
        p = bnb.nn.Params4bit(
            w.clone(), requires_grad=False, blocksize=64, quant_type=fmt[:3], compress_statistics=fmt.endswith("-dq")
        ).to("cpu")
        qs = p.quant_state
        runtime = F.dequantize_4bit(p.data, qs)
        ours = bnb_target.BNB.simulate(w, fmt)
        assert ours.dtype == runtime.dtype == torch.bfloat16
        assert torch.equal(ours, runtime), (fmt, shape)
        measured = p.data.numel() * p.data.element_size() + qs.absmax.numel() * qs.absmax.element_size()
        if qs.nested:
            measured += qs.state2.absmax.numel() * 4 + 4  # + the fp32 offset
            assert qs.state2.blocksize == bnb_target.NESTED_BLOCKSIZE
        assert bnb_target.BNB.storage_bytes(shape, fmt) == measured, (fmt, shape)


@pytest.mark.parametrize("fmt", ["nf4", "nf4-dq"])
def test_bnb_4bit_fp32_copy_then_cast(fmt):
    """Quantizing the exact fp32 copy of bf16 weights (what coalora's switcher keeps) and
    casting the result to bf16 gives the runtime's bf16 weights bit for bit."""
    w = _weight((192, 576))
    ours = bnb_target.BNB.simulate(w.float(), fmt).to(torch.bfloat16)
    assert torch.equal(ours, bnb_target.BNB.simulate(w, fmt))


def test_bnb_4bit_state_dict_bytes():
    """A saved Linear4bit's tensors = storage_bytes + metadata_bytes (the offset of -dq lives
    in the JSON quant_state blob, not counted there)."""
    import bitsandbytes as bnb

    for fmt in bnb_target.FOUR_BIT:
        shape = (192, 576)
        layer = bnb.nn.Linear4bit(576, 192, bias=False, quant_type=fmt[:3], compress_statistics=fmt.endswith("-dq"))
        layer.weight = bnb.nn.Params4bit(
            _weight(shape), requires_grad=False, blocksize=64, quant_type=fmt[:3],
            compress_statistics=fmt.endswith("-dq"),
        )
        layer.to("cpu")
        sd = layer.state_dict()
        tensors = sum(v.numel() * v.element_size() for k, v in sd.items() if "quant_state.bitsandbytes" not in k)
        offset = 4 if fmt.endswith("-dq") else 0
        assert tensors == bnb_target.BNB.storage_bytes(shape, fmt) - offset + bnb_target.BNB.metadata_bytes(fmt)


# ---------------------------------------------------------------- bitsandbytes 8-bit
def test_bnb_int8_equals_int8params():
    """simulate('int8') == int8_vectorwise_dequant(CB, SCB) of a quantized bnb.nn.Int8Params
    (what Linear8bitLt stores; bnb dequantizes its outlier columns this way)."""
    import bitsandbytes as bnb

    F = bnb_target._functional()
    for shape in SMOLLM2_SHAPES:
        w = _weight(shape)
        p = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        assert p.data.dtype == torch.int8 and p.SCB.dtype == torch.float32
        runtime = F.int8_vectorwise_dequant(p.CB, p.SCB)
        ours = bnb_target.BNB.simulate(w, "int8")
        assert ours.dtype == torch.float32 and torch.equal(ours, runtime), shape
        measured = p.CB.numel() + p.SCB.numel() * 4
        assert bnb_target.BNB.storage_bytes(shape, "int8") == measured


def test_bnb_unquantised():
    w = _weight((192, 576), torch.float32)
    assert torch.equal(bnb_target.BNB.simulate(w, "fp16"), w.half())
    assert torch.equal(bnb_target.BNB.simulate(w, "bf16"), w.bfloat16())
    assert bnb_target.BNB.bits_per_weight((192, 576), "bf16") == 16.0


# ---------------------------------------------------------------- GGUF
@pytest.mark.parametrize("shape", SMOLLM2_SHAPES)
def test_gguf_equals_reference(shape):
    """For every type legal for the shape: simulate == gguf.quants.dequantize(quantize(w))
    bit for bit, and storage_bytes == the quantized blocks' nbytes."""
    import gguf.quants

    w = _weight(shape, torch.float32)
    legal = gguf_target.GGUF.legal_formats(shape)
    assert ("TQ1_0" in legal) == (shape[1] % 256 == 0)
    for fmt in legal:
        t = gguf.GGMLQuantizationType[fmt]
        blocks = gguf.quants.quantize(w.numpy(), t)
        ref = gguf.quants.dequantize(blocks, t)
        ours = gguf_target.GGUF.simulate(w, fmt)
        assert ours.dtype == torch.float32 and np.array_equal(ours.numpy(), ref), (fmt, shape)
        assert gguf_target.GGUF.storage_bytes(shape, fmt) == blocks.nbytes, (fmt, shape)


def test_gguf_type_sizes_match_package():
    import gguf

    for fmt, size in gguf_target.TYPE_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[fmt]] == size, fmt


def test_gguf_excluded_types_cannot_quantize():
    """Every ggml type not offered has no numpy quantize in the pinned gguf (0.19.0)."""
    import gguf
    import gguf.quants

    w = np.zeros((1, 256), np.float32)
    for t in gguf.GGMLQuantizationType:
        if t.name in gguf_target.FORMATS:
            continue
        with pytest.raises(NotImplementedError):
            gguf.quants.quantize(w, t)


# ---------------------------------------------------------------- refusals, registry, bpw
def test_illegal_settings_refused():
    g, b = get_target("gguf"), get_target("bnb")
    with pytest.raises(ConfigError) as e:
        g.check("TQ1_0", (576, 576), "model.layers.3.self_attn.q_proj")
    msg = str(e.value)
    assert "model.layers.3.self_attn.q_proj" in msg and "[576, 576]" in msg and "multiple of 256" in msg
    assert "Q4_0" in msg and "MXFP4" in msg and "TQ1_0, " not in msg
    with pytest.raises(ConfigError, match=r"'Q4_K' is not a gguf format; legal for this tensor: F32"):
        g.simulate(torch.zeros(4, 576), "Q4_K", "w")
    with pytest.raises(ConfigError, match="not a bnb format"):
        b.storage_bytes((4, 64), "nf3")
    with pytest.raises(ConfigError, match="2-D"):
        b.simulate(torch.zeros(64), "nf4")
    with pytest.raises(ConfigError, match="NaN"):
        g.simulate(torch.full((1, 32), float("nan")), "Q8_0")
    with pytest.raises(ConfigError, match="known targets are bnb, gguf, torchao"):
        get_target("mlx")
    assert set(TARGETS) == {"bnb", "gguf", "torchao"}  # torchao: tests/test_targets_torchao.py


# bits per weight (scales included) for SmolLM2's shapes, docs/targets.md's table.
BPW = {
    ("bnb", "nf4"): [4.5, 4.5, 4.5, 4.5],
    ("bnb", "nf4-dq"): [4.127122, 4.127315, 4.126989, 4.126989],
    ("bnb", "int8"): [8.055556, 8.055556, 8.055556, 8.020833],
    ("bnb", "bf16"): [16.0] * 4,
    ("gguf", "Q8_0"): [8.5] * 4,
    ("gguf", "Q4_0"): [4.5] * 4,
    ("gguf", "MXFP4"): [4.25] * 4,
    ("gguf", "TQ1_0"): [None, None, None, 1.6875],
    ("gguf", "TQ2_0"): [None, None, None, 2.0625],
}


def test_bits_per_weight_table():
    for (target, fmt), row in BPW.items():
        t = get_target(target)
        for shape, want in zip(SMOLLM2_SHAPES, row):
            if want is None:
                assert fmt not in t.legal_formats(shape)
            else:
                assert t.bits_per_weight(shape, fmt) == pytest.approx(want, abs=1e-6), (target, fmt, shape)


# ---------------------------------------------------------------- real model
@pytest.mark.real
def test_all_smollm2_matrices_exact(real_model):
    """All 210 SmolLM2-135M matrices: bnb 4-bit / int8 against Params4bit / Int8Params, and
    every legal GGUF type against gguf.quants, bit for bit."""
    import bitsandbytes as bnb
    import gguf.quants

    from coalora.space import ConfigSpace

    model, _ = real_model
    space = ConfigSpace.from_model(model, "smollm2-135m")
    modules = dict(model.named_modules())
    F = bnb_target._functional()
    assert len(space.matrices) == 210
    for m in space.matrices:
        w = modules[m.name].weight.detach().to(torch.bfloat16)
        for fmt in bnb_target.FOUR_BIT:
            p = bnb.nn.Params4bit(w.clone(), requires_grad=False, blocksize=64, quant_type=fmt[:3],
                                  compress_statistics=fmt.endswith("-dq")).to("cpu")
            assert torch.equal(bnb_target.BNB.simulate(w, fmt, m.name), F.dequantize_4bit(p.data, p.quant_state))
        p8 = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        assert torch.equal(bnb_target.BNB.simulate(w, "int8", m.name), F.int8_vectorwise_dequant(p8.CB, p8.SCB))
        w32 = w.float()
        for fmt in gguf_target.GGUF.legal_formats(m.shape):
            t = gguf.GGMLQuantizationType[fmt]
            ref = gguf.quants.dequantize(gguf.quants.quantize(w32.numpy(), t), t)
            assert np.array_equal(gguf_target.GGUF.simulate(w32, fmt, m.name).numpy(), ref), (m.name, fmt)


# ---------------------------------------------------------------- assignments and the CLI end
def test_assign_uniform_and_mixed():
    from coalora.quant.targets.assign import assign

    tensors = [("layers.0.self_attn.q_proj", (576, 576)), ("layers.0.mlp.down_proj", (576, 1536))]
    g = get_target("gguf")
    a = assign(g, tensors, "Q4_0")
    assert a.formats == ("Q4_0", "Q4_0") and a.avg_bits == 4.5
    mixed = assign(g, tensors, {"target": "gguf", "default": "Q8_0", "matrices": {"layers.0.mlp.down_proj": "TQ2_0"}})
    assert mixed.storage_bytes == 352512 + 228096 and mixed.summary()["formats"] == {"Q8_0": 1, "TQ2_0": 1}
    with pytest.raises(ConfigError, match=r"layers.0.self_attn.q_proj \[576, 576\]: gguf format 'TQ2_0'"):
        assign(g, tensors, "TQ2_0")
    with pytest.raises(ConfigError, match="unknown tensor 'nope'"):
        assign(g, tensors, {"default": "Q4_0", "matrices": {"nope": "Q8_0"}})
    with pytest.raises(ConfigError, match="unknown key 'defaults'"):
        assign(g, tensors, {"defaults": "Q4_0"})
    with pytest.raises(ConfigError, match="not 'gguf'"):
        assign(g, tensors, {"target": "bnb", "default": "nf4"})
    b = assign(get_target("bnb"), tensors, "nf4-dq").summary()
    assert b["metadata_bytes"] == 2 * 1088 and b["storage_bytes"] == 171160 + 456412


def test_cli_space_target(tmp_path, capsys):
    import argparse
    import json

    from conftest import make_tiny_llama

    from coalora.cli import space as cli_space

    make_tiny_llama().save_pretrained(tmp_path)
    args = argparse.Namespace(model=str(tmp_path), config="Q4_0", json=True, target="gguf")
    assert cli_space.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "gguf" and out["n_matrices"] == 14 and out["avg_bits"] == 4.5
    (tmp_path / "a.json").write_text(json.dumps({"default": "nf4", "matrices": {"model.layers.0.mlp.down_proj": "int8"}}))
    args = argparse.Namespace(model=str(tmp_path), config=str(tmp_path / "a.json"), json=False, target="bnb")
    assert cli_space.run(args) == 0
    assert "nf4 x13, int8 x1" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"model.layers.0.self_attn.q_proj \[64, 64\].*multiple of 256"):
        cli_space.run(argparse.Namespace(model=str(tmp_path), config="TQ1_0", json=True, target="gguf"))


def test_closest_format_keeps_the_kind_and_goes_up_on_ties():
    from coalora.quant.targets import get_target
    from coalora.quant.targets.base import format_bits

    gguf, tao, bnb = get_target("gguf"), get_target("torchao"), get_target("bnb")
    assert [format_bits(f) for f in ("nf4", "Q5_1", "int3-g32", "F16", "MXFP4", "TQ1_0")] == [4, 5, 3, 16, 4, 1]
    assert gguf.closest_format((576, 576), 5, like="Q4_1") == "Q5_1"
    assert gguf.closest_format((576, 576), 5, like="Q4_0") == "Q5_0"
    assert gguf.closest_format((576, 576), 3, like="Q4_1") == "Q4_1"  # no 3-bit type for 576-wide rows: 4 (ties up)
    assert gguf.closest_format((576, 576), 6, like="Q4_0") == "Q5_0"  # 5 is closer than 8
    assert tao.closest_format((576, 576), 3, like="int4-g64-asym") == "int3-g64-asym"
    assert tao.closest_format((576, 576), 2, like="bf16") == "int2-g32"  # another kind: the first of that width
    assert bnb.closest_format((576, 576), 8, like="nf4") == "int8"
    assert bnb.closest_format((576, 576), 4, like="fp4-dq") == "fp4-dq"
    assert bnb.closest_format((576, 576), 2) == "nf4"


def test_format_for_keeps_a_legal_format_and_replaces_an_illegal_one_by_its_closest():
    from coalora.quant.targets import get_target

    gguf = get_target("gguf")
    assert gguf.format_for((576, 576), "Q4_1") == "Q4_1"
    # 256-blocked ternary cannot sit on 576-wide rows: the closest legal format of its width
    assert "TQ2_0" not in gguf.legal_formats((576, 576))
    assert gguf.format_for((576, 576), "TQ2_0") == gguf.closest_format((576, 576), 2, like="TQ2_0")
    assert gguf.format_for((576, 1536), "TQ2_0") == "TQ2_0"  # down_proj's 1536-wide rows can
