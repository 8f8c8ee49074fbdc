"""θ: shapes, initialisation, what tells matrices apart, one batched call."""

from __future__ import annotations

import pytest
import torch

from coalora.lora import ConfigHyperNet
from coalora.quant.setting import QuantSetting
from coalora.space import MODULE_TYPES


def codes(setting: QuantSetting, module_type: str, block: int) -> list[int]:
    return list(setting.to_indices()) + [MODULE_TYPES.index(module_type), block]


@pytest.fixture
def theta():
    return ConfigHyperNet(n_blocks=30, rank=16, generator=torch.Generator().manual_seed(0))


def test_shape_and_near_identity_init(theta):
    c = torch.tensor([codes(QuantSetting(), "q_proj", 0), codes(QuantSetting(bits=2), "down_proj", 29)])
    U = theta(c)
    assert U.shape == (2, 16, 16) and U.dtype == torch.float32
    assert theta.gamma.item() == 1.0 and torch.count_nonzero(theta.fc2.bias) == 0
    assert 0 < U.abs().max() < 0.05  # last layer N(0, 1e-3): M = I + U starts close to I


def test_block_module_type_and_setting_each_change_U(theta):
    s = QuantSetting()
    rows = [codes(s, "q_proj", 0), codes(s, "q_proj", 17), codes(s, "up_proj", 0), codes(s.replace(bits=3), "q_proj", 0)]
    U = theta(torch.tensor(rows))
    for i in range(1, 4):
        assert not torch.allclose(U[0], U[i], rtol=0, atol=1e-7), i


def test_one_batched_call_equals_row_by_row(theta):
    g = torch.Generator().manual_seed(1)
    sizes = theta.table_sizes
    c = (torch.rand(50, 7, generator=g) * sizes).long()
    batched = theta(c)
    for i in range(0, 50, 7):
        torch.testing.assert_close(theta(c[i : i + 1])[0], batched[i])


def test_parameter_count_matches_the_method_at_rank_64():
    # docs/design.md, "Algorithm": about 0.54M parameters at r = 64.
    n = sum(p.numel() for p in ConfigHyperNet(n_blocks=32, rank=64).parameters())
    assert 530_000 < n < 550_000


def test_seeded_init_is_reproducible():
    a = ConfigHyperNet(4, 8, generator=torch.Generator().manual_seed(3))
    b = ConfigHyperNet(4, 8, generator=torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_bad_codes_are_refused(theta):
    with pytest.raises(ValueError, match=r"shape \(N, 7\)"):
        theta(torch.zeros(3, 5, dtype=torch.long))
    bad = torch.tensor([codes(QuantSetting(), "q_proj", 30)])  # block 30 of a 30-block model
    with pytest.raises(ValueError, match="out of range"):
        theta(bad)


def test_architecture_describes_the_network(theta):
    arch = theta.architecture()
    assert arch["embedding"] == 8 and arch["hidden"] == 128 and arch["n_blocks"] == 30
    assert arch["n_params"] == sum(p.numel() for p in theta.parameters())
    assert arch["inputs"][-2:] == ["module_type", "block"]


def test_target_inputs_add_format_and_exact_bits():
    """inputs="targets": 9 columns (format kind and exact bits after the 5 fields); the
    architecture names them; a kind or bits row changes U; bad input names the allowed values."""
    from coalora.errors import ConfigError
    from coalora.quant.targets.proxy import THETA_BITS, THETA_FORMATS

    theta = ConfigHyperNet(n_blocks=30, rank=16, generator=torch.Generator().manual_seed(0), inputs="targets",
                           init_std=0.1)
    assert theta.architecture()["inputs"][5:7] == ["format", "exact_bits"] and theta.n_inputs == 9
    s = list(QuantSetting().to_indices())
    nf4 = s + [THETA_FORMATS.index("nf"), THETA_BITS.index(4), MODULE_TYPES.index("q_proj"), 0]
    q4_1 = s + [THETA_FORMATS.index("gguf-offset"), THETA_BITS.index(4), MODULE_TYPES.index("q_proj"), 0]
    q5_1 = s + [THETA_FORMATS.index("gguf-offset"), THETA_BITS.index(5), MODULE_TYPES.index("q_proj"), 0]
    U = theta(torch.tensor([nf4, q4_1, q5_1]))
    assert not torch.allclose(U[0], U[1]) and not torch.allclose(U[1], U[2])
    with pytest.raises(ValueError, match=r"shape \(N, 9\)"):
        theta(torch.tensor([nf4[:7]]))
    with pytest.raises(ConfigError, match="'nf', 'targets'|nf, targets"):
        ConfigHyperNet(n_blocks=2, rank=2, inputs="gguf")
