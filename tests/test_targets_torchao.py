"""The torchao target simulated exactly (coalora/quant/targets/torchao.py; docs/targets.md, "torchao").

Every exactness test quantizes an nn.Linear with torchao's own `quantize_(module,
IntxWeightOnlyConfig(...))` and compares, with torch.equal (dtype and every bit), what the
module then holds (qdata, scale, zero_point), what it dequantizes to and what its forward
computes with coalora's own torch code, which never imports torchao. The fast tier uses
small random matrices whose rows every format fits; the `real` tier SmolLM2-135M's 210.
"""

from __future__ import annotations

import pytest
import torch

from coalora.errors import ConfigError
from coalora.quant.targets import get_target
from coalora.quant.targets import torchao as tao

pytest.importorskip("torchao")

T = tao.TORCHAO
QUANTIZED = [f for f in tao.FORMATS if f not in tao.UNQUANTISED]
DTYPES = [torch.bfloat16, torch.float32, torch.float16]
SMOLLM2_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]


def _weight(shape, dtype=torch.bfloat16, seed=0) -> torch.Tensor:
    """Random weights with the cases that break a careless copy: an outlier, an all-zero
    group (the eps clamp), an all-positive and an all-negative row, and exact halves of a
    step (round-half-to-even)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w[0, 0] = 0.2
    if shape[0] >= 4:
        w[1, :32] = 0.0
        w[2] = w[2].abs()
        w[3] = -w[3].abs()
        w[4 % shape[0], :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -8.0]) * 0.01
    return w.to(dtype)


def _config(fmt: str, scale_dtype=torch.bfloat16):
    from torchao.quantization import IntxWeightOnlyConfig, MappingType
    from torchao.quantization.granularity import PerAxis, PerGroup

    bits, group, asym = tao.parse(fmt)
    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"),
        granularity=PerAxis(0) if group == tao.ROW else PerGroup(group),
        mapping_type=MappingType.ASYMMETRIC if asym else MappingType.SYMMETRIC,
        scale_dtype=scale_dtype,
    )


def _runtime(weight: torch.Tensor, fmt: str, scale_dtype=torch.bfloat16) -> torch.nn.Linear:
    """An nn.Linear holding `weight` (in its dtype), quantized by torchao's quantize_."""
    from torchao.quantization import quantize_

    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
    quantize_(lin, _config(fmt, scale_dtype))
    return lin


def _assert_exact(w: torch.Tensor, fmt: str, name: str = "tensor") -> torch.Tensor:
    """quantize_'s tensor == ours: components, dequantized weight (dtype too), storage bytes."""
    held = _runtime(w, fmt).weight
    assert type(held).__name__ == "IntxUnpackedToInt8Tensor"
    q, s, z = tao.quantize(w, fmt)
    assert torch.equal(q, held.qdata) and torch.equal(s, held.scale) and torch.equal(z, held.zero_point), (name, fmt)
    ours = T.simulate(w, fmt, name)
    runtime = held.dequantize()
    assert ours.dtype == runtime.dtype == w.dtype and torch.equal(ours, runtime), (name, fmt, w.dtype)
    stored = sum(getattr(held, k).nbytes for k in held.tensor_data_names)
    assert T.storage_bytes(tuple(w.shape), fmt, name) == stored, (name, fmt)
    return ours


# ---------------------------------------------------------------- every format, fast tier
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
def test_every_format_equals_quantize_(dtype):
    """All 80 quantized formats, bf16 / fp32 / fp16 weights of 512-wide rows (every group
    size fits): bit-identical qdata, scale, zero_point and dequantized weights, and
    storage_bytes == the bytes of the three tensors torchao holds."""
    w = _weight((12, 512), dtype)
    assert T.legal_formats(tuple(w.shape)) == tuple(tao.FORMATS)
    for fmt in QUANTIZED:
        _assert_exact(w, fmt)


@pytest.mark.parametrize("shape", SMOLLM2_SHAPES)
def test_smollm2_shapes_representative(shape):
    """SmolLM2's four shapes (bf16), a representative set of legal formats."""
    w = _weight(shape)
    for fmt in ("int1-g32-asym", "int2-g32", "int4-g32", "int4-g64-asym", "int8-row", "int3-row-asym"):
        _assert_exact(w, fmt)
    if shape[1] == 1536:
        _assert_exact(w, "int4-g256")
        _assert_exact(w, "int5-g128-asym")


def test_forward_equals_linear_with_simulated_weights():
    """The quantized module's forward is F.linear(x, dequantize()) (weight-only: the
    activations are not quantized), so it equals F.linear with the simulated weights."""
    w = _weight((64, 576))
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for fmt in ("int4-g32", "int2-g64-asym", "int8-row"):
        lin = _runtime(w, fmt)
        with torch.no_grad():
            assert torch.equal(lin(x), torch.nn.functional.linear(x, T.simulate(w, fmt)))


def test_bf16_model_is_the_default_config():
    """For a bf16 weight, the formats' scale_dtype=bf16 changes nothing: quantize_ with the
    default config (scale_dtype=None) holds the same tensors."""
    w = _weight((32, 576))
    for fmt in ("int4-g32", "int3-row-asym"):
        a, b = _runtime(w, fmt).weight, _runtime(w, fmt, scale_dtype=None).weight
        assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.tensor_data_names)
    # while an fp32 model's default keeps fp32 scales: 4 + 1 bytes per group, not 2 + 1
    held = _runtime(w.float(), "int4-g32", scale_dtype=None).weight
    assert held.scale.dtype == torch.float32 and held.qdata.dtype == torch.int8


def test_only_unpacked_int8_storage():
    """IntxWeightOnlyConfig in torchao 0.18 stores sub-byte codes one per int8 byte: every
    other IntxPackingFormat is refused by its quantize_ handler, so nothing is bit-packed."""
    import dataclasses

    import torchao
    from torchao.quantization import quantize_
    from torchao.quantization.quantize_.workflows.intx.intx_packing_format import IntxPackingFormat

    assert torchao.__version__ == tao.VERSION
    for packing in IntxPackingFormat:
        if packing == IntxPackingFormat.UNPACKED_TO_INT8:
            continue
        lin = torch.nn.Linear(64, 8, bias=False)
        with pytest.raises(ValueError, match="Unsupported packing format"):
            quantize_(lin, dataclasses.replace(_config("int4-g32"), intx_packing_format=packing))
    held = _runtime(_weight((8, 64)), "int2-g32").weight
    assert held.qdata.dtype == torch.int8 and held.qdata.shape == (8, 64)
    assert int(held.qdata.min()) >= -2 and int(held.qdata.max()) <= 1


def test_unquantised_and_float64():
    w = _weight((8, 64), torch.float32)
    assert torch.equal(T.simulate(w, "bf16"), w.bfloat16()) and torch.equal(T.simulate(w, "fp32"), w)
    assert T.bits_per_weight((8, 64), "bf16") == 16 and T.bits_per_weight((8, 64), "fp32") == 32
    # float64 is quantized as its float32 cast (torchao takes fp32 / bf16 / fp16 only)
    assert torch.equal(T.simulate(w.double(), "int4-g32"), T.simulate(w, "int4-g32"))


# ---------------------------------------------------------------- refusals, storage, proxies
def test_refusals_name_tensor_shape_and_legal_formats():
    with pytest.raises(ConfigError) as e:
        T.check("int4-g128", (576, 576), "model.layers.3.self_attn.q_proj")
    msg = str(e.value)
    assert msg.startswith("model.layers.3.self_attn.q_proj [576, 576]: torchao format 'int4-g128' needs a row "
                          "length (in_features) that is a multiple of its group size 128, got 576; legal for this "
                          "tensor: int1-g32, int1-g64, int1-row, int2-g32")
    assert "g128" not in msg.split("legal")[1] and "g256" not in msg and msg.endswith("int8-row-asym, bf16, fp32")
    with pytest.raises(ConfigError, match=r"'int9-g32' is not a torchao format; legal for this tensor: int1-g32"):
        T.simulate(torch.zeros(4, 64), "int9-g32", "w")
    with pytest.raises(ConfigError, match="2-D"):
        T.simulate(torch.zeros(64), "int4-g32")
    with pytest.raises(ConfigError, match="NaN"):
        T.simulate(torch.full((1, 32), float("inf")), "int4-g32")
    assert T.legal_formats((576, 1536)) == tuple(tao.FORMATS)
    assert len(T.legal_formats((576, 576))) == 50 and "int4-row" in T.legal_formats((3, 77))
    assert get_target("torchao") is T


# bits per weight for SmolLM2's shapes (docs/targets.md): 8 + 24 / group, whatever the bits.
def test_bits_per_weight_table():
    for b in tao.BITS:
        for suffix in ("", "-asym"):
            assert T.bits_per_weight((576, 576), f"int{b}-g32{suffix}") == 8.75
            assert T.bits_per_weight((192, 576), f"int{b}-g64{suffix}") == 8.375
            assert T.bits_per_weight((576, 1536), f"int{b}-g128{suffix}") == 8.1875
            assert T.bits_per_weight((576, 1536), f"int{b}-g256{suffix}") == 8.09375
            assert T.bits_per_weight((1536, 576), f"int{b}-row{suffix}") == pytest.approx(8 + 24 / 576)
            assert T.bits_per_weight((576, 1536), f"int{b}-row{suffix}") == pytest.approx(8 + 24 / 1536)


def test_theta_proxies():
    from coalora.quant.setting import QuantSetting
    from coalora.quant.targets.proxy import THETA_PROXY, theta_proxy

    assert set(THETA_PROXY["torchao"]) == set(tao.FORMATS)
    assert theta_proxy("torchao", "int4-g32") == QuantSetting(4, 8, "bf16", 32, 16)
    assert theta_proxy("torchao", "int1-g64-asym") == QuantSetting(2, 8, "bf16", 64, 16)
    assert theta_proxy("torchao", "int6-g256") == QuantSetting(8, 8, "bf16", 64, 16)
    assert theta_proxy("torchao", "int5-row") == QuantSetting(4, 8, "bf16", 64, 16)
    assert theta_proxy("torchao", "bf16") == QuantSetting(8, 8, "fp32", 16, 16)


def test_space_and_configuration(tmp_path, capsys):
    """The registry carries the target through: `coalora space --target torchao`, a
    TARGET:FORMAT configuration and its JSON round trip."""
    import argparse
    import json

    from conftest import make_tiny_llama

    from coalora.cli import space as cli_space
    from coalora.space import ConfigSpace

    model = make_tiny_llama()
    model.save_pretrained(tmp_path)
    assert cli_space.run(argparse.Namespace(model=str(tmp_path), config="int4-g32", json=True, target="torchao")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "torchao" and out["n_matrices"] == 14 and out["avg_bits"] == 8.75
    assert cli_space.run(argparse.Namespace(model=str(tmp_path), config="torchao:int4-row", json=True, target="torchao")) == 0
    assert json.loads(capsys.readouterr().out)["formats"] == {"int4-row": 14}
    space = ConfigSpace.from_model(model, "tiny-llama")
    c = space.load("torchao:int2-g32-asym")
    assert c.target == "torchao" and set(c.formats) == {"int2-g32-asym"} and c.avg_bits == 8.75
    assert space.from_dict(json.loads(json.dumps(c.to_dict()))) == c


# ---------------------------------------------------------------- real model
REAL_EVERY_MATRIX = ("int1-g32-asym", "int2-g32", "int3-g64-asym", "int4-g32", "int4-g32-asym", "int4-row",
                     "int5-g64", "int6-row-asym", "int8-g32", "int8-row")


@pytest.mark.real
def test_all_smollm2_matrices_exact(real_model):
    """All 210 SmolLM2-135M matrices in bf16 (the checkpoint's dtype): a representative set of
    10 formats (every bit width, both mappings, groups 32 / 64 / row) on every matrix, and every
    legal format (50 on 576-wide rows, 82 on down_proj) on the 7 matrices of layers 0 and 29;
    plus the fp32 weights coalora evaluates with, int4-g32, on every matrix."""
    from coalora.space import ConfigSpace

    model, _ = real_model
    space = ConfigSpace.from_model(model, "smollm2-135m")
    modules = dict(model.named_modules())
    assert len(space.matrices) == 210
    for m in space.matrices:
        w = modules[m.name].weight.detach()
        every = ".layers.0." in m.name or ".layers.29." in m.name
        fmts = [f for f in T.legal_formats(m.shape) if f not in tao.UNQUANTISED] if every else REAL_EVERY_MATRIX
        wb = w.to(torch.bfloat16)
        for fmt in fmts:
            _assert_exact(wb, fmt, m.name)
        _assert_exact(w, "int4-g32", m.name)


# ---------------------------------------------------------------- allocation
def test_allocate_torchao_on_a_tiny_model():
    """`coalora allocate --target torchao` works through the shared target allocator: legal
    formats, the budget met, and since storage depends on the group only, the ILP never
    spends bytes on a format that a same-size format beats (int1 symmetric: all zeros)."""
    from conftest import make_tiny_llama

    from coalora.search.target_alloc import allocate_target, compute_target_costs
    from coalora.space import ConfigSpace

    model = make_tiny_llama(seed=4)
    space = ConfigSpace.from_model(model, "tiny-llama")
    table = compute_target_costs(model, space, "torchao")
    assert table.storage.formats == tuple(tao.FORMATS)
    lo, hi = table.storage.min_bits, table.storage.max_bits
    # cheapest: one group per row (448 rows of 64 and 64 of 128 per layer, 36,864 weights); fp32 the dearest
    assert lo == pytest.approx(8 + 24 * 512 / 36864) and hi == 32
    for budget in (lo, 8.4, 8.8, 12.0, hi):
        got = {m: allocate_target(table, budget, m) for m in ("fast", "ilp")}
        for res in got.values():
            for mat, f in zip(space.matrices, res.config.formats):
                assert f in T.legal_formats(mat.shape)
            assert res.config.avg_bits <= budget and res.config.target == "torchao"
        assert got["ilp"].total_error <= got["fast"].total_error
        assert not any(f.startswith("int1-") and not f.endswith("asym") for f in got["ilp"].config.formats)
