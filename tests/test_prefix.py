"""Prefix reuse (issue 13, coalora/lora/prefix.py): forwards that start at the first block whose
input is not cached give bit-identical logits (torch.equal) to a full forward."""

from __future__ import annotations

import contextlib

import pytest
import torch

from coalora.eval import scoring
from coalora.lora import CoaLoraModel, LoraSpec, budget
from coalora.lora.prefix import PrefixCache
from coalora.space import ConfigSpace
from conftest import make_tiny_llama

N_BLOCKS = 6
SEQS = [[5, 9, 11, 3, 7, 2, 8], [4, 4, 1], [17, 3, 9, 9, 30, 1, 2, 6, 6, 12], [100, 7, 7, 7, 3]]


def _model(seed: int = 0, adapter: bool = True, **kw) -> CoaLoraModel:
    """A 6-block tiny Llama with a random adapter; every boundary kept (stride 1) unless `kw` says otherwise."""
    base = make_tiny_llama(n_layers=N_BLOCKS, seed=seed)
    space = ConfigSpace.from_model(base, "tiny-llama")
    if not adapter:
        cm = CoaLoraModel.for_base(base, "tiny-llama")
        cm.prefix.stride = 1
        return cm.eval()
    cm = CoaLoraModel(base, space, LoraSpec(rank=4, theta_init_std=0.3), **{"prefix_stride": 1, **kw})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in cm.adapted.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)
    return cm.eval()


def _ctx(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _label_logits(cm: CoaLoraModel, bf16: bool, reuse: bool) -> torch.Tensor:
    """The eval's label scoring: left-padded batch, explicit positions, use_cache=False, logits_to_keep=1."""
    cm.prefix_reuse = reuse
    with _ctx(bf16):
        return scoring.last_token_logprobs(cm, SEQS, pad_id=0)


def _nll(cm: CoaLoraModel, bf16: bool, reuse: bool) -> torch.Tensor:
    cm.prefix_reuse = reuse
    with _ctx(bf16):
        return scoring.sequence_nll(cm, SEQS, pad_id=0)[0]


def _one_block(space: ConfigSpace, a, b, block: int):
    return a.with_settings({m.name: b.setting(m.name) for m in space.matrices if m.block == block})


def _check(cm, config, bf16, score=_label_logits):
    """Full forward first, then the reusing one: equal bit for bit. -> blocks skipped by the reuse."""
    cm.set_configuration(config)
    ref = score(cm, bf16, reuse=False)
    before = cm.prefix.stats["blocks_skipped"]
    got = score(cm, bf16, reuse=True)
    assert torch.equal(got, ref)
    return cm.prefix.stats["blocks_skipped"] - before


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("merged", [True, False])
def test_one_block_changes_whole_changes_and_back_and_forth_are_bit_identical(bf16, merged):
    cm = _model()
    cm.merge_for_inference = merged
    space = cm.space
    a, b, c = space.sample(3, seed=5)
    assert _check(cm, a, bf16) == 0  # nothing cached yet
    assert _check(cm, a, bf16) == N_BLOCKS  # same configuration again: every block skipped
    assert _check(cm, b, bf16) == 0  # every block changed
    assert _check(cm, a, bf16) == N_BLOCKS  # back: a's boundaries are still cached
    assert _check(cm, b, bf16) == N_BLOCKS  # and forth
    for block in (N_BLOCKS - 1, 2, 0, 4):
        assert _check(cm, _one_block(space, a, c, block), bf16) == block  # recompute from the moved block on
    assert _check(cm, _one_block(space, a, c, 2), bf16) == N_BLOCKS  # back to an earlier slider position


@pytest.mark.parametrize("bf16", [False, True])
def test_adapter_off_and_base_models_are_bit_identical_and_keyed_apart(bf16):
    cm = _model()
    space = cm.space
    a, b = space.sample(2, seed=7)
    _check(cm, a, bf16)
    with cm.disable_adapter():
        assert _check(cm, a, bf16) == 0  # the quantized base is a different computation
        assert _check(cm, _one_block(space, a, b, 3), bf16) == 3
    with_adapter = _label_logits(cm, bf16, reuse=True)
    cm.set_configuration(a)
    assert torch.equal(_label_logits(cm, bf16, reuse=True), _label_logits(cm, bf16, reuse=False))
    assert not torch.equal(_label_logits(cm, bf16, reuse=True), with_adapter)
    base = _model(adapter=False)
    assert _check(base, a, bf16) == 0
    assert _check(base, _one_block(space, a, b, 4), bf16) == 4


@pytest.mark.parametrize("bf16", [False, True])
def test_stride_keeps_every_other_boundary_and_the_last(bf16):
    cm = _model(prefix_stride=2)
    a, b, c = cm.space.sample(3, seed=8)
    assert _check(cm, a, bf16) == 0
    assert len(cm.prefix) == 3  # boundaries 2, 4, 6 (N_BLOCKS = 6: the last is even)
    assert _check(cm, a, bf16) == N_BLOCKS
    assert _check(cm, _one_block(cm.space, a, b, 5), bf16) == 4  # from the kept boundary <= 5
    assert _check(cm, _one_block(cm.space, a, c, 2), bf16) == 2
    assert _check(cm, _one_block(cm.space, a, c, 1), bf16) == 0


def test_sequence_nll_reuses_too():
    cm = _model()
    a, b = cm.space.sample(2, seed=2)
    _check(cm, a, True, score=_nll)
    assert _check(cm, _one_block(cm.space, a, b, 5), True, score=_nll) == 5


def test_eviction_keeps_results_identical_and_the_budget():
    # one boundary of the 4 x 10 batch: 4 * 10 * 64 * 4 bytes = 10,240 (fp32)
    cm = _model(prefix_bytes=3 * 10_240)
    space = cm.space
    a, b = space.sample(2, seed=9)
    for config in (a, _one_block(space, a, b, 5), _one_block(space, a, b, 1), b, a, _one_block(space, a, b, 4)):
        for bf16 in (False, True):
            _check(cm, config, bf16)
            assert cm.prefix.nbytes <= cm.prefix.budget_bytes and len(cm.prefix) <= 3
    assert cm.prefix.stats["evicted"] > 0
    # the last 3 boundaries of the last configuration survived: a repeat skips every block
    assert _check(cm, _one_block(space, a, b, 4), True) == N_BLOCKS


def test_a_hit_refreshes_the_prefix_chain():
    cache = PrefixCache(budget_bytes=4 * 40)  # 4 entries of 10 float32s
    t = torch.zeros(10)
    for k in (b"x1", b"x2", b"x3"):
        cache.put(k, t)
    layers = torch.nn.ModuleList([torch.nn.Identity() for _ in range(3)])
    cache.run(layers, [b"x0", b"x1", b"x2", b"x3"], lambda: None)
    cache.put(b"other", t)
    cache.put(b"other2", t)  # evicts the least recently used: x1 (the chain was refreshed x1, x2, x3 in order)
    assert b"x1" not in cache and b"x2" in cache and b"x3" in cache
    assert all("forward" not in layer.__dict__ for layer in layers)  # the layers are restored


def test_weights_changing_in_place_change_the_keys():
    cm = _model()
    config = cm.space.sample(1, seed=3)[0]
    _check(cm, config, False)
    layer = cm.adapted[next(m.name for m in cm.space.matrices if m.block == 3)]
    with torch.no_grad():
        layer.lora_B.weight.mul_(1.5)  # as an optimizer step or a load does
    assert _check(cm, config, False) == 3
    with torch.no_grad():
        cm.theta.fc2.bias.add_(0.1)  # θ changed: every M changes
    assert _check(cm, config, False) == 0


def test_no_reuse_for_grad_training_kv_cache_and_other_calls():
    cm = _model()
    config = cm.space.preset("nf4")
    cm.set_configuration(config)
    ids = torch.tensor(SEQS[0])[None]
    with torch.no_grad():
        cm(input_ids=ids, use_cache=False)  # fills the cache
        n = cm.prefix.stats["forwards"]
        cm(input_ids=ids)  # use_cache defaults to the config's True: a KV cache is built
        cm(ids, use_cache=False)  # positional
        cm(input_ids=ids, use_cache=False, output_hidden_states=True)  # other keyword arguments
        scoring.shared_context_logprobs(cm, [SEQS[0]], [[[3, 4], [5]]], pad_id=0)  # multiple choice: KV cache
    cm(input_ids=ids, use_cache=False).logits.sum().backward()  # grad on
    cm.train()
    cm.set_configuration(config, train=True)
    cm(input_ids=ids, use_cache=False).logits.sum().backward()
    assert cm.prefix.stats["forwards"] == n
    assert all(B.lora_B.weight.grad is not None for B in cm.adapted.values())


def test_choice_scoring_is_unchanged_by_reuse():
    cm = _model()
    cm.set_configuration(cm.space.preset("nf4"))
    ctxs, conts = [SEQS[0], SEQS[2]], [[[3, 4], [5]], [[8], [9, 10, 11]]]
    with torch.no_grad():
        scoring.last_token_logprobs(cm, SEQS)
        got = scoring.shared_context_logprobs(cm, ctxs, conts)
        cm.prefix_reuse = False
        ref = scoring.shared_context_logprobs(cm, ctxs, conts)
    assert all(torch.equal(x, y) for x, y in zip(got, ref))


def test_budgets_come_from_one_place(monkeypatch):
    monkeypatch.setattr(budget, "BUDGET", budget.MemoryBudget(switcher_cache_bytes=123, merged_bytes=0, prefix_bytes=0))
    cm = _model()
    assert cm.switcher.cache_bytes == 123 and cm.prefix.budget_bytes == 0 and cm.merged_bytes == 0
    config = cm.space.preset("nf4")
    cm.set_configuration(config)
    assert cm.prepare_inference() == 0  # the merged copy would exceed merged_bytes: unmerged path
    with torch.no_grad():
        cm(input_ids=torch.tensor(SEQS[:1]), use_cache=False)
    assert cm.prefix.stats["forwards"] == 0 and cm.merge_stats["merged"] == 0
    assert _model(prefix_bytes=10, cache_bytes=7).switcher.cache_bytes == 7
    monkeypatch.undo()
    d = budget.MemoryBudget()
    assert (d.switcher_cache_bytes, d.merged_bytes, d.merged_cache_bytes, d.prefix_bytes, d.prefix_stride) == (
        16 << 20, 256 << 20, 288 << 20, 320 << 20, 3)
    assert CoaLoraModel.for_base(make_tiny_llama(), "tiny-llama").prefix.stride == 3


def test_state_dict_and_unwrap_are_unaffected():
    cm = _model()
    assert not any("_layers" in k for k in cm.state_dict())
    cm.set_configuration(cm.space.preset("nf4"))
    _label_logits(cm, False, reuse=True)
    assert len(cm.prefix) > 0
    cm.unwrap()
    assert len(cm.prefix) == 0


@pytest.mark.real
def test_default_checkpoint_one_block_changes_are_bit_identical():
    """SmolLM2-135M + the shipped adapter, bf16 autocast as the eval runs it: θ runs over all
    210 matrices at once, and each matrix's M must still come out bit for bit the same."""
    from coalora.lora import load_for_eval

    cm = load_for_eval("default", "smollm2-135m").model.eval()
    space = cm.space
    nf4, nf3 = space.preset("nf4"), space.preset("nf3")
    seqs = [list(range(100, 100 + n)) for n in (12, 30, 7, 21)]

    def score(config, reuse):
        cm.set_configuration(config)
        cm.prefix_reuse = reuse
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return scoring.last_token_logprobs(cm, seqs, pad_id=0)

    score(nf4, True)
    for block in (29, 12):
        moved = _one_block(space, nf4, nf3, block)
        ref = score(moved, False)
        skipped = cm.prefix.stats["blocks_skipped"]
        assert torch.equal(score(moved, True), ref)
        assert cm.prefix.stats["blocks_skipped"] - skipped == block - block % cm.prefix.stride
