"""Lean inference memory (issue 13, item 5; docs/app.md, "Memory"): the switcher's originals
in an exactly recoverable compact form, and the live configuration held only as the merged
weights in inference. Every result must stay bit for bit what the eager fp32 path gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from coalora.lora import CoaLoraModel, LoraSpec, budget
from coalora.lora.switcher import CompactWeight, Originals, compact_weight
from coalora.quant.nf import fake_quantize
from coalora.space import ConfigSpace
from conftest import make_tiny_llama

X = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def q4_1_like(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Float32 weights with GGUF Q4_1's structure: per 32 weights fp16 d and m, w = d*q + m."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod())
    q = torch.randint(0, 16, (n // 32, 32), generator=g).float()
    q[:, 0], q[:, 1] = 0, 15
    d = (torch.rand(n // 32, 1, generator=g) * 0.02 + 0.01).half().float()
    m = (-torch.rand(n // 32, 1, generator=g) * 0.1 - 0.05).half().float()
    return (d * q + m).reshape(shape)


def tiny_q4_1_model(seed: int = 0):
    base = make_tiny_llama(seed=seed)
    space = ConfigSpace.from_model(base, "tiny-llama")
    mods = dict(base.named_modules())
    with torch.no_grad():
        for i, m in enumerate(space.matrices):
            w = mods[m.name].weight
            w.copy_(q4_1_like(tuple(w.shape), seed=100 + i))
    return base, space


def build(monkeypatch, lean: bool, seed: int = 0) -> CoaLoraModel:
    """A CoaLoraModel on Q4_1-structured weights: lean (the defaults) or eager (fp32 originals,
    live weights attached, the cache big enough for everything: the path before issue 13.5)."""
    limits = budget.MemoryBudget() if lean else dataclasses.replace(
        budget.MemoryBudget(), lean_inference=False, compact_originals=False, switcher_cache_bytes=448 << 20)
    monkeypatch.setattr(budget, "BUDGET", limits)
    base, space = tiny_q4_1_model(seed)
    model = CoaLoraModel(base, space, LoraSpec(rank=4, theta_init_std=0.1))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.adapted.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
    monkeypatch.undo()
    return model.eval()


def logits(model: CoaLoraModel, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=X, attention_mask=torch.ones_like(X), use_cache=False, **kw).logits


def one_block(config, block: int, bits: int):
    space = config.space
    return config.with_settings({m.name: config.setting(m.name).replace(bits=bits)
                                 for m in space.matrices if m.block == block})


def test_compact_forms_decode_bit_for_bit():
    w = q4_1_like((64, 128))
    c = compact_weight(w)
    assert isinstance(c, CompactWeight) and c.form == "q4_1"
    assert c.nbytes == w.numel() // 2 + w.numel() // 32 * 4  # 0.625 bytes per weight
    assert torch.equal(c.decode(), w) and c.decode().dtype == torch.float32
    b = torch.randn(33, 7).bfloat16().float()  # not a whole number of 32-blocks: bf16 still
    cb = compact_weight(b)
    assert cb.form == "bf16" and torch.equal(cb.decode(), b)
    h = (torch.randn(5, 64) * 1e-2).half().float()  # fp16 values, most not bf16 ones
    assert compact_weight(h).form == "fp16" and torch.equal(compact_weight(h).decode(), h)
    r = torch.randn(64, 64)  # plain float32: kept as it is (a copy)
    cr = compact_weight(r)
    assert isinstance(cr, torch.Tensor) and torch.equal(cr, r) and cr.data_ptr() != r.data_ptr()
    nan = w.clone()
    nan[3, 5] = float("nan")
    assert isinstance(compact_weight(nan), torch.Tensor)  # never lossy
    off = w.clone()
    off[0, 0] += 1e-4  # breaks one block's structure: the whole matrix stays float32
    assert isinstance(compact_weight(off), torch.Tensor)


def test_originals_mapping_reports_what_it_holds():
    ws = {"a": q4_1_like((32, 64)), "b": torch.randn(8, 8), "c": torch.randn(4, 32).bfloat16().float()}
    o = Originals(ws)
    assert [o.form(n) for n in "abc"] == ["q4_1", "fp32", "bf16"]
    assert o.nbytes == 32 * 64 * 5 // 8 + 8 * 8 * 4 + 4 * 32 * 2 == sum(t.numel() * t.element_size() for t in o.held_tensors())
    assert all(torch.equal(o[n], ws[n]) and o[n].dtype == torch.float32 for n in ws)
    assert Originals(ws, compact=False).nbytes == sum(w.numel() * 4 for w in ws.values())


def test_lean_switching_gives_the_eager_logits_bit_for_bit(monkeypatch):
    lean, eager = build(monkeypatch, True), build(monkeypatch, False)
    assert {lean.switcher.originals.form(n) for n in lean.switcher.originals} == {"q4_1"}
    assert {eager.switcher.originals.form(n) for n in eager.switcher.originals} == {"fp32"}
    space = lean.space
    a, b = space.sample(2, seed=3)
    for config in (a, b, a, one_block(a, 1, 2), a, space.preset("nf3"), b):
        lean.set_configuration(config)
        eager.set_configuration(config)
        got = logits(lean)
        assert torch.equal(got, logits(eager))
        assert lean.switcher.attached_bytes() == 0  # the merged copy is the only one
        fresh = build(monkeypatch, True)
        fresh.set_configuration(config)
        assert torch.equal(logits(fresh), got)
    # the prefix cache and merging off in both (the unmerged path): the same bits again
    for m in (lean, eager):
        m.prefix_reuse = m.merge_for_inference = False
    assert torch.equal(logits(lean), logits(eager))
    assert lean.switcher.attached_bytes() == lean.space.n_params * 4  # read back when needed


def test_one_block_move_requantizes_and_remerges_only_its_matrices(monkeypatch):
    model = build(monkeypatch, True)
    a = model.space.preset("nf4")
    model.set_configuration(a)
    logits(model)
    sw, n_block = model.switcher, sum(m.block == 1 for m in model.space.matrices)
    assert sw.released() == set(sw.modules) and all(layer.merged_weight is not None for layer in model.adapted.values())
    q0, m0 = sw.stats["quantized"], model.merge_stats["merged"]
    assert model.set_configuration(one_block(a, 1, 2)) == n_block
    logits(model)
    assert (sw.stats["quantized"] - q0, model.merge_stats["merged"] - m0) == (n_block, n_block)
    h0 = model.merge_stats["cache_hits"]
    model.set_configuration(a)  # back: the block's previous merged weights come from the merged LRU
    logits(model)
    assert sw.stats["quantized"] - q0 == n_block and model.merge_stats["cache_hits"] - h0 == n_block
    assert model.merge_stats["merged"] - m0 == n_block
    assert sw.cached_bytes() <= sw.cache_bytes and sw.attached_bytes() == 0


def test_unmerged_paths_after_lean_inference_read_the_same_weights(monkeypatch):
    lean, eager = build(monkeypatch, True), build(monkeypatch, False)
    a, b = lean.space.sample(2, seed=5)
    for m in (lean, eager):
        m.set_configuration(a)
        logits(m)
        m.set_configuration(b)
        logits(m)
    # adapter off: the base layers' own weights, put back from the cache / originals when read
    with lean.disable_adapter(), eager.disable_adapter():
        assert torch.equal(logits(lean), logits(eager))
    assert lean.switcher.attached_bytes() > 0
    logits(lean)  # merged again: released again
    assert lean.switcher.attached_bytes() == 0
    for name, layer in lean.adapted.items():  # reading a weight gives the quantized weights
        want = fake_quantize(lean.switcher.originals[name], *b.weight_keys()[lean.space.index(name)])
        assert torch.equal(layer.base_layer.weight, want)
    # training after inference-mode switches: same loss and gradients as the eager model
    grads = []
    for m in (lean, eager):
        m.train()
        m.set_configuration(a, train=True)
        loss = m(input_ids=X).logits.float().square().mean()
        loss.backward()
        grads.append([p.grad.clone() for p in m.trainable_parameters()])
        m.zero_grad()
        m.eval()
    assert all(torch.equal(x, y) for x, y in zip(*grads))
    lean.set_configuration(b)
    eager.set_configuration(b)
    assert torch.equal(logits(lean), logits(eager))


def test_unwrap_and_original_weights_after_lean_inference(monkeypatch):
    model = build(monkeypatch, True)
    base_ref, _ = tiny_q4_1_model()
    with torch.no_grad():
        ref = base_ref(input_ids=X).logits
    model.set_configuration(model.space.preset("nf2"))
    logits(model)
    base = model.unwrap()
    assert all(type(mod) is torch.nn.Linear for mod in model.switcher.modules.values())
    with torch.no_grad():
        assert torch.equal(base(input_ids=X).logits, ref)


def test_lean_off_keeps_the_live_weights_attached(monkeypatch):
    model = build(monkeypatch, False)
    model.set_configuration(model.space.preset("nf4"))
    logits(model)
    sw = model.switcher
    assert not sw.lazy and sw.released() == set()
    assert sw.attached_bytes() == model.space.n_params * 4 == sw.originals.nbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_merged_and_prefix_paths_agree(monkeypatch, dtype):
    lean, eager = build(monkeypatch, True), build(monkeypatch, False)
    a, b = lean.space.sample(2, seed=9)
    for config in (a, b, one_block(b, 0, 3), a):
        lean.set_configuration(config)
        eager.set_configuration(config)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            assert torch.equal(logits(lean), logits(eager))
