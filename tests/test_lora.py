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
    with pytest.raises(ModelMismatchError, match="does not fit"):
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
