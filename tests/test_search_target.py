"""Pareto search inside a deployment target (coalora/search/target_search.py, `coalora search
--target`): legal candidates within the target's bit range, a BoTorch GP on (exact bits, log
quantization error), proposals by log-EHVI from the discrete candidate set, records stamped
with the target, a non-dominated front, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from coalora.cli import main
from coalora.errors import ConfigError
from coalora.quant.targets import get_target
from coalora.search.loop import Pool
from coalora.search.pareto import non_dominated
from coalora.search.target_alloc import compute_target_costs
from coalora.search.target_search import (
    MOVES, TARGET_DESIGN, TargetEncoding, TargetFeatures, allocation_configs, budget_grid, default_budgets,
    fit_target_surrogate, observed_front, propose_target, search_target, target_candidates, target_front,
    uniform_configs,
)
from coalora.space import ConfigSpace, TargetConfiguration
from conftest import make_tiny_llama, save_tiny_checkpoint

TARGETS = ("bnb", "gguf", "torchao")


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_llama(seed=4)
    return model, ConfigSpace.from_model(model, "tiny-llama")


@pytest.fixture(scope="module")
def tables(tiny):
    model, space = tiny
    return {t: compute_target_costs(model, space, t) for t in TARGETS}


@pytest.fixture(scope="module")
def candidates(tables):
    return {t: target_candidates(table) for t, table in tables.items()}


def _assert_legal(config: TargetConfiguration, target: str) -> None:
    t = get_target(target)
    assert isinstance(config, TargetConfiguration) and config.target == target
    for m, f in zip(config.space.matrices, config.formats):
        assert f in t.legal_formats(m.shape), (m.name, f)


def synthetic_f1(enc: TargetEncoding):
    """A smooth black box of the target's own error table and bits (known structure)."""
    feats = TargetFeatures(enc)

    def objective(configs):
        f = feats(enc.normalise(enc.encode(configs)))  # (n, 2): bits, log error in [0, 1]
        return (0.2 + 0.5 * f[:, 1] + 0.03 * torch.cos(7 * f[:, 0])).tolist()

    return objective


@pytest.mark.parametrize("target", TARGETS)
def test_candidates_are_legal_and_inside_the_bit_range(tables, candidates, target):
    table, cands = tables[target], candidates[target]
    st, enc = table.storage, cands.encoding
    grid = budget_grid(st, 16)
    assert grid[0] == st.min_bits and grid[-1] == st.max_bits and grid == sorted(grid) and len(grid) == 16
    assert all(st.min_bits <= b <= st.max_bits for b in default_budgets(st))
    configs = [enc.decode(row) for row in cands.static]  # decode re-checks every format's legality
    assert len(configs) == len(set(configs)) == cands.static.shape[0] > 2
    for c in configs:
        _assert_legal(c, target)
        assert st.min_bits - 1e-12 <= c.avg_bits <= st.max_bits + 1e-12
    # Exact bits from the encoding are the configuration's avg_bits bit for bit.
    assert enc.bits(cands.static).tolist() == [c.avg_bits for c in configs]
    # Every uniform format and every allocation is among the fixed candidates.
    rows = {r.numpy().tobytes() for r in cands.static}
    for c in uniform_configs(table.space, target) + allocation_configs(table, grid[:3]):
        assert enc.encode([c])[0].numpy().tobytes() in rows


@pytest.mark.parametrize("target", TARGETS)
def test_moves_step_to_neighbouring_legal_formats(tables, candidates, target):
    from coalora.quant.targets.base import format_bits

    cands = candidates[target]
    enc, t, table = cands.encoding, get_target(target), cands.moves.table
    assert table.shape == (len(MOVES), enc.space.n_matrices, len(enc.storage.formats))
    start = enc.encode(allocation_configs(tables[target], [default_budgets(tables[target].storage)[0]]))
    moved = cands.moves(start)
    assert moved.shape[0] > 0 and not (moved == start).all(1).any()  # every move changes something
    for row in moved:
        c = enc.decode(row)  # re-checks legality
        _assert_legal(c, target)
        changed = row != start[0]
        # One group moved: the changed matrices lie inside one block, one module type, or are all of them.
        assert (cands.moves.groups | ~changed).all(1).any()
        # ... all by one move kind: a width step or a same-width step in bytes.
        rows = torch.nonzero(changed).reshape(-1)
        kinds = [k for k in range(len(MOVES)) if (table[k, rows, start[0, rows]] == row[rows]).all()]
        assert kinds, c
        for i in rows.tolist():
            old, new = enc.storage.formats[int(start[0, i])], c.formats[i]
            widths = sorted({format_bits(f) for f in t.legal_formats(c.space.matrices[i].shape)})
            if MOVES[kinds[0]].startswith("bits"):  # the next stated width up or down, nothing skipped
                assert abs(widths.index(format_bits(new)) - widths.index(format_bits(old))) == 1
            else:
                assert format_bits(new) == format_bits(old)


def test_gguf_moves_keep_the_kind_and_step_one_width(tables, candidates):
    enc = candidates["gguf"].encoding
    space = enc.space
    q4 = TargetConfiguration(space, "gguf", ["Q4_0"] * space.n_matrices)
    moved = {enc.decode(r) for r in candidates["gguf"].moves(enc.encode([q4]))}
    everywhere = {next(iter(set(c.formats) - {"Q4_0"})) for c in moved if len(set(c.formats)) == 1}
    # Every matrix moved at once: bits+ gives Q5_0 (the next width, same kind); bits- nothing (4 is the
    # least width these 64- and 128-wide rows take); bytes+ / bytes- Q4_1 / MXFP4 (the 4-bit formats
    # next to Q4_0 by storage).
    assert everywhere == {"Q5_0", "Q4_1", "MXFP4"}


def test_gp_is_botorch_and_sees_bits_and_log_error(tables, candidates):
    from botorch.models import SingleTaskGP

    enc = candidates["gguf"].encoding
    configs = [enc.decode(r) for r in candidates["gguf"].static]
    values = synthetic_f1(enc)(configs)
    gp = fit_target_surrogate(configs, values, enc, seed=0)
    assert isinstance(gp.model, SingleTaskGP) and gp.design == TARGET_DESIGN and gp.n_observations == len(configs)
    feats = gp.model.input_transform.features(enc.normalise(gp.train_idx))
    assert feats.shape == (len(configs), 2) and (feats >= 0).all() and (feats <= 1).all()
    st = enc.storage
    back = feats[:, 0] * (st.max_bits - st.min_bits) + st.min_bits  # the first feature is exact avg bits
    assert back.tolist() == pytest.approx([c.avg_bits for c in configs], abs=1e-9)
    mean, std = gp.predict(configs)
    assert mean.shape == std.shape == (len(configs),) and (std >= 0).all()
    assert torch.allclose(mean, torch.tensor(values, dtype=torch.float64), atol=0.05)
    with pytest.raises(ConfigError, match="at least 2"):
        fit_target_surrogate(configs[:1], values[:1], enc)
    with pytest.raises(ConfigError, match="is for target 'gguf'; this search is over target 'bnb'"):
        candidates["bnb"].encoding.encode(configs[:1])


@pytest.mark.parametrize("target", TARGETS)
def test_search_proposes_new_legal_configurations_and_a_non_dominated_front(tables, candidates, target):
    table, cands = tables[target], candidates[target]
    enc = cands.encoding
    initial = allocation_configs(table, default_budgets(table.storage))
    seen: list[list] = []
    result = search_target(synthetic_f1(enc), table, initial, iterations=2, batch_size=2, candidates=cands,
                           n_samples=16, on_evaluated=lambda c, v: seen.append(list(c)))
    pool = result.pool
    assert type(result.surrogate.model).__name__ == "SingleTaskGP" and result.surrogate.design == TARGET_DESIGN
    assert seen[0] == list(dict.fromkeys(initial)) and len(seen) == 3  # initial, then two rounds of proposals
    assert len(pool) == len(set(pool.configs)) == len(initial) + 4  # proposals are never pool points
    for c in pool.configs:
        _assert_legal(c, target)
        assert table.storage.min_bits - 1e-12 <= c.avg_bits <= table.storage.max_bits + 1e-12
    assert all(h["proposed"] == 2 for h in result.history)
    # The observed front: no pool point beats one of its points in both f1 and bits.
    front = observed_front(result.surrogate)
    pts = torch.stack([result.surrogate.train_y, enc.bits(result.surrogate.train_idx)], 1)
    on = non_dominated(pts)
    assert {r.numpy().tobytes() for r in front} == {r.numpy().tobytes() for r in result.surrogate.train_idx[on]}
    assert set(result.selected) <= set(pool.configs) and result.selected
    # The predicted front: within each budget, predicted f1 never rises with more bits.
    pf = target_front(result.surrogate, cands)
    assert pf.points and pf.meta["target"] == target
    means = [p.mean for p in pf.points]
    assert means == sorted(means, reverse=True)
    for p in pf.points:
        _assert_legal(p.config, target)
        assert p.avg_bits <= p.budget and p.std >= 0


def test_propose_skips_training_points_and_stops_when_none_are_left(tables, candidates):
    from dataclasses import replace

    cands = candidates["bnb"]
    enc = cands.encoding
    configs = [enc.decode(r) for r in cands.static]
    gp = fit_target_surrogate(configs, synthetic_f1(enc)(configs), enc)
    picked = propose_target(gp, cands, n=3, n_samples=16)
    assert len(picked) == 3 == len(set(picked)) and not set(picked) & set(configs)
    # Every pick is a move of the observed front (the fixed candidates are all training points).
    around = {enc.decode(r) for r in cands.moves(observed_front(gp))}
    assert set(picked) <= around
    # Nothing left to propose (no moves, every fixed candidate evaluated): an empty proposal.
    assert propose_target(gp, replace(cands, moves=lambda idx: idx[:0]), n=2, n_samples=16) == []


def test_search_refuses_a_pool_of_another_space(tables, candidates, tiny):
    _, space = tiny
    pool = Pool(space)
    pool.add([space.preset("nf4"), space.preset("nf8")], [0.3, 0.2])
    with pytest.raises(ConfigError, match="is for target 'coalora'; this search is over target 'gguf'"):
        search_target(lambda c: [0.0] * len(c), tables["gguf"], (), 0, 1, pool, candidates["gguf"])


# ---------------------------------------------------------------- the CLI, end to end (tiny checkpoint)
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint with non-trivial B and θ on a tiny base (conftest.save_tiny_checkpoint)."""
    folder, _, space = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-target-search"), ("nf4",))
    return folder, space


def _search(capsys, tmp_path, ckpt, *extra):
    code = main(["search", "--checkpoint", str(ckpt), "--dev-rows", "8", "--dtype", "fp32",
                 "--records", str(tmp_path / "r.jsonl"), "--mc-samples", "16", "--json", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_cli_target_search_records_pool_front_then_continues(tiny_ckpt, tmp_path, capsys, monkeypatch):
    from coalora.cli.search import default_paths
    from coalora.results import read_records
    from coalora.search.front import load_front

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))  # the tiny base's gguf table is computed here
    ckpt, space = tiny_ckpt
    code, out, err = _search(capsys, tmp_path, ckpt, "--target", "gguf", "--budgets", "4.5,5", "--iterations", "1",
                             "--batch", "2")
    assert code == 0, err
    first = json.loads(out)
    pool_path, front_path = default_paths(str(ckpt), ckpt, "gguf")
    assert (first["pool"], first["front"]) == (str(pool_path), str(front_path)) == (str(ckpt / "pool-gguf.json"),
                                                                                    str(ckpt / "front-gguf.json"))
    assert first["target"] == "gguf" and first["budgets"] == [4.5, 5.0] and first["dev_rows"] == 8
    assert first["initial"] == "2 gguf ILP allocations at 2 budgets"
    pool = Pool.load(pool_path, space)
    assert first["pool_size"] == first["evaluated"] == len(pool) == len(set(pool.configs)) == 4  # 2 + 2 proposals
    assert json.loads(pool_path.read_text())["target"] == "gguf"
    for c in pool.configs:
        _assert_legal(c, "gguf")
        assert 4.25 <= c.avg_bits <= 32
    assert pool.configs[0].avg_bits <= 4.5 and pool.configs[1].avg_bits <= 5.0  # the initial allocations' budgets

    records = read_records(tmp_path / "r.jsonl")
    assert len(records) == len(pool)
    by_hash = {c.hash: v for c, v in zip(pool.configs, pool.values)}
    for r in records:  # stamped like the NF-k search's records, plus the target
        assert r.config["target"] == "gguf" and r.extra["target"] == "gguf"
        assert r.split["part"] == "dev" and r.extra["part"] == "dev" and r.n == 8 and r.code_version
        assert r.checkpoint.startswith("ckpt@sha256:") and r.extra["role"] == "select" and r.extra["search_seed"] == 0
        assert by_hash[r.config_hash] == pytest.approx(1 - r.value) == pytest.approx(r.extra["f1"])
        assert r.avg_bits == space.load(str(_write(tmp_path, r.config))).avg_bits

    front = load_front(front_path, space)
    assert front.meta["target"] == "gguf" and front.meta["gp_design"] == TARGET_DESIGN
    assert len(front.meta["observed"]) == len(pool) and front.meta["part"] == "dev"
    assert front.points and all(p.avg_bits <= p.budget for p in front.points)
    for p in front.points:
        _assert_legal(p.config, "gguf")

    # Continued: the old points stay, only new configurations are evaluated (and recorded).
    code, out, err = _search(capsys, tmp_path, ckpt, "--target", "gguf", "--budgets", "4.5,5", "--iterations", "1",
                             "--batch", "1", "--seed", "1")
    assert code == 0, err
    second = json.loads(out)
    pool2 = Pool.load(pool_path, space)
    assert pool2.configs[: len(pool)] == pool.configs and second["evaluated"] == 1 and len(pool2) == 5
    assert len(read_records(tmp_path / "r.jsonl")) == 5
    # The NF-k files of the checkpoint were never written.
    assert not (ckpt / "pool.json").exists() and not (ckpt / "front.json").exists()


def _write(tmp_path, config: dict):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_cli_target_bad_inputs_are_one_line_errors(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    ckpt, space = tiny_ckpt
    cases = [
        (("--target", "nope"), "--target 'nope' is unknown; allowed values are coalora (the NF-k space, the "
                               "default), bnb, gguf, torchao"),
        (("--target", "gguf", "--budgets", "3"), "--budgets item '3' for --target gguf: budget 3 bits per weight "
                                                 "is impossible: the cheapest setting needs 4.2500"),
        (("--target", "bnb", "--budgets", "4.5,40"), "--budgets item '40' for --target bnb: budget 40 bits per "
                                                     "weight is above the most precise setting (16.0000)"),
        (("--target", "gguf", "--budgets", "4.5,x"), "--budgets item 'x' is not a number"),
        (("--target", "bnb", "--starts", "2"), "--starts 2 is an option of the NF-k search"),
        (("--target", "torchao", "--steps", "3"), "--steps 3 is an option of the NF-k search"),
        (("--target", "gguf", "--batch", "0"), "--batch must be >= 1, got 0"),
    ]
    for argv, message in cases:
        code, _, err = _search(capsys, tmp_path, ckpt, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    # A pool of another space is never continued: an NF-k pool under --target, a gguf pool without.
    nfk = tmp_path / "nfk.json"
    Pool(space).save(nfk, {"checkpoint_sha256": None})
    code, _, err = _search(capsys, tmp_path, ckpt, "--target", "gguf", "--pool", str(nfk))
    assert code == 2 and "holds configurations of target 'coalora', this search is over target 'gguf'" in err
    gguf = tmp_path / "gguf.json"
    Pool(space).save(gguf, {"target": "gguf"})
    code, _, err = _search(capsys, tmp_path, ckpt, "--pool", str(gguf))
    assert code == 2 and "holds configurations of target 'gguf', this search is over target 'coalora'" in err
    assert not (tmp_path / "r.jsonl").exists()  # nothing was evaluated or recorded


def test_cli_help_explains_target(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--target" in text and "bnb, gguf, torchao" in text and "NF-k search only" in text


@pytest.mark.real
def test_smollm2_shipped_tables_give_legal_candidates_and_ternary_moves_on_down_proj():
    """On SmolLM2's shapes with the shipped error tables (assets/costs; no weights loaded)."""
    from coalora.models import build_space_for
    from coalora.search.target_alloc import get_target_costs

    space = build_space_for("smollm2-135m")
    for target in TARGETS:
        table = get_target_costs(space, target)
        cands = target_candidates(table)
        enc = cands.encoding
        assert enc.bits(cands.static).tolist() == [enc.decode(r).avg_bits for r in cands.static]
        assert cands.moves.groups.shape == (30 + 7 + 1, 210)
    cands = target_candidates(get_target_costs(space, "gguf"))
    enc = cands.encoding
    mx = TargetConfiguration(space, "gguf", ["MXFP4"] * 210)
    down = {m.module_type for c in (enc.decode(r) for r in cands.moves(enc.encode([mx])))
            for m, f in zip(space.matrices, c.formats) if f.startswith("TQ")}
    assert down == {"down_proj"}  # only the 1536-wide rows can hold the ternary types
