"""Allocation inside a deployment target (coalora/search/target_alloc.py, `coalora allocate
--target`): only legal formats, the target's real bytes as cost, the budget met exactly,
and the ILP optimal against an exact dynamic program."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coalora.cli import main
from coalora.errors import ConfigError
from coalora.quant.targets import get_target
from coalora.search.target_alloc import (
    StorageTable, TargetCostTable, allocate_target, allocate_target_fast, allocate_target_ilp, compute_target_costs,
    load_target_costs,
)
from coalora.space import ConfigSpace, TargetConfiguration
from conftest import make_tiny_llama
from test_target_config import smol_space  # noqa: F401  (fixture: SmolLM2's shapes, no weights)


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_llama(seed=4)
    return model, ConfigSpace.from_model(model, "tiny-llama")


@pytest.fixture(scope="module")
def tables(tiny):
    model, space = tiny
    return {t: compute_target_costs(model, space, t) for t in ("bnb", "gguf")}


def _assert_legal_and_within(config: TargetConfiguration, budget: float) -> None:
    t = get_target(config.target)
    for m, f in zip(config.space.matrices, config.formats):
        assert f in t.legal_formats(m.shape), (m.name, f)
    assert config.avg_bits <= budget
    assert config.storage_bytes == sum(t.storage_bytes(m.shape, f) for m, f in zip(config.space.matrices, config.formats))


def _dp_optimum(table: TargetCostTable, cap: int) -> float:
    """The exact least total error within `cap` bytes: a multiple-choice knapsack over bytes."""
    st = table.storage
    err = table.errors.numpy()
    best = np.zeros(cap + 1)  # best[b] = least error of the matrices so far using <= b bytes
    for i in range(st.legal.shape[0]):
        new = np.full(cap + 1, np.inf)
        for j in np.flatnonzero(st.legal[i]):
            w = int(st.nbytes[i, j])
            if w <= cap:
                new[w:] = np.minimum(new[w:], best[: cap + 1 - w] + err[i, j])
        best = new
    return float(best[cap])


def test_costs_are_the_simulated_squared_error(tiny, tables):
    model, space = tiny
    m = space.matrices[5]
    w = dict(model.named_modules())[m.name].weight.detach().float()
    for target, table in tables.items():
        t = get_target(target)
        for j, f in enumerate(table.storage.formats):
            if table.storage.legal[5, j]:
                want = float((w - t.simulate(w, f).float()).double().square().sum())
                assert table.errors[5, j].item() == want
            else:
                assert table.errors[5, j].item() == float("inf")


@pytest.mark.parametrize("target", ["bnb", "gguf"])
@pytest.mark.parametrize("method", ["fast", "ilp"])
def test_allocations_are_legal_and_meet_the_budget(tables, target, method):
    table = tables[target]
    lo, hi = table.storage.min_bits, table.storage.max_bits
    errors = []
    for budget in (lo, lo + 0.05, 4.6, 5.3, 6.0, 8.7, 12.0, hi):
        got = allocate_target(table, budget, method)
        _assert_legal_and_within(got.config, budget)
        assert got.config.target == target and got.total_error >= 0
        errors.append(got.total_error)
    assert errors == sorted(errors, reverse=True)  # more bits never cost more error
    # The budget is used: nothing cheaper than the slack could still be upgraded.
    assert allocate_target(table, lo, method).config.avg_bits == pytest.approx(lo)


@pytest.mark.parametrize("target", ["bnb", "gguf"])
def test_ilp_is_optimal_against_dynamic_programming(tables, target):
    table = tables[target]
    for budget in (4.4, 5.1, 6.3):
        cap = table.storage.byte_cap(budget)
        opt = _dp_optimum(table, cap)
        ilp = allocate_target_ilp(table, budget)
        fast = allocate_target_fast(table, budget)
        assert opt <= ilp.total_error <= opt * (1 + 1e-3) + 1e-12
        assert ilp.total_error <= fast.total_error


def test_smollm2_shapes_only_down_proj_takes_ternary(smol_space):  # noqa: F811
    """On SmolLM2's shapes a budget under 4.25 bits forces TQ1_0 / TQ2_0 on down_proj, the only
    1536-wide rows; every other matrix stays in a 32-blocked format (synthetic errors)."""
    st = StorageTable.build(smol_space, "gguf")
    g = torch.Generator().manual_seed(0)
    bits = torch.tensor([get_target("gguf").bits_per_weight((1, 256), f) for f in st.formats], dtype=torch.float64)
    errors = torch.exp2(-bits)[None, :] * (1 + torch.rand(smol_space.n_matrices, 1, generator=g, dtype=torch.float64))
    errors[torch.as_tensor(~st.legal)] = float("inf")
    table = TargetCostTable(st, errors)
    assert st.min_bits == pytest.approx((smol_space.n_params - 30 * 576 * 1536) * 4.25 / smol_space.n_params
                                        + 30 * 576 * 1536 * 1.6875 / smol_space.n_params)
    for method in ("fast", "ilp"):
        got = allocate_target(table, 3.9, method).config
        _assert_legal_and_within(got, 3.9)
        ternary = {m.module_type for m, f in zip(smol_space.matrices, got.formats) if f.startswith("TQ")}
        assert ternary == {"down_proj"}


def test_budget_and_method_errors(tables):
    table = tables["gguf"]
    with pytest.raises(ConfigError, match=r"budget 3 bits per weight is impossible: the cheapest setting needs "
                                          r"4.2500 \(gguf MXFP4 x14\)"):
        allocate_target(table, 3, "fast")
    with pytest.raises(ConfigError, match="above the most precise setting \\(32.0000\\)"):
        allocate_target(table, 33, "ilp")
    with pytest.raises(ConfigError, match="--method gp does not support target 'gguf'"):
        allocate_target(table, 5, "gp")


def test_table_saves_and_loads(tables, tmp_path):
    table = tables["bnb"]
    table.save(tmp_path)
    back = load_target_costs(table.space, "bnb", folders=[tmp_path])
    assert torch.equal(back.errors, table.errors) and back.storage.formats == table.storage.formats
    assert back.weights_digest == table.weights_digest
    assert load_target_costs(table.space, "gguf", folders=[tmp_path]) is None


def test_cli_allocate_target_then_space_and_eval(tmp_path, capsys, monkeypatch):
    """`coalora allocate --target gguf` writes a legal configuration within the budget that
    `coalora space` (with and without --target) and `coalora eval` read."""
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    from test_eval import VOCAB, make_byte_tokenizer

    folder = str(tmp_path / "tiny")
    make_tiny_llama(vocab_size=VOCAB, seed=2).save_pretrained(folder)
    make_byte_tokenizer().save_pretrained(folder)
    out = tmp_path / "g.json"
    for method in ("fast", "ilp"):
        code = main(["allocate", "--model", folder, "--target", "gguf", "--budget", "5.2", "--method", method,
                     "--out", str(out), "--json"])
        d = json.loads(capsys.readouterr().out)
        assert code == 0 and d["target"] == "gguf" and d["avg_bits"] <= 5.2 and d["method"] == method
    assert (tmp_path / "cache" / "costs").is_dir()  # the table was cached for the second run
    space = ConfigSpace.from_model(make_tiny_llama(vocab_size=VOCAB, seed=2), folder)
    config = space.load(str(out))
    _assert_legal_and_within(config, 5.2)
    assert d["storage_bytes"] == config.storage_bytes and d["config_hash"] == config.hash
    assert main(["space", "--model", folder, "--target", "gguf", "--config", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["storage_bytes"] == config.storage_bytes and s["avg_bits"] == config.avg_bits
    assert main(["space", "--model", folder, "--config", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "gguf"
    code = main(["eval", "--model", folder, "--config", str(out), "--task", "sst2", "--limit", "8", "--dtype", "fp32",
                 "--no-record", "--json"])
    e = json.loads(capsys.readouterr().out)
    assert code == 0 and e["n"] == 8 and e["avg_bits"] == config.avg_bits and e["config_hash"] == config.hash
    assert main(["space", "--model", folder, "--target", "bnb", "--config", str(out), "--json"]) == 2
    assert "is for target 'gguf', not 'bnb'" in capsys.readouterr().err
    # Bad input: one line, exit 2, before any weight is loaded.
    assert main(["allocate", "--model", folder, "--target", "bnb", "--budget", "2", "--json"]) == 2
    assert "the cheapest setting needs 4.1372 (bnb nf4-dq x14)" in capsys.readouterr().err
    assert main(["allocate", "--model", folder, "--target", "gguf", "--budget", "5", "--method", "gp"]) == 2
    assert "--method gp does not support --target gguf" in capsys.readouterr().err
