"""The adapted layer and CoaLoraModel on tiny random models."""

from __future__ import annotations

import pytest
import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.lora import CoaLoraLinear, CoaLoraModel, LoraSpec
from coalora.lora.switcher import WeightSwitcher
from coalora.space import ConfigSpace
from conftest import make_tiny_llama

X = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def randomize_B(model: CoaLoraModel, std: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.adapted.values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * std)


def wrap(spec: LoraSpec | None = None, seed: int = 0) -> CoaLoraModel:
    base = make_tiny_llama(seed=seed)
    return CoaLoraModel(base, ConfigSpace.from_model(base, "tiny-llama"), spec or LoraSpec(rank=4))


@pytest.mark.parametrize("field,value", [("rank", 0), ("alpha", -1.0), ("dropout", 1.0), ("use_theta", "yes"),
                                         ("theta_hidden", 2.5), ("theta_embed", True)])
def test_spec_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"'{field}' has value {value!r}; allowed"):
        LoraSpec(**{field: value})


def test_spec_round_trips_and_rejects_unknown_keys():
    spec = LoraSpec(rank=8, alpha=16, dropout=0.1, use_theta=False)
    assert LoraSpec.from_dict(spec.to_dict()) == spec
    assert spec.scaling == 2.0
    with pytest.raises(ConfigError, match="unknown LoraSpec field.*'rnak'"):
        LoraSpec.from_dict({"rnak": 4})


def test_zero_B_gives_exactly_the_quantized_base(tiny_space):
    cm = wrap()
    ref = make_tiny_llama()
    config = tiny_space.sample(1, seed=5)[0]
    WeightSwitcher(ref, tiny_space).apply(config)
    cm.set_configuration(config)
    assert torch.equal(cm(input_ids=X).logits, ref(input_ids=X).logits)


def test_layer_computes_base_plus_scaled_BMA():
    lin = torch.nn.Linear(6, 5, bias=True)
    layer = CoaLoraLinear(lin, rank=3, scaling=2.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    layer.M = torch.eye(3) + 0.1 * torch.randn(3, 3)
    x = torch.randn(4, 6)
    W = lin.weight + 2.0 * layer.lora_B.weight @ layer.M @ layer.lora_A.weight
    torch.testing.assert_close(layer(x), x @ W.T + lin.bias)
    torch.testing.assert_close(layer.delta_weight(), W - lin.weight)


def test_U_zero_gives_plain_lora(tiny_space):
    with_theta = wrap(LoraSpec(rank=4, theta_init_std=0.5))
    plain = wrap(LoraSpec(rank=4, use_theta=False))
    assert plain.theta is None
    randomize_B(with_theta)
    randomize_B(plain)
    for a, b in zip(with_theta.adapted.values(), plain.adapted.values()):
        assert torch.equal(a.lora_A.weight, b.lora_A.weight)  # same seed, same A
    config = tiny_space.preset("nf3")
    with_theta.set_configuration(config)
    plain.set_configuration(config)
    assert not torch.allclose(with_theta(input_ids=X).logits, plain(input_ids=X).logits)
    with torch.no_grad():
        with_theta.theta.fc2.weight.zero_()
        with_theta.theta.fc2.bias.zero_()
    # θ changed in place: the next forward recomputes M without another set_configuration.
    torch.testing.assert_close(with_theta(input_ids=X).logits, plain(input_ids=X).logits, rtol=0, atol=1e-6)


def test_gradients_reach_A_B_theta_and_not_the_base(tiny_space):
    cm = wrap(LoraSpec(rank=4, theta_init_std=0.1))
    randomize_B(cm)
    cm.set_configuration(tiny_space.sample(1, seed=2)[0], train=True)
    cm(input_ids=X).logits.square().mean().backward()
    names = [n for n, _ in cm.named_trainable_parameters()]
    assert any(".lora_A." in n for n in names) and any(".lora_B." in n for n in names)
    assert any(n.startswith("theta.") for n in names)
    for n, p in cm.named_trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for n, p in cm.model.named_parameters():
        if ".lora_" not in n:
            assert not p.requires_grad and p.grad is None, n


def test_inference_mode_keeps_theta_out_of_the_graph(tiny_space):
    cm = wrap(LoraSpec(rank=4, theta_init_std=0.1))
    randomize_B(cm)
    cm.set_configuration(tiny_space.preset("nf4"))
    cm(input_ids=X).logits.square().mean().backward()
    assert all(p.grad is None for p in cm.theta.parameters())
    assert all(layer.lora_B.weight.grad is not None for layer in cm.adapted.values())


def test_training_mode_allows_several_backward_passes_per_configuration(tiny_space):
    cm = wrap(LoraSpec(rank=4, theta_init_std=0.1))
    randomize_B(cm)
    cm.set_configuration(tiny_space.preset("nf3"), train=True)
    cm(input_ids=X).logits.mean().backward()
    g1 = cm.theta.fc2.weight.grad.clone()
    cm(input_ids=X).logits.mean().backward()  # a second micro-batch: a fresh θ graph
    torch.testing.assert_close(cm.theta.fc2.weight.grad, 2 * g1)


def test_same_configuration_gives_bit_identical_outputs(tiny_space):
    cm = wrap(LoraSpec(rank=4, theta_init_std=0.1))
    randomize_B(cm)
    a, b = tiny_space.sample(2, seed=7)
    cm.set_configuration(a)
    first = cm(input_ids=X).logits
    cm.set_configuration(a)
    assert torch.equal(cm(input_ids=X).logits, first)
    cm.set_configuration(b)
    assert not torch.equal(cm(input_ids=X).logits, first)
    cm.set_configuration(a)
    assert torch.equal(cm(input_ids=X).logits, first)
    cm.switcher.clear_cache()  # re-quantizing from scratch gives the same weights too
    cm.set_configuration(b)
    cm.set_configuration(a)
    assert torch.equal(cm(input_ids=X).logits, first)


def test_set_configuration_requantizes_only_changed_matrices(tiny_space):
    cm = wrap()
    base = tiny_space.preset("nf4")
    assert cm.set_configuration(base) == tiny_space.n_matrices
    name = tiny_space.matrices[3].name
    one = base.with_settings({name: base.setting(name).replace(bits=2)})
    assert cm.set_configuration(one) == 1
    assert cm.set_configuration(one) == 0


def test_theta_runs_once_per_set_configuration(tiny_space):
    cm = wrap()
    calls = []
    cm.theta.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    cm.set_configuration(tiny_space.preset("nf4"))
    cm(input_ids=X)
    cm(input_ids=X)
    assert calls == [(tiny_space.n_matrices, 4, 4)]


def test_bf16_compute_is_close_to_fp32(tiny_space):
    cm32 = wrap(LoraSpec(rank=4, theta_init_std=0.1))
    base16 = make_tiny_llama().to(torch.bfloat16)
    cm16 = CoaLoraModel(base16, ConfigSpace.from_model(base16, "tiny-llama"), LoraSpec(rank=4, theta_init_std=0.1))
    randomize_B(cm32)
    randomize_B(cm16)
    config = tiny_space.preset("nf8")
    cm32.set_configuration(config)
    cm16.set_configuration(config)
    out16 = cm16(input_ids=X).logits
    assert out16.dtype == torch.bfloat16
    assert cm16.adapted[tiny_space.matrices[0].name].lora_A.weight.dtype == torch.float32
    torch.testing.assert_close(out16.float(), cm32(input_ids=X).logits, rtol=0.05, atol=0.05)
    assert torch.equal(cm16(input_ids=X).logits, out16)


def test_unwrap_restores_the_base_model(tiny_space):
    cm = wrap()
    ref = make_tiny_llama()(input_ids=X).logits
    randomize_B(cm)
    cm.set_configuration(tiny_space.preset("nf2"))
    base = cm.unwrap()
    assert not any(isinstance(m, CoaLoraLinear) for m in base.modules())
    assert torch.equal(base(input_ids=X).logits, ref)


def test_forward_before_a_configuration_and_foreign_configurations_are_refused(tiny_space):
    cm = wrap()
    with pytest.raises(RuntimeError, match="set_configuration"):
        cm(input_ids=X)
    other = make_tiny_llama(n_layers=3)
    foreign = ConfigSpace.from_model(other, "other").preset("nf4")
    with pytest.raises(ModelMismatchError, match="model 'other'"):
        cm.set_configuration(foreign)


def test_dropout_is_active_only_in_train_mode(tiny_space):
    cm = wrap(LoraSpec(rank=4, dropout=0.5))
    randomize_B(cm, std=0.5)
    cm.set_configuration(tiny_space.preset("nf4"))
    ev = cm(input_ids=X).logits
    cm.train()
    torch.manual_seed(0)
    assert not torch.equal(cm(input_ids=X).logits, ev)
    cm.eval()
    assert torch.equal(cm(input_ids=X).logits, ev)


# ---- merged inference weights (issue 13) ------------------------------------------------------
def _logits(cm: CoaLoraModel, merged: bool, bf16: bool = False) -> torch.Tensor:
    """Logits of X with the merged path on or off, under no_grad (as the eval harness scores),
    in bf16 autocast when `bf16` (the eval's compute_context)."""
    cm.merge_for_inference = merged
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        return cm(input_ids=X).logits.float()


def _adapted(seed: int = 0) -> CoaLoraModel:
    # B ~ 0.05: the adapter already moves the logits by ~1.3 (they are ~0.5 in size), while
    # s·BMA stays about the size of the tiny model's base weights (std 0.02); with a much larger
    # adapter, fp32 cancellation between W and sBMA alone exceeds atol 1e-5.
    cm = wrap(LoraSpec(rank=4, theta_init_std=0.3), seed=seed)
    randomize_B(cm, std=0.05)
    cm.eval()
    return cm


def test_merged_equals_unmerged_fp32(tiny_space):
    cm = _adapted()
    cm.set_configuration(tiny_space.sample(1, seed=3)[0])
    ref = _logits(cm, merged=False)
    got = _logits(cm, merged=True)
    assert cm.merge_stats["merged"] == tiny_space.n_matrices
    layer = next(iter(cm.adapted.values()))
    assert layer.merged_weight.dtype == torch.float32 and not layer.use_merged  # only set inside a forward
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # the adapter really is in the merged weights: different from the quantized base
    with cm.disable_adapter():
        assert not torch.allclose(_logits(cm, merged=True), ref, atol=1e-3)


def test_merged_bf16_is_stored_in_bf16_and_as_close_to_fp32_as_unmerged(tiny_space):
    # Tolerance: both bf16 paths round to 8 significant bits (relative step 2^-8 = 0.4 %), at
    # different points: unmerged rounds Q(W0), activations and the adapter's factors
    # separately, merged rounds the sum Q(W0) + s·BMA once. On this tiny model (logits ~0.5)
    # either bf16 path is 0.002 from fp32 on average and up to ~0.1 at worst (measured over
    # 4 seeds x 3 configurations); merged and unmerged bf16 differ from each other by as much
    # (max 0.02-0.06). So the test asks: merged bf16 is as close to fp32 as unmerged bf16
    # (mean error within 1.5x + 1e-3), within 0.15 everywhere, and stored in bf16.
    cm = _adapted()
    for config in (tiny_space.preset("nf4"), *tiny_space.sample(2, seed=11)):
        cm.set_configuration(config)
        ref32 = _logits(cm, merged=False)
        torch.testing.assert_close(_logits(cm, merged=True), ref32, rtol=0, atol=1e-5)  # fp32 merge first
        got = _logits(cm, merged=True, bf16=True)  # the dtype changed: re-merged in bf16
        layer = next(iter(cm.adapted.values()))
        assert layer.merged_weight.dtype == torch.bfloat16
        unmerged16 = _logits(cm, merged=False, bf16=True)
        err_m, err_u = (got - ref32).abs(), (unmerged16 - ref32).abs()
        assert err_m.mean() <= 1.5 * err_u.mean() + 1e-3, (err_m.mean(), err_u.mean())
        assert err_m.max() <= 0.15 and (got - unmerged16).abs().max() <= 0.15
        assert torch.equal(_logits(cm, merged=True, bf16=True), got)  # a second forward reuses the merge


def test_merged_bf16_casts_the_tied_head_once_with_the_same_logits(tiny_space):
    cm = _adapted()
    head = cm.model.get_output_embeddings()
    assert head.weight is cm.model.get_input_embeddings().weight  # tied, as in SmolLM2
    config = tiny_space.sample(1, seed=5)[0]
    cm.set_configuration(config)
    got = _logits(cm, merged=True, bf16=True)
    copy = cm._head[1]
    assert copy.dtype == torch.bfloat16 and torch.equal(copy, head.weight.to(torch.bfloat16))
    assert "forward" not in head.__dict__  # the head's own forward is back after the call
    assert torch.equal(_logits(cm, merged=True, bf16=True), got)
    assert cm._head[1] is copy  # cast once, not per forward
    assert cm.merged_cached_bytes() == tiny_space.n_params * 2 + copy.numel() * 2  # counted with the merged weights
    cm.cache_head = False  # autocast casting the fp32 head itself: the same logits, bit for bit
    assert torch.equal(_logits(cm, merged=True, bf16=True), got)
    cm.cache_head = True
    with torch.no_grad():  # an in-place change of the (tied) weights makes a new copy
        head.weight.mul_(1.5)
    changed = _logits(cm, merged=True, bf16=True)
    assert cm._head[1] is not copy and torch.equal(cm._head[1], head.weight.to(torch.bfloat16))
    assert not torch.equal(changed, got)
    _logits(cm, merged=True)  # fp32: nothing to cast; the bf16 copy goes with the merged weights
    cm.release_merged()
    assert cm._head is None and cm.merged_cached_bytes() == 0


def test_merged_adapter_off_gives_the_quantized_base(tiny_space):
    cm = _adapted()
    config = tiny_space.sample(1, seed=4)[0]
    ref_model = make_tiny_llama()
    WeightSwitcher(ref_model, tiny_space).apply(config)
    with torch.no_grad():
        base = ref_model(input_ids=X).logits
    cm.set_configuration(config)
    adapted = _logits(cm, merged=True)
    with cm.disable_adapter():
        assert torch.equal(_logits(cm, merged=True), base)
    assert torch.equal(_logits(cm, merged=True), adapted)  # merged weights survive the detour


def test_for_base_model_never_merges(tiny_space):
    base = make_tiny_llama()
    cm = CoaLoraModel.for_base(base, "tiny-llama")
    cm.set_configuration(tiny_space.preset("nf4"))
    _logits(cm, merged=True)
    assert cm.merge_stats["merged"] == 0
    assert all(layer.merged_weight is None for layer in cm.adapted.values())


def test_merged_follows_configuration_switches(tiny_space):
    cm = _adapted()
    a, b = tiny_space.sample(2, seed=11)
    name = tiny_space.matrices[5].name
    block = tiny_space.matrices[5].block
    one = a.with_settings({m.name: b.setting(m.name) for m in tiny_space.matrices if m.block == block})
    refs = {}
    for c, key in ((a, "a"), (b, "b"), (one, "one")):
        cm.set_configuration(c)
        refs[key] = _logits(cm, merged=False)
    cm.merge_for_inference = True
    n0 = cm.merge_stats["merged"]
    for c, key in ((a, "a"), (b, "b"), (a, "a"), (one, "one"), (a, "a")):
        cm.set_configuration(c)
        torch.testing.assert_close(_logits(cm, merged=True), refs[key], rtol=0, atol=1e-5)
    per_block = sum(1 for m in tiny_space.matrices if m.block == block)
    assert name in [m.name for m in tiny_space.matrices if m.block == block]
    # a and b merged once each; back to a, to `one` (a with b's block: both merged already)
    # and back to a again come from the merged LRU: 14 + 7 + 7 layers
    assert cm.merge_stats["merged"] - n0 == 2 * tiny_space.n_matrices
    assert cm.merge_stats["cache_hits"] == tiny_space.n_matrices + 2 * per_block
    cm.set_configuration(b)
    _logits(cm, merged=True)
    ptrs = [layer.merged_weight.data_ptr() for layer in cm.adapted.values()]
    cm.set_configuration(a)
    _logits(cm, merged=True)
    cm.set_configuration(b)
    _logits(cm, merged=True)
    assert [layer.merged_weight.data_ptr() for layer in cm.adapted.values()] == ptrs  # the same entries, not re-made
    assert cm.merged_cached_bytes() == 2 * tiny_space.n_params * 4  # a's and b's, fp32


def test_merged_lru_keeps_its_budget_but_always_the_live_configuration(tiny_space):
    cm = _adapted()
    one = tiny_space.n_params * 4  # one configuration's merged weights, fp32
    cm.merged_cache_bytes = one + one // 4
    configs = tiny_space.sample(4, seed=3)
    for c in configs:
        cm.set_configuration(c)
        _logits(cm, merged=True)
        assert cm.merged_cached_bytes() <= cm.merged_cache_bytes
    cm.merged_cache_bytes = 1  # less than the live configuration: that one stays, nothing else
    cm.set_configuration(configs[0])
    ref = _logits(cm, merged=False)
    torch.testing.assert_close(_logits(cm, merged=True), ref, rtol=0, atol=1e-5)
    assert cm.merged_cached_bytes() == one


def test_merged_is_invalidated_by_an_optimizer_step(tiny_space):
    cm = _adapted()
    config = tiny_space.sample(1, seed=6)[0]
    cm.set_configuration(config)
    before = _logits(cm, merged=True)
    opt = torch.optim.SGD(cm.trainable_parameters(), lr=0.1)
    cm.train()
    cm.set_configuration(config, train=True)
    cm(input_ids=X).logits.square().mean().backward()
    opt.step()
    cm.eval()
    cm.set_configuration(config)
    after = _logits(cm, merged=True)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _logits(cm, merged=False), rtol=0, atol=1e-5)
    # A or B alone changed in place (θ untouched): its layer is re-merged on the next forward
    layer = next(iter(cm.adapted.values()))
    n0 = cm.merge_stats["merged"]
    with torch.no_grad():
        layer.lora_A.weight.mul_(2.0)
    torch.testing.assert_close(_logits(cm, merged=True), _logits(cm, merged=False), rtol=0, atol=1e-5)
    assert cm.merge_stats["merged"] - n0 == 1
    with torch.no_grad():  # θ changed in place without set_configuration: every layer re-merged
        cm.theta.fc2.bias.add_(0.1)
    torch.testing.assert_close(_logits(cm, merged=True), _logits(cm, merged=False), rtol=0, atol=1e-5)


def test_training_and_grad_forwards_stay_unmerged(tiny_space):
    cm = _adapted()
    cm.set_configuration(tiny_space.preset("nf4"))
    cm(input_ids=X).logits.sum().backward()  # grad enabled: unmerged, so B gets its gradient
    assert cm.merge_stats["merged"] == 0
    assert all(layer.lora_B.weight.grad is not None for layer in cm.adapted.values())
    cm.set_configuration(tiny_space.preset("nf4"), train=True)
    with torch.no_grad():
        cm(input_ids=X)
    assert cm.merge_stats["merged"] == 0
    assert cm.prepare_inference() == 0
    cm.set_configuration(tiny_space.preset("nf4"))
    assert cm.prepare_inference(torch.bfloat16) == tiny_space.n_matrices
    assert cm.prepare_inference(torch.bfloat16) == 0
    cm.unwrap()
    assert all(layer.merged_weight is None for layer in cm.adapted.values())
