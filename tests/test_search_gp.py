"""GP surrogate, acquisition, discrete search, predicted front and the search loop (tiny space)."""

import json

import pytest
import torch

from coalora.errors import ConfigError, ModelMismatchError
from coalora.search.acquisition import ExactBits, build_acquisition, neighbours, propose
from coalora.search.front import PredictedFront, allocate_gp, load_front, predicted_front, prob_on_front
from coalora.search.gp import fit_surrogate, index_matrix
from coalora.search.loop import Pool, pool_from_records, search, select

pytestmark = pytest.mark.slow  # GP fits and search runs on tiny models: `make test`, not `make test-fast`


def synthetic_f1(configs):
    """A smooth black box: error falls with bits, more in the first block (known structure)."""
    out = []
    for c in configs:
        per = torch.tensor([s.bits_per_param for s in c.settings], dtype=torch.float64)
        w = torch.tensor([2.0 if m.block == 0 else 1.0 for m in c.space.matrices], dtype=torch.float64)
        out.append(float((w * torch.exp(-per)).sum() / w.sum()))
    return out


@pytest.fixture
def fitted(tiny_space):
    configs = tiny_space.sample(10, seed=0) + [tiny_space.preset("nf4"), tiny_space.preset("nf2")]
    return fit_surrogate(configs, synthetic_f1(configs), tiny_space)


def test_exact_bits_matches_configuration(tiny_space):
    cfgs = tiny_space.sample(5, seed=1)
    bits = ExactBits(tiny_space)(index_matrix(cfgs, tiny_space))
    assert bits.tolist() == pytest.approx([c.avg_bits for c in cfgs], abs=1e-12)


def test_neighbours_are_single_in_range_moves(tiny_space):
    idx = tiny_space.preset("min").encode().reshape(-1)
    nb = neighbours(idx)
    diff = (nb - idx).abs()
    assert (diff.sum(1) == 1).all()
    for row in nb:
        tiny_space.decode(row)  # raises if any index is out of range


def test_gp_predicts_any_configuration(fitted, tiny_space):
    train = tiny_space.sample(10, seed=0)
    mean, std = fitted.predict(train)
    assert mean.shape == std.shape == (10,)
    assert torch.allclose(mean, torch.tensor(synthetic_f1(train), dtype=torch.float64), atol=0.05)
    unseen = tiny_space.sample(3, seed=99)
    m2, s2 = fitted.predict(unseen)
    assert (s2 > 0).all() and torch.isfinite(m2).all()


def test_gp_guards_constant_columns(tiny_space):
    # only the bits field of matrix 0 varies: one column, no division by zero anywhere
    a, b = tiny_space.preset("nf4"), tiny_space.preset("nf4")
    b = b.with_settings({tiny_space.matrices[0].name: b.settings[0].replace(bits=2)})
    gp = fit_surrogate([a, b], [0.1, 0.3], tiny_space, design="index")
    assert gp.columns.tolist() == [0]
    mean, std = gp.predict([tiny_space.preset("nf3")])  # varies columns the GP never saw
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    for design in ("struct", "qerr-block"):  # feature designs: constant features are harmless too
        gp = fit_surrogate([a, b], [0.1, 0.3], tiny_space, design=design)
        mean, std = gp.predict([tiny_space.preset("nf3")])
        assert torch.isfinite(mean).all() and torch.isfinite(std).all()


def test_feature_designs_and_binomial_noise(tiny_space):
    from coalora.search.costs import CostTable
    from coalora.search.gp import DEFAULT_DESIGN, DESIGNS, ConfigFeatures, binomial_variance, normalise
    from coalora.quant.setting import all_settings

    configs = tiny_space.sample(12, seed=1) + [tiny_space.preset(n) for n in ("nf2", "nf3", "nf4", "nf8")]
    y = synthetic_f1(configs)
    # A cost table whose error falls with bits: the "qerr" features are then informative.
    bpp = torch.tensor([s.bits_per_param for s in all_settings()], dtype=torch.float64)
    table = CostTable(tiny_space, torch.exp(-bpp)[None].repeat(tiny_space.n_matrices, 1), tuple(all_settings()))
    feats = ConfigFeatures(tiny_space, "qerr-block", table.errors)
    x = feats(normalise(index_matrix(configs, tiny_space)))
    assert x.shape == (len(configs), 2 + tiny_space.n_blocks + 7) and (x >= -1e-9).all() and (x <= 1 + 1e-9).all()
    # avg bits feature is exact
    assert x[:, 0] * (bpp.max() - bpp.min()) + bpp.min() == pytest.approx(torch.tensor([c.avg_bits for c in configs], dtype=torch.float64))
    for design in DESIGNS:
        gp = fit_surrogate(configs, y, tiny_space, design=design, costs=table)
        if design == DEFAULT_DESIGN:
            default_gp = gp
        assert gp.design == design and gp.n_observations == len(configs)
        mean, std = gp.predict(configs)
        assert torch.corrcoef(torch.stack([mean, torch.tensor(y, dtype=torch.float64)]))[0, 1] > 0.9
    warm = fit_surrogate(configs, y, tiny_space, costs=table, warm_start=default_gp)  # same design: starts from gp's hyperparameters
    assert torch.allclose(warm.predict(configs)[0], torch.tensor(y, dtype=torch.float64), atol=0.05)
    gp = fit_surrogate(configs, y, tiny_space, design="qerr", noise="binomial", rows=100, costs=table)
    assert gp.noise == "binomial" and gp.noise_std > 0
    assert binomial_variance(torch.tensor([0.2]), 100).item() == pytest.approx(0.8 * 0.2 / 100)
    with pytest.raises(ConfigError, match="rows"):
        fit_surrogate(configs, y, tiny_space, noise="binomial")
    with pytest.raises(ConfigError, match="design"):
        fit_surrogate(configs, y, tiny_space, design="nope")


def test_gp_input_errors(tiny_space):
    c = tiny_space.sample(2)
    with pytest.raises(ConfigError, match="at least 2"):
        fit_surrogate(c[:1], [0.1], tiny_space)
    with pytest.raises(ConfigError, match="2 configurations but 3 values"):
        fit_surrogate(c, [0.1, 0.2, 0.3], tiny_space)
    with pytest.raises(ConfigError, match="NaN"):
        fit_surrogate(c, [0.1, float("nan")], tiny_space)


def test_gp_rejects_configurations_of_another_model(fitted):
    from conftest import make_tiny_llama
    from coalora.space import ConfigSpace

    other = ConfigSpace.from_model(make_tiny_llama(n_layers=3), "other")
    with pytest.raises(ModelMismatchError, match=f"made for model 'other' \\(fingerprint {other.fingerprint}\\)"):
        fitted.predict([other.preset("nf4")])


@pytest.mark.parametrize("kind", ["qlogehvi", "qlognehvi"])
def test_acquisition_uses_a_reference_point_worse_than_observed(fitted, kind):
    acqf = build_acquisition(fitted, kind, n_samples=16)
    ref = torch.as_tensor(acqf.ref_point)  # maximisation convention: (-f1_ref, -bits_ref)
    bits = ExactBits(fitted.space)(fitted.train_idx)
    assert float(-ref[0]) > float(fitted.train_y.max()) and float(-ref[1]) > float(bits.max())
    assert ref.abs().min() > 0


def test_propose_returns_new_configurations(fitted):
    new = propose(fitted, n=2, kind="qlogehvi", n_starts=2, max_steps=3, n_samples=16)
    assert 1 <= len(new) <= 2 and len(set(new)) == len(new)
    seen = {row.numpy().tobytes() for row in fitted.train_idx}
    assert all(c.encode().reshape(-1).numpy().tobytes() not in seen for c in new)


def test_predicted_front_respects_budgets_and_round_trips(fitted, tiny_space, tmp_path):
    budgets = [2.05, 3.0, 4.2, 8.6]
    front = predicted_front(fitted, budgets, candidates=[tiny_space.preset("min")], n_mutations=64)
    assert [p.budget for p in front.points] == budgets
    for p in front.points:
        assert p.avg_bits <= p.budget and p.std >= 0
        assert p.std_pred == pytest.approx((p.std ** 2 + fitted.noise_std ** 2) ** 0.5)  # latent + noise
    # more budget never predicts worse (the candidate set only grows with the budget)
    means = [p.mean for p in front.points]
    assert all(a >= b - 1e-12 for a, b in zip(means, means[1:]))
    path = front.save(tmp_path / "front.json")
    data = json.loads(path.read_text())
    assert data["points"][0]["lower"] == pytest.approx(means[0] - 2 * front.points[0].std)
    back = load_front(path, tiny_space)
    assert isinstance(back, PredictedFront) and [p.config for p in back.points] == [p.config for p in front.points]
    assert [p.std_pred for p in back.points] == [p.std_pred for p in front.points]
    # a front made for another model is refused, naming both
    data["fingerprint"], data["model"] = "ffff", "other"
    (tmp_path / "foreign.json").write_text(json.dumps(data))
    with pytest.raises(ModelMismatchError, match=r"front .*foreign\.json.* made for model 'other' \(fingerprint ffff\)"):
        load_front(tmp_path / "foreign.json", tiny_space)


def test_prob_on_front_follows_domination(tiny_space):
    # nf8 is given a far worse error than the cheaper nf4: nf8 is dominated in (almost) every
    # posterior draw; nf4 cannot be dominated by anything costlier, and min is the cheapest.
    configs = tiny_space.sample(10, seed=0) + [tiny_space.preset(n) for n in ("nf2", "nf4", "nf8", "min")]
    values = synthetic_f1(configs)
    values[-2] = 0.9
    gp = fit_surrogate(configs, values, tiny_space)
    nf4, nf8, lowest = tiny_space.preset("nf4"), tiny_space.preset("nf8"), tiny_space.preset("min")
    p = prob_on_front(gp, [nf8, nf4, lowest], n_samples=128)
    assert p.shape == (3,)
    assert float(p[0]) < 0.05
    assert float(p[1]) > float(p[0])
    assert float(p[2]) == 1.0  # nothing compared costs less
    # competitors only add chances to be dominated; the seed fixes the draws
    q = prob_on_front(gp, [nf4], competitors=configs, n_samples=128)
    assert 0.0 <= float(q[0]) <= 1.0
    assert torch.equal(q, prob_on_front(gp, [nf4], competitors=configs, n_samples=128))
    assert float(prob_on_front(gp, [nf4], competitors=[nf8], n_samples=64)[0]) == 1.0  # nf8 costs more
    assert prob_on_front(gp, []).numel() == 0


def test_allocate_gp_and_its_errors(fitted):
    point = allocate_gp(fitted, 3.5, n_mutations=64, polish_steps=2)
    assert point.avg_bits <= 3.5
    with pytest.raises(ConfigError, match="minimum budget"):
        allocate_gp(fitted, 1.9)


def test_search_loop_two_iterations(tiny_space, tmp_path):
    calls = []

    def objective(configs):
        calls.append(len(configs))
        return synthetic_f1(configs)

    seen = []
    initial = tiny_space.sample(6, seed=4) + [tiny_space.preset("nf4"), tiny_space.preset("nf4")]
    res = search(objective, tiny_space, initial, iterations=2, batch_size=1, n_starts=1, max_steps=2,
                 n_samples=16, acquisition="qlogehvi", on_evaluated=lambda c, v: seen.append(len(c)))
    assert calls[0] == 7  # the duplicate nf4 is evaluated once
    assert len(calls) == 3 and len(res.pool) == sum(calls) == sum(seen)
    assert len(res.history) == 2 and res.surrogate is not None
    # the selection is the segmented front of the pool
    assert res.selected == select(res.pool) and 1 <= len(res.selected) <= len(res.pool)
    vals = dict(zip(res.pool.configs, res.pool.values))
    for c in res.selected:  # nothing in the pool beats a selected point within 0.16 bit
        assert not any(vals[o] < vals[c] and o.avg_bits <= c.avg_bits and abs(o.avg_bits - c.avg_bits) < 0.1
                       for o in res.pool.configs)
    # pools round-trip and continue a search
    path = res.pool.save(tmp_path / "pool.json")
    again = Pool.load(path, tiny_space)
    assert again.configs == res.pool.configs and again.values == res.pool.values
    assert len(pool_from_records(path, tiny_space)) == len(res.pool)


def test_search_objective_errors(tiny_space):
    with pytest.raises(ConfigError, match="2 values for 1"):
        search(lambda cs: [0.1, 0.2], tiny_space, tiny_space.sample(1), iterations=0)
    with pytest.raises(ConfigError, match="finite"):
        search(lambda cs: [float("nan")] * len(cs), tiny_space, tiny_space.sample(2), iterations=0)


def test_pool_records_errors(tiny_space, tmp_path):
    f = tmp_path / "r.jsonl"
    c = tiny_space.preset("nf4").to_dict()
    f.write_text(json.dumps({"config": c, "task": "a", "metric": "accuracy", "value": 0.6}) + "\n"
                 + json.dumps({"config": c, "task": "b", "metric": "loss", "value": 2.0}) + "\n")
    with pytest.raises(ConfigError, match="--task"):
        pool_from_records(f, tiny_space)
    assert pool_from_records(f, tiny_space, task="a").values == pytest.approx([0.4])
    assert pool_from_records(f, tiny_space, task="b").values == [2.0]
    with pytest.raises(ConfigError, match="cannot read"):
        pool_from_records(tmp_path / "missing.jsonl", tiny_space)


def test_pool_records_presets_none_and_torn_lines(tiny_space, tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"config": None, "config_path": None, "metric": "accuracy", "value": 0.7}) + "\n"
                 + json.dumps({"config": None, "config_path": "nf3", "metric": "accuracy", "value": 0.6}) + "\n"
                 + '{"config": nul')  # torn by a crash while appending
    pool = pool_from_records(f, tiny_space)
    assert pool.configs == [tiny_space.preset("nf3")] and pool.values == pytest.approx([0.4])
