"""ILP allocation on tiny spaces: budget respected exactly, used well, clear errors; the CLI."""

import json

import pytest
import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.quant.nf import fake_quantize
from coalora.quant.setting import all_settings
from coalora.search.allocate import allocate_ilp, allocate_lagrangian, check_budget, pareto_settings
from coalora.search.costs import ASSETS_DIR, CostTable, compute_costs, load_costs
from coalora.search.pareto import BITS_MAX, BITS_MIN
from coalora.space import ConfigSpace, Configuration, MatrixInfo


def synthetic_costs(space, seed=0):
    """Error ~ numel * 4^-bits * (matrix sensitivity) * noise: shaped like real tables, instant."""
    g = torch.Generator().manual_seed(seed)
    settings = tuple(all_settings())
    bpp = torch.tensor([s.bits_per_param for s in settings], dtype=torch.float64)
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    sens = torch.rand(space.n_matrices, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    noise = 1 + 0.3 * torch.rand(space.n_matrices, len(settings), generator=g, dtype=torch.float64)
    return CostTable(space, numel[:, None] * sens * 4.0 ** (-bpp)[None, :] * noise, settings)


@pytest.mark.parametrize("budget", [BITS_MIN, 2.1, 2.5, 3.0, 3.37, 4.127, 5.5, 8.0, BITS_MAX])
def test_ilp_never_exceeds_budget_and_uses_it(tiny_space, budget):
    costs = synthetic_costs(tiny_space)
    res = allocate_ilp(costs, budget)
    assert isinstance(res.config, Configuration)
    assert res.config.avg_bits <= budget  # exact avg_bits, no tolerance
    assert res.avg_bits == res.config.avg_bits
    if budget >= BITS_MAX:
        # Every configuration fits: the optimum is each matrix's least-error setting (which,
        # with noisy errors, need not be the most precise one).
        chosen = torch.tensor([costs.settings.index(s) for s in res.config.settings])
        rows = torch.arange(tiny_space.n_matrices)
        assert torch.equal(costs.errors[rows, chosen], costs.errors.min(dim=1).values)
    # Uses the budget well: no single-matrix upgrade to a better setting still fits.
    bpp = costs.bits_per_param
    share = torch.tensor([m.numel for m in tiny_space.matrices], dtype=torch.float64) / tiny_space.n_params
    slack = budget - res.config.avg_bits
    for i, s in enumerate(res.config.settings):
        cur = costs.settings.index(s)
        better = (costs.errors[i] < costs.errors[i, cur]) & ((bpp - bpp[cur]) * share[i] <= slack - 1e-9)
        assert not better.any(), f"matrix {i} could still be upgraded within the budget"


def _small_problem(seed: int, n_settings: int = 7) -> CostTable:
    """3 matrices of different sizes x `n_settings` random settings, errors loosely falling
    with bits plus heavy noise (so dominated settings and non-greedy optima occur)."""
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "down_proj": (64, 160)}
    space = ConfigSpace("brute", tuple(
        MatrixInfo(f"model.layers.0.{'mlp' if t == 'down_proj' else 'self_attn'}.{t}", t, 0, sh)
        for t, sh in shapes.items()), 1)
    g = torch.Generator().manual_seed(seed)
    pool = all_settings()
    settings = tuple(pool[int(k)] for k in torch.randperm(len(pool), generator=g)[:n_settings])
    bpp = torch.tensor([s.bits_per_param for s in settings], dtype=torch.float64)
    numel = torch.tensor([m.numel for m in space.matrices], dtype=torch.float64)
    noise = 0.2 + 2 * torch.rand(space.n_matrices, n_settings, generator=g, dtype=torch.float64)
    return CostTable(space, numel[:, None] * 2.0 ** (-bpp)[None, :] * noise, settings)


def _enumerate(costs: CostTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Every assignment of a setting to each matrix: -> (total error (K,), exact avg_bits (K,))."""
    import itertools

    n_mat, n_set = costs.errors.shape
    picks = torch.tensor(list(itertools.product(range(n_set), repeat=n_mat)))  # (K, M)
    total = costs.errors[torch.arange(n_mat), picks].sum(dim=1)  # (K,)
    avg = torch.tensor([Configuration(costs.space, tuple(costs.settings[j] for j in p)).avg_bits
                        for p in picks.tolist()], dtype=torch.float64)
    return total, avg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilp_matches_brute_force_on_a_three_matrix_problem(seed):
    costs = _small_problem(seed)
    total, avg = _enumerate(costs)  # 7^3 = 343 assignments
    assert len(total) == 343
    levels = torch.unique(avg)  # sorted distinct avg_bits
    # Budgets halfway between achievable avg_bits values (never within the ILP's 1e-6 margin
    # of one), plus one above them all.
    mids = (levels[1:] + levels[:-1]) / 2
    budgets = mids[torch.linspace(0, len(mids) - 1, 12).round().long()].tolist() + [float(levels[-1]) + 0.01]
    n_lagrangian_worse = 0
    for b in budgets:
        best = float(total[avg <= b].min())
        exact = allocate_ilp(costs, b, mip_rel_gap=0.0)
        assert exact.config.avg_bits <= b
        assert exact.total_error == pytest.approx(best, rel=1e-9, abs=0)
        default = allocate_ilp(costs, b)  # proven within 0.1%
        assert default.config.avg_bits <= b and best <= default.total_error <= best * (1 + 1e-3)
        fast = allocate_lagrangian(costs, b)  # may be worse, must be feasible
        assert fast.avg_bits <= b
        fast_total = float(sum(costs.errors[i, costs.settings.index(s)] for i, s in enumerate(fast.settings)))
        assert fast_total >= best * (1 - 1e-12)
        n_lagrangian_worse += fast_total > best * (1 + 1e-9)
    assert n_lagrangian_worse < len(budgets)  # sanity: the heuristic is often optimal


def test_ilp_beats_random_feasible_configurations(tiny_space):
    costs = synthetic_costs(tiny_space, seed=3)
    res = allocate_ilp(costs, 3.0)
    total = float(costs.errors[torch.arange(tiny_space.n_matrices),
                               torch.tensor([costs.settings.index(s) for s in res.config.settings])].sum())
    assert total == pytest.approx(res.total_error)
    # Any random feasible configuration costs at least as much, up to the ILP's 0.1% gap.
    share = torch.tensor([m.numel for m in tiny_space.matrices], dtype=torch.float64) / tiny_space.n_params
    g = torch.Generator().manual_seed(0)
    bpp = costs.bits_per_param
    n_feasible = 0
    for _ in range(200):
        pick = torch.randint(len(costs.settings), (tiny_space.n_matrices,), generator=g)
        if float((bpp[pick] * share).sum()) <= 3.0:
            n_feasible += 1
            assert float(costs.errors[torch.arange(tiny_space.n_matrices), pick].sum()) >= res.total_error * (1 - 1e-3)
    assert n_feasible > 0


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


def _fq_error(w, setting, family="nf", chunks=None):
    """Squared error of the full quantizer (fake_quantize), over all weights or only the given
    64-weight chunks of the flattened matrix, squared in float32 and summed in float64 like
    the table: the reference the cost table must reproduce."""
    d2 = (w - fake_quantize(w, setting, family)).reshape(-1).square()
    if chunks is not None:
        d2 = d2.view(-1, 64)[chunks]
    return float(d2.sum(dtype=torch.float64))


SPREAD = all_settings()[::7]  # 62 settings; every value of every field occurs


def _some_matrices(space, picks=(0, 1, 4, 6)):
    """A sub-space of q_proj (64x64), k_proj (32x64), gate_proj (128x64), down_proj (64x128)."""
    return ConfigSpace(space.model_name, tuple(space.matrices[k] for k in picks), space.n_blocks)


@pytest.mark.parametrize("family", ["nf", "int"])
def test_compute_costs_equals_fake_quantize_error(tiny_model, tiny_space, family):
    """Every (matrix, setting) entry of an exact table equals the full quantizer's error:
    the shared scale quantization (double_quantize_scales) gives the same scales both ways."""
    settings = SPREAD if family == "nf" else SPREAD[::3]
    sub = _some_matrices(tiny_space)
    table = compute_costs(tiny_model, sub, family=family, settings=settings)
    mods = dict(tiny_model.named_modules())
    for i, m in enumerate(sub.matrices):
        w = mods[m.name].weight
        want = torch.tensor([_fq_error(w, s, family) for s in settings], dtype=torch.float64)
        torch.testing.assert_close(table.errors[i], want, rtol=1e-12, atol=0)


def test_matrix_errors_with_padding_equal_fake_quantize_error():
    from coalora.search.costs import _matrix_errors

    w = torch.randn(37, 51, generator=torch.Generator().manual_seed(2))  # 1887 weights: padded blocks
    got = _matrix_errors(w, None, tuple(SPREAD), "nf", 0.5, torch.Generator())  # n % 64 != 0: exact
    want = torch.tensor([_fq_error(w, s) for s in SPREAD], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_compute_costs_equals_the_quantize_dequantize_round_trip(tiny_model, tiny_space):
    from coalora.quant.nf import dequantize, quantize

    settings = [all_settings()[k] for k in (0, 37, 100, 250, 431)]
    table = compute_costs(tiny_model, tiny_space, settings=settings)
    mods = dict(tiny_model.named_modules())
    for i, m in enumerate(tiny_space.matrices[:4]):
        w = mods[m.name].weight
        for j, s in enumerate(settings):
            want = float((w - dequantize(*quantize(w, s))).square().sum(dtype=torch.float64))
            assert float(table.errors[i, j]) == pytest.approx(want, rel=1e-12, abs=0)


def test_sampled_costs_equal_fake_quantize_error_on_the_sampled_chunks(tiny_model, tiny_space):
    """The committed SmolLM2 table is sampled (1/8 of the 64-weight chunks): a sampled entry is
    exactly numel/sampled x the full quantizer's error on those chunks (scales from the whole
    matrix). The chunks are drawn from one seeded generator, matrix after matrix."""
    settings = SPREAD[::4]
    table = compute_costs(tiny_model, tiny_space, settings=settings, sample=0.25, seed=7)
    mods = dict(tiny_model.named_modules())
    g = torch.Generator().manual_seed(7)
    for i, m in enumerate(tiny_space.matrices):
        w = mods[m.name].weight
        n_chunks = w.numel() // 64
        k = round(0.25 * n_chunks)
        chunks = torch.randperm(n_chunks, generator=g)[:k].sort().values
        want = torch.tensor([_fq_error(w, s, chunks=chunks) * n_chunks / k for s in settings], dtype=torch.float64)
        torch.testing.assert_close(table.errors[i], want, rtol=1e-12, atol=0)


def test_cost_table_saves_and_loads(tiny_model, tiny_space, tmp_path):
    settings = [all_settings()[k] for k in (0, 100, 250, 431)]
    table = compute_costs(tiny_model, tiny_space, settings=settings)
    # more bits, less error
    assert (table.errors[:, 0] > table.errors[:, 3]).all()
    out = table.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {out.name, out.with_suffix(".safetensors").name}  # no temp left
    back = load_costs(tiny_space, folders=[tmp_path])
    assert back is not None and torch.equal(back.errors, table.errors) and back.settings == table.settings
    assert back.weights_digest == table.weights_digest
    assert load_costs(tiny_space, weighting="fisher", folders=[tmp_path]) is None


@pytest.mark.real
def test_committed_cost_table_rows_recompute_identically(real_model):
    """The first 3 rows of the committed SmolLM2 table (assets/costs), recomputed now with the
    table's own sampling (1/8, seed 0) and thread count, are bit-identical, and agree with
    the full quantizer (fake_quantize) on the sampled chunks."""
    from coalora.models import build_space_for

    space = build_space_for("smollm2-135m")
    committed = load_costs(space, folders=[ASSETS_DIR])
    if committed is None:
        pytest.skip("no committed SmolLM2 cost table in assets/costs")
    model, _ = real_model
    first = ConfigSpace(space.model_name, space.matrices[:3], space.n_blocks)  # chunks are drawn in matrix order
    threads = torch.get_num_threads()
    torch.set_num_threads(committed.meta["torch_threads"])  # the float64 sums' order depends on it
    try:
        again = compute_costs(model, first, settings=committed.settings, sample=committed.meta["sample"],
                              seed=committed.meta["seed"])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again.errors, committed.errors[:3])
    w = dict(model.named_modules())[space.matrices[0].name].weight
    n_chunks = w.numel() // 64
    k = round(committed.meta["sample"] * n_chunks)
    chunks = torch.randperm(n_chunks, generator=torch.Generator().manual_seed(committed.meta["seed"]))[:k].sort().values
    for j in (0, 200, 431):
        want = _fq_error(w, committed.settings[j], chunks=chunks) * n_chunks / k
        assert float(committed.errors[0, j]) == pytest.approx(want, rel=1e-12, abs=0)


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
    with pytest.raises(ModelMismatchError, match=f"cost table .* made for model 'other' \\(fingerprint {other.fingerprint}\\)"):
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
    # --model: where the checkpoint's base is loaded from; one of other projections is refused
    rc, out = _cli(["allocate", "--budget", "3", "--method", "gp", "--checkpoint", str(tmp_path / "ckpt"),
                    "--model", "smollm2-135m"], capsys)
    assert rc == 2 and f"fingerprint {space.fingerprint}" in out.err and "tiny-llama" in out.err
    rc, out = _cli(["allocate", "--budget", "3", "--method", "gp", "--checkpoint", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and "nothing" in out.err


@pytest.mark.slow
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
