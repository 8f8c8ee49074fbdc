"""App handlers and engine without a browser, on a tiny model and a tiny checkpoint."""

from __future__ import annotations

import json
import threading
import zipfile

import gradio as gr
import pytest

from ui import handlers as h
from ui.state import SessionState
from ui_fixtures import make_tiny_engine

pytestmark = pytest.mark.slow  # many evaluations on tiny engines: `make test`, not `make test-fast`


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return make_tiny_engine(tmp_path_factory.mktemp("ui"))


def test_snap_bits_maps_slider_positions_to_allowed_bits():
    assert [h.snap_bits(v) for v in (2, 3, 4, 5, 6, 7, 8)] == [2, 3, 4, 4, 8, 8, 8]


def test_block_slider_changes_only_that_block_and_updates_size(engine):
    st = SessionState()
    nb = engine.space.n_blocks
    out = h.apply_sliders(engine, st, *([4] * nb))  # unchanged: nf4
    base = engine.preset("nf4")
    assert out[0].config == base.encode().tolist()
    out = h.apply_sliders(engine, st, 2, *([4] * (nb - 1)))
    cfg = engine.space.decode(st.config)
    assert {s.bits for m, s in cfg.items() if m.block == 0} == {2}
    assert {s.bits for m, s in cfg.items() if m.block != 0} == {4}
    assert f"{cfg.avg_bits:.3f} bits" in out[1] and cfg.avg_bits < base.avg_bits
    assert out[3:3 + nb] == [2] + [4] * (nb - 1)  # sliders show the block bits
    assert json.loads(open(out[2]).read())["fingerprint"] == engine.space.fingerprint  # download file


def test_overrides_fields_and_presets(engine):
    st = SessionState()
    h.apply_override(engine, st, "mlp", 8)
    cfg = engine.space.decode(st.config)
    assert {s.bits for m, s in cfg.items() if m.module_type in ("gate_proj", "up_proj", "down_proj")} == {8}
    assert {s.bits for m, s in cfg.items() if m.module_type == "q_proj"} == {4}
    h.apply_field(engine, st, "block_size", 16)
    assert {s.block_size for s in engine.space.decode(st.config).settings} == {16}
    out = h.apply_preset(engine, st, "nf2")
    assert engine.space.decode(st.config) == engine.preset("nf2") and "2.127 bits" in out[1]
    with pytest.raises(gr.Error, match="unknown preset"):
        h.apply_preset(engine, st, "nf5")


def test_allocation_meets_the_budget_and_bad_budgets_are_clear(engine):
    st = SessionState()
    out = h.apply_allocation(engine, st, 3.0, "fast")
    assert engine.space.decode(st.config).avg_bits <= 3.0 and "Lagrangian" in out[-1]
    h.apply_allocation(engine, st, 3.5, "gp")  # the tiny front stands in for the GP
    assert engine.space.decode(st.config).avg_bits <= 3.5
    with pytest.raises(gr.Error, match="minimum budget"):
        h.apply_allocation(engine, st, 1.0, "fast")
    with pytest.raises(gr.Error, match="above the most precise"):
        h.apply_allocation(engine, st, 12.0, "ilp")
    with pytest.raises(gr.Error, match="not a usable number"):
        h.api_allocate(engine, "lots", "fast")
    with pytest.raises(gr.Error, match="method 'x' is unknown"):
        h.api_allocate(engine, 4.0, "x")


def test_upload_refuses_malformed_foreign_and_huge_files(engine, tmp_path):
    st = SessionState()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(gr.Error, match="not valid JSON"):
        h.apply_upload(engine, st, str(bad))
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**engine.preset("nf3").to_dict(), "fingerprint": "0123456789abcdef"}))
    with pytest.raises(gr.Error, match="was made for model"):
        h.apply_upload(engine, st, str(foreign))
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (2 << 20))
    with pytest.raises(gr.Error, match="at most"):
        h.apply_upload(engine, st, str(huge))
    good = tmp_path / "good.json"
    engine.preset("nf3").save(good)
    h.apply_upload(engine, st, str(good))
    assert engine.space.decode(st.config) == engine.preset("nf3")


def test_evaluation_streams_tightening_estimates_and_records_the_point(engine):
    st = SessionState()
    h.apply_preset(engine, st, "nf3")
    outs = list(h.evaluate_stream(engine, st))
    assert len(outs) >= 2
    ns = [o[0].current["n"] for o in outs]  # state objects are shared: read n from the status text
    assert ns[-1] == len(engine.split)
    assert "waiting for the first estimate" in outs[0][2]  # at once, before any model work
    assert "final" in outs[-1][2] and "streaming" in outs[1][2]
    assert len(st.points) == 1 and st.points[0]["config_hash"] == engine.preset("nf3").hash
    final = engine.evaluate_final(engine.preset("nf3"))
    assert st.points[0]["value"] == final.value and st.points[0]["n"] == final.n
    fig = outs[-1][1]
    names = [t.name for t in fig.data]
    assert "current" in names and any("front" in n for n in names)
    assert outs[-1][3][0][0] == round(engine.preset("nf3").avg_bits, 4)  # table row
    csv_path = h.table_csv(engine, st)
    assert open(csv_path).read().splitlines()[0].startswith("avg_bits,size_MB,accuracy")


def test_adapter_matters_and_baselines_are_the_base_without_adapter(engine, lm_engine):
    """Adapter on and off give different scores (bits per byte is continuous, so a real
    difference cannot hide in a tie); adapter off is exactly the base model loaded on its own
    (no checkpoint: a zero adapter); switching back restores the adapter exactly."""
    from coalora.lora import load_for_eval
    from ui.engine import Engine

    cfg = engine.preset("nf4")
    assert engine.evaluate_final(cfg).method == "coalora" and engine.evaluate_final(cfg, adapter=False).method == "base"
    on = lm_engine.evaluate_final(cfg)
    off = lm_engine.evaluate_final(cfg, adapter=False)
    assert on.extra["done"] and off.extra["done"] and on.metric == "bits_per_byte"
    assert abs(on.value - off.value) > 1e-4, (on.value, off.value)
    base = Engine(load_for_eval(None, lm_engine.model_name), lm_engine.model_name, task="lambada",
                  n_rows=len(lm_engine.split), dtype="fp32", baselines_path=None, workdir=lm_engine.workdir)
    alone = base.evaluate_final(cfg)
    assert alone.method == "base" and not base.model.has_adapter
    assert alone.value == off.value and alone.stderr == off.stderr
    assert lm_engine.evaluate_final(cfg).value == on.value  # switching back restores the adapter exactly


def test_baselines_file_written_then_read_without_computing(engine, tmp_path):
    """`python app.py --write-baselines` = measure_baselines + write_records: full result records
    of the base without adapter at the uniform presets; an engine given that file shows them,
    measuring nothing."""
    from coalora.results import ResultRecord, write_records
    from ui.engine import BASELINE_PRESETS

    recs = engine.measure_baselines()
    path = write_records(tmp_path / "baselines.json", recs)
    assert [r.config_path for r in recs] == list(BASELINE_PRESETS)
    for r, p in zip(recs, BASELINE_PRESETS):
        cfg = engine.preset(p)
        assert r.method == "base" and r.checkpoint is None and r.extra["done"] and r.n == len(engine.split)
        assert r.config_hash == cfg.hash and engine.space.from_dict(r.config) == cfg
        assert r.split_hash == engine.split.manifest_hash and r.split and r.code_version and r.seed == engine.seed
        assert r.value == engine.evaluate_final(cfg, adapter=False).value
    other = ResultRecord.from_dict({**recs[0].to_dict(), "split_hash": "another-split", "value": 0.0})
    with open(path, "a") as f:  # a record of other rows is not shown
        f.write(other.to_json() + "\n")
    saved = engine.baselines_path, engine._baselines
    try:
        engine.baselines_path, engine._baselines = path, None
        engine.evaluate_final = None  # reading must not evaluate anything
        assert [r.to_dict() for r in engine.baselines()] == [r.to_dict() for r in recs]
    finally:
        del engine.evaluate_final
        engine.baselines_path, engine._baselines = saved

def test_export_zip_holds_the_peft_folder_and_configuration(engine):
    st = SessionState()
    h.apply_preset(engine, st, "nf3")
    path = h.export(engine, st)
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("adapter_model.safetensors") for n in names)
    assert any(n.endswith("adapter_config.json") for n in names)
    conf = [n for n in names if n.endswith(".configuration.json")]
    assert engine.space.loads(zipfile.ZipFile(path).read(conf[0]).decode()) == engine.preset("nf3")


def test_api_functions(engine):
    recs = [json.loads(r) for r in h.api_evaluate(engine, engine.preset("nf2").to_json())]
    assert recs[-1]["extra"]["done"] and recs[-1]["avg_bits"] == pytest.approx(engine.preset("nf2").avg_bits)
    assert [r["n"] for r in recs] == sorted(r["n"] for r in recs)
    cfg = h.parse_config(engine, h.api_allocate(engine, 3.0, "fast"))
    assert cfg.avg_bits <= 3.0
    with pytest.raises(gr.Error, match="empty"):
        list(h.api_evaluate(engine, ""))


def _lock_is_free(engine) -> bool:
    """Whether ANOTHER thread can take the shared model lock at once (an RLock is re-entrant, so
    trying from the test's own thread would succeed even while this thread held it)."""
    got = []

    def probe():
        ok = engine.lock.acquire(blocking=False)
        if ok:
            engine.lock.release()
        got.append(ok)

    t = threading.Thread(target=probe)
    t.start()
    t.join(10)
    return got == [True]


def _in_thread(fn, timeout=120):
    """fn() in another thread (as gradio's workers run handlers); fails instead of hanging
    if the lock was left held."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, "the next evaluation did not finish: the abandoned one still holds the model lock"
    return out[0]


@pytest.fixture(scope="module")
def lm_engine(tmp_path_factory):
    """The tiny engine on a plain-text task: its metric (bits per byte) is continuous, so two
    configurations never tie and 'exactly the same result' means the same floats."""
    return make_tiny_engine(tmp_path_factory.mktemp("ui-lm"), n_rows=24, task="lambada", with_costs=False)


@pytest.mark.parametrize("how", ["closed", "left suspended"])
def test_an_abandoned_evaluation_releases_the_model_and_changes_nothing(lm_engine, how):
    """What cancelling a running evaluation (layout: cancels=..., trigger_mode='always_last')
    does to our code: the generator stops after its first yield (gradio closes it, or just
    drops it). The lock must be free at once, and the next evaluation, of ANOTHER
    configuration and then of the abandoned one, must stream exactly what it streams alone."""
    engine = lm_engine
    a, b = engine.preset("nf2"), engine.preset("nf8")
    alone_b = [(r.n, r.value, r.stderr) for r in engine.evaluate(b)]
    alone_a = [(r.n, r.value, r.stderr) for r in engine.evaluate(a)]
    assert len(alone_b) >= 2 and all(x[1] != y[1] for x, y in zip(alone_a, alone_b))  # nothing ties

    # the engine generator
    gen = engine.evaluate(a)
    first = next(gen)
    assert (first.n, first.value, first.stderr) == alone_a[0] and not first.extra["done"]
    if how == "closed":
        gen.close()
    assert _lock_is_free(engine)
    after = _in_thread(lambda: [(r.n, r.value, r.stderr) for r in engine.evaluate(b)])
    assert after == alone_b
    assert _in_thread(lambda: [(r.n, r.value, r.stderr) for r in engine.evaluate(a)]) == alone_a
    del gen

    # the handler generator the layout chains after every edit (one session's state)
    st = SessionState()
    h.apply_preset(engine, st, "nf2")
    hgen = h.evaluate_stream(engine, st)
    assert "waiting for the first estimate" in next(hgen)[2]
    out = next(hgen)
    assert "streaming" in out[2] and st.points == []  # cancelled before its final record
    if how == "closed":
        hgen.close()
    assert _lock_is_free(engine)
    h.apply_preset(engine, st, "nf8")  # the newer edit
    outs = _in_thread(lambda: list(h.evaluate_stream(engine, st)))
    assert "final" in outs[-1][2]
    assert [p["config_hash"] for p in st.points] == [b.hash]  # the abandoned nf2 left no point
    assert (st.points[0]["n"], st.points[0]["value"], st.points[0]["stderr"]) == alone_b[-1]


def test_a_newer_edit_supersedes_the_running_evaluation(lm_engine, monkeypatch):
    """The app's cancellation (ui/layout.py): once the session's configuration changes, the
    running evaluate_stream stops at its next chunk boundary without computing another chunk
    or touching the session; the evaluation of the new configuration is exactly the one alone."""
    engine = lm_engine
    alone = [(r.n, r.value, r.stderr) for r in engine.evaluate(engine.preset("nf8"))]
    pulled = []
    real = engine.evaluate

    def counting(config, adapter=True):
        for rec in real(config, adapter):
            pulled.append((config.hash, rec.n))
            yield rec

    monkeypatch.setattr(engine, "evaluate", counting)
    st = SessionState()
    h.apply_preset(engine, st, "nf2")
    gen = h.evaluate_stream(engine, st)
    assert "waiting for the first estimate" in next(gen)[2] and pulled == []  # no model work yet
    assert "streaming" in next(gen)[2]
    h.apply_preset(engine, st, "nf8")  # the newer edit, while nf2 is still streaming
    assert next(gen, None) is None  # superseded: it ends ...
    assert pulled == [(engine.preset("nf2").hash, pulled[0][1])]  # ... without another chunk
    assert _lock_is_free(engine) and st.points == [] and st.current is None
    outs = _in_thread(lambda: list(h.evaluate_stream(engine, st)))
    assert "final" in outs[-1][2]
    assert [p["config_hash"] for p in st.points] == [engine.preset("nf8").hash]
    assert (st.points[0]["n"], st.points[0]["value"], st.points[0]["stderr"]) == alone[-1]


def test_downloads_are_bounded_and_records_name_no_server_path(engine, tmp_path):
    """Each kind of download keeps only its newest files (the app never grows its disk), and an
    evaluation's record names the checkpoint by name and sha256, never by a server path."""
    from ui import downloads

    paths = [downloads.write_text(tmp_path, "t.csv", str(i)) for i in range(downloads.KEEP["tables"] + 5)]
    left = sorted((tmp_path / "tables").rglob("t.csv"))
    assert len(left) == downloads.KEEP["tables"] and paths[-1] in left and paths[0] not in left
    cfg = engine.preset("nf3")
    first = downloads.write_config(tmp_path, cfg)
    assert downloads.write_config(tmp_path, cfg) == first  # the same configuration reuses its file
    for _ in range(downloads.KEEP["exports"] + 1):
        downloads.export_folder(tmp_path)
    assert len(list((tmp_path / "exports").iterdir())) == downloads.KEEP["exports"]
    rec = engine.evaluate_final(cfg)
    assert rec.checkpoint.startswith("ckpt@sha256:") and len(rec.checkpoint.split(":")[1]) == 16
    assert "/ckpt" not in rec.to_json()  # the checkpoint folder's path appears nowhere


def test_concurrent_evaluations_take_turns_and_apply_each_configuration_once(lm_engine, monkeypatch):
    """Four evaluations started at once run one after another, chunk by chunk (ui/turns.py):
    each configuration is applied once, not once per chunk, and every stream equals its solo run."""
    engine = lm_engine
    configs = [engine.preset(p) for p in ("nf2", "nf3", "nf4", "nf8")]
    alone = {c.hash: [(r.n, r.value) for r in engine.evaluate(c)] for c in configs}
    applied = []
    real = engine.model.set_configuration
    monkeypatch.setattr(engine.model, "set_configuration", lambda c, *a, **k: (applied.append(c.hash), real(c, *a, **k))[1])
    engine._shared.config = None
    results: dict[str, list] = {}
    threads = [threading.Thread(target=lambda c=c: results.__setitem__(c.hash, [(r.n, r.value) for r in engine.evaluate(c)]))
               for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == alone
    assert sorted(applied) == sorted(c.hash for c in configs), applied  # once each


def test_a_stale_turn_is_skipped():
    """An evaluation whose consumer stopped asking for chunks cannot block the others."""
    import time

    from ui.turns import Turns

    turns = Turns(stale_s=0.2)
    with turns.joined() as a, turns.joined() as b:
        with turns.turn(a):
            pass  # a ran one chunk, then its consumer went away
        t0 = time.monotonic()
        with turns.turn(b):
            waited = time.monotonic() - t0
    assert 0.15 < waited < 2.0


def test_quick_eval_is_on_dev_rows_and_the_reportable_score_on_every_test_row(engine):
    """Choose on dev rows, report on test rows: the quick eval scores the quick-eval (dev) rows
    the front is fitted on; 'Score on test' scores every test row, labelled reportable."""
    from coalora.data import load_split

    assert engine.split.part == "dev" and engine.report_split.part == "test"
    assert not set(r["id"] for r in engine.split.rows) & set(r["id"] for r in engine.report_split.rows)
    st = SessionState()
    h.apply_preset(engine, st, "nf3")
    *_, last = h.evaluate_stream(engine, st)
    assert st.points[-1]["extra"]["role"] == "select" and st.points[-1]["split_hash"] == engine.split.manifest_hash
    outs = list(h.report_stream(engine, st))
    rep = st.reports[engine.preset("nf3").hash]
    full = load_split("sst2", "test", 0)
    assert rep["extra"]["role"] == "report" and rep["n"] == len(full) and rep["split_hash"] == full.manifest_hash
    assert "Reportable" in outs[-1][1] and "final" in outs[-1][1]
    assert outs[-1][2][0][h.TABLE_HEADERS.index("test (reportable)")].startswith(f"{rep['value']:.4f}")  # the table's reportable column
    fig = h.figure(engine, st)
    assert f"{len(engine.split)} dev rows" in fig.layout.yaxis.title.text


def test_the_gp_learns_from_every_app_evaluation_and_remembers_across_restarts(tmp_path):
    """Each final quick-eval record becomes an observation (an append-only records file); the GP
    refits on it (the front follows), the plot marks the point as seen by the front, the
    calibration panel shows the prediction made before measuring; a new engine on the same
    file starts with it; records of other rows are never mixed in."""
    from coalora.results import ResultRecord, read_records

    obs = tmp_path / "observations.jsonl"
    engine = make_tiny_engine(tmp_path / "a", n_rows=8, observations=obs)
    p = engine.predictor
    assert p.surrogate() is None  # no pool yet: nothing to fit
    cfgs = [engine.preset(n) for n in ("nf2", "nf3", "nf4", "nf8")]
    for c in cfgs:
        st = SessionState()
        st.config = c.encode().tolist()
        list(h.evaluate_stream(engine, st))
    p.refit(wait=True)  # wait for the background refits to settle
    assert not any("refit failed" in n for n in p.notices), p.notices
    recs = read_records(obs)
    assert [r.config_hash for r in recs] == [c.hash for c in cfgs] and all(r.extra["role"] == "select" for r in recs)
    assert p.surrogate() is not None and p.observed == {c.hash for c in cfgs}
    assert p.front.meta.get("refit_in_app") and p.front.meta["n_observations"] == 4
    shown = SessionState(points=[r.to_dict() for r in recs])
    assert [t.name for t in h.figure(engine, shown).data if "this session" in t.name] == ["this session, seen by the front"]
    st = SessionState()
    st.config = engine.preset("nf3").encode().tolist()
    first, *_ = h.evaluate_stream(engine, st)  # now with a prediction made before measuring
    final = read_records(obs)[-1]
    # the first update comes before any measurement: the GP's prediction drawn at the configuration's size
    assert "GP predicts" in first[2] and "not a measurement" in first[2]
    pending = {t.name: t for t in first[1].data}
    assert "current" not in pending and list(pending["GP prediction (± σ)"].x) == [engine.preset("nf3").avg_bits]
    assert list(pending["GP prediction (± σ)"].y) == [pytest.approx(final.extra["predicted"][0])]
    assert 0.0 <= final.extra["p_front"] <= 1.0  # P(on front) under the GP, before learning from it
    assert "P(on front)" in h.status_line(final.to_dict(), tuple(final.extra["predicted"]))
    fig, summary = h.calibration(engine)
    assert summary.startswith("1 observations") and len(fig.data) == 2
    assert "likely on the front" in summary and 0.0 <= fig.data[1].marker.color[0] <= 1.0  # coloured by P(on front)
    other = ResultRecord.from_dict({**recs[0].to_dict(), "split_hash": "other-rows", "value": 0.0})
    assert not p.observe(other, background=False)  # measured on other rows: refused
    again = make_tiny_engine(tmp_path / "b", n_rows=8, observations=obs)  # a restart (same checkpoint name)
    assert again.predictor.surrogate() is not None and again.predictor.observed == {c.hash for c in cfgs}


def test_best_on_the_front_under_a_size(engine):
    """The picker takes the front's best predicted point within a bit or MB limit."""
    st = SessionState()
    out = h.apply_front_pick(engine, st, 3.5, "bits per weight")  # the tiny front: nf2, nf3, nf4
    assert engine.space.decode(st.config) == engine.preset("nf3") and "front point" in out[-1]
    assert "Best measured" not in out[-1]  # this engine has no measured pool (tests/test_predictor.py has)
    mb = engine.preset("nf4").packed_bytes / 1e6
    h.apply_front_pick(engine, st, mb + 1e-6, "MB")
    assert engine.space.decode(st.config) == engine.preset("nf4")
    with pytest.raises(gr.Error, match="no point of the front fits"):
        h.apply_front_pick(engine, st, 1.0, "bits per weight")
