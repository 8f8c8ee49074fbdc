"""NF-k quantizer: codebooks, bit-packing, the quantize/dequantize pair, storage accounting."""

import math

import pytest
import torch

from coalora.quant import (
    QuantSetting,
    all_settings,
    codebook,
    dequantize,
    fake_quantize,
    formula_bytes,
    packed_bytes,
    quantize,
)
from coalora.quant.nf import _level_lut, _midpoints, double_quantize_scales, nearest_level, nearest_values
from coalora.quant.packing import pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("family", ["nf", "int"])
def test_codebook_shape_range_and_zero(bits, family):
    lv = codebook(bits, family)
    assert lv.shape == (2**bits,)
    assert torch.all(lv[1:] > lv[:-1])
    assert lv[0] == -1.0 and lv[-1] == 1.0
    if family == "nf":
        assert (lv == 0).sum() == 1  # NF codebooks have an exact zero


def test_nf4_codebook_equals_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes.functional")
    _, state = bnb.quantize_4bit(torch.randn(64, 64), blocksize=64, quant_type="nf4")
    torch.testing.assert_close(codebook(4), state.code.float(), atol=1e-6, rtol=0)


def test_reconstruction_matches_bitsandbytes_nf4():
    bnb = pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(192, 576, generator=torch.Generator().manual_seed(0))
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    ref = bnb.dequantize_4bit(q, state, quant_type="nf4")
    ours = dequantize(*quantize(w, QuantSetting(bits=4, block_size=64), double_quant=False))
    # bitsandbytes hard-codes the levels to 7 digits: agreement to float rounding.
    torch.testing.assert_close(ours, ref, atol=1e-6 * w.abs().max().item(), rtol=0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1003])
def test_pack_unpack_round_trip(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_unpack_rejects_wrong_length():
    with pytest.raises(ValueError, match="expected"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 3, 100)


@pytest.mark.parametrize("family", ["nf", "int"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_nearest_level_equals_bucketize_including_midpoints(bits, family):
    mid = _midpoints(bits, family)
    k = _level_lut(bits, family)[0]
    edges = torch.linspace(-1.0, 1.0, k + 1)  # the lookup grid's bin edges, where rounding picks a bin
    x = torch.cat([
        torch.randn(200_000, generator=torch.Generator().manual_seed(1)) * 0.6,
        *(torch.cat([p, torch.nextafter(p, p + 1), torch.nextafter(p, p - 1)]) for p in (mid, edges)),
        torch.tensor([-1.0, 1.0, 0.0, -5.0, 5.0]),
    ])
    want = torch.bucketize(x, mid)
    assert torch.equal(nearest_level(x, bits, family), want)
    assert torch.equal(nearest_values(x, bits, family), codebook(bits, family)[want])  # fake quantization's path


SHAPES = [(64, 64), (192, 576), (37, 51), (5,), (3, 16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "setting",
    [QuantSetting(), QuantSetting(3, 2, "bf16", 16, 16), QuantSetting(2, 3, "fp16", 32, 64), QuantSetting(8, 8, "fp32", 64, 256)],
)
def test_round_trip_is_bit_identical_to_fake_quantize(shape, setting):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    packed, state = quantize(w, setting)
    out = dequantize(packed, state)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert torch.equal(out, fake_quantize(w, setting))
    # Measured bytes are exactly what the storage formula predicts.
    assert packed.nbytes == packed_bytes(w.numel(), setting)


def test_round_trip_keeps_dtype_bf16():
    w = torch.randn(64, 64).to(torch.bfloat16)
    out = dequantize(*quantize(w, QuantSetting()))
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


def test_double_quantized_scales_by_hand():
    # 18 scales, groups of 16: group 0 = the first 16, group 1 = the last 2. Binary-exact values.
    s = torch.full((18,), 0.5)
    s[1], s[2], s[3], s[16], s[17] = 1.0, 0.75, 2.0, 0.625, 1.5
    q, t, offset, s_hat = double_quantize_scales(s, QuantSetting(4, 2, "fp32", 64, 16))
    assert offset.tolist() == [0.5]  # min s
    assert t.dtype == torch.float32 and t.tolist() == [1.5, 1.0]  # max (s - o) per group
    # q = round((s - o) * 3 / t): 0.5 * 3 / 1.5 = 1; 0.25 * 3 / 1.5 = 0.5 rounds to even (0);
    # 0.125 * 3 / 1.0 = 0.375 -> 0
    want_q = [0.0] * 18
    want_q[1], want_q[3], want_q[17] = 1.0, 3.0, 3.0
    assert q.tolist() == want_q
    want_s = [0.5] * 18  # s_hat = q t / 3 + o
    want_s[1], want_s[3], want_s[17] = 1.0, 2.0, 1.5
    assert s_hat.tolist() == want_s


@pytest.mark.parametrize("fmt,want_t", [("bf16", 1.0), ("fp16", 1.0009765625), ("fp32", 1.0009765625)])
def test_second_level_scale_is_rounded_through_its_format(fmt, want_t):
    s = torch.tensor([0.0, 1.0009765625])  # t = 1 + 2^-10: exact in fp16/fp32, 1.0 in bf16 (7-bit mantissa)
    q, t, offset, s_hat = double_quantize_scales(s, QuantSetting(4, 8, fmt, 64, 16))
    assert t.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[fmt]
    assert t.float().tolist() == [want_t] and q.tolist() == [0.0, 255.0]  # 255.25 clamps to 255
    assert s_hat.tolist() == [0.0, want_t]


def test_equal_scales_give_zero_second_level_scale():
    q, t, offset, s_hat = double_quantize_scales(torch.full((5,), 0.25), QuantSetting())
    assert t.tolist() == [0.0] and q.tolist() == [0.0] * 5 and s_hat.tolist() == [0.25] * 5


def test_quantize_stores_exactly_the_shared_scale_quantization():
    from coalora.quant.nf import block_view

    w = torch.randn(37, 51, generator=torch.Generator().manual_seed(3))
    st = QuantSetting(3, 3, "bf16", 16, 16)
    packed, _ = quantize(w, st)
    q, t, offset, _ = double_quantize_scales(block_view(w, 16).abs().amax(dim=1), st)
    assert torch.equal(packed.group_scales, t) and torch.equal(packed.offset, offset)
    assert torch.equal(unpack_codes(packed.scale_codes, 3, q.numel()), q.to(torch.uint8))


@pytest.mark.parametrize("family", ["nf", "int"])
def test_error_falls_as_bits_rise(family):
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    errs = [((w - fake_quantize(w, QuantSetting(bits=b), family)) ** 2).mean().item() for b in (2, 3, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-3 * errs[0]


def test_finer_scales_reduce_error():
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * torch.rand(256, 1) * 3
    coarse = fake_quantize(w, QuantSetting(3, 2, "bf16", 64, 256))
    fine = fake_quantize(w, QuantSetting(3, 8, "fp32", 16, 16))
    assert ((w - fine) ** 2).sum() < ((w - coarse) ** 2).sum()


def test_zero_blocks_and_padding_encode_exactly():
    w = torch.zeros(10, 10)
    w[0, :3] = torch.tensor([1.0, -2.0, 0.5])
    out = dequantize(*quantize(w, QuantSetting()))
    assert torch.all(out[1:] == 0)
    assert out[0, 1] == -2.0  # the absmax of a block is represented exactly by level -1


def test_nan_weights_are_refused():
    w = torch.randn(8, 8)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize(w, QuantSetting())


def test_there_are_432_settings_and_bpp_formula():
    settings = all_settings()
    assert len(settings) == len(set(settings)) == 432
    s = QuantSetting(4, 8, "fp32", 64, 256)
    assert s.bits_per_param == 4 + 8 / 64 + 32 / (64 * 256)
    assert min(x.bits_per_param for x in settings) == pytest.approx(2.0322, abs=1e-4)
    assert max(x.bits_per_param for x in settings) == pytest.approx(8.625)


def test_packed_bytes_vs_formula_overhead_is_padding_and_offset():
    for s in all_settings()[::7]:
        for n in (331776, 110592, 884736, 1000, 17):
            nb = math.ceil(n / s.block_size)
            extra = packed_bytes(n, s) - formula_bytes(n, s)
            # offset (4 bytes) + the zero-padding of the last block + the partial last group
            # of second-level scales + at most one partial byte per bit stream.
            bound = 4 + (nb * s.block_size - n) * s.bits / 8 + {"bf16": 2, "fp16": 2, "fp32": 4}[s.scale_format] + 2
            assert 0 <= extra <= bound, (s, n, extra, bound)


def test_setting_index_round_trip_and_validation():
    from coalora.errors import ConfigError

    for s in all_settings()[::11]:
        assert QuantSetting.from_indices(s.to_indices()) == s
    with pytest.raises(ConfigError, match=r"field 'bits' has value 5; allowed values are 2, 3, 4, 8"):
        QuantSetting(bits=5)
    with pytest.raises(ConfigError, match="scale_format"):
        QuantSetting(scale_format="fp8")
    with pytest.raises(ConfigError, match="bits"):
        QuantSetting(bits=True)
