"""The app's deployment-target panel (issue 15, item 3; docs/deploy.md, "In the app"):
choosing a target format or the target's allocation, evaluating it, exporting and verifying,
on the tiny engine (handlers, no browser)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from ui import handlers as h
from ui.state import SessionState
from ui_fixtures import make_tiny_engine

pytestmark = pytest.mark.slow  # evaluations on a tiny engine: `make test`, not `make test-fast`


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return make_tiny_engine(tmp_path_factory.mktemp("ui-deploy"), n_rows=8)


def test_target_formats_are_the_ones_legal_on_every_projection(engine):
    formats, default = h.target_choices(engine, "bnb")
    assert default == "nf4" and set(formats) == {"nf4", "fp4", "nf4-dq", "fp4-dq", "int8", "fp16", "bf16"}
    formats, default = h.target_choices(engine, "torchao")
    assert default == "int4-g32" and "int8-row-asym" in formats and "int4-g128" not in formats  # rows are 64 wide
    assert h.target_choices(engine, "coalora") == ([], None)
    with pytest.raises(gr.Error, match="allowed: coalora, bnb, gguf, torchao"):
        h.target_choices(engine, "onnx")


def test_slider_hint_names_the_targets_bit_widths(engine):
    assert h.slider_info(engine, "coalora") == h.NF_SLIDER_INFO
    assert h.slider_info(engine, "bnb").startswith("bnb: the format of the nearest bit width (4, 8, 16;")
    assert "(4, 5, 8, 16, 32;" in h.slider_info(engine, "gguf")  # Q4_*, Q5_*, Q8_0, F16/BF16, F32
    with pytest.raises(gr.Error, match="allowed: coalora"):
        h.slider_info(engine, "onnx")


def test_the_points_table_names_each_points_formats(engine):
    from ui.plots import points_table

    rows = points_table([{"avg_bits": 4.0, "packed_bytes": 1, "value": 0.5, "stderr": 0.1, "n": 8, "method": "coalora",
                          "config": {"target": "gguf"}},
                         {"avg_bits": 4.0, "packed_bytes": 1, "value": 0.5, "stderr": 0.1, "n": 8, "method": "coalora",
                          "config": {"default": {}}}])
    assert [r["formats"] for r in rows] == ["NF-k", "gguf"]  # newest first
    assert list(rows[0]).index("formats") == h.TABLE_HEADERS.index("formats")  # the column under its header


def test_choosing_a_target_format_keeps_the_nf_configuration_for_later(engine):
    st = SessionState()
    nb = engine.space.n_blocks
    h.apply_sliders(engine, st, 2, *([4] * (nb - 1)))
    nf = st.config
    out = h.apply_target(engine, st, "bnb", "fp4-dq")
    config = h.current_config(engine, st)
    assert config.target == "bnb" and set(config.formats) == {"fp4-dq"} and st.config == nf
    assert "as **bnb** stores them" in out[1] and f"{config.storage_bytes:,} bytes" in out[1]
    assert out[3:3 + nb] == [4] * nb  # the sliders show the target's bit widths
    assert json.loads(open(out[2]).read())["target"] == "bnb"  # the download is the target configuration
    assert "fp4-dq on all" in out[-1]
    with pytest.raises(gr.Error, match="allowed: .*nf4"):
        h.apply_target(engine, st, "bnb", "Q4_0")
    h.apply_sliders(engine, st, 8, *([4] * (nb - 1)))  # under bnb, 8 bits is int8
    assert {h.current_config(engine, st).format(m.name) for m in engine.space.matrices if m.block == 0} == {"int8"}
    h.apply_target(engine, st, "gguf", None)
    assert set(h.current_config(engine, st).formats) == {"Q4_0"}
    out = h.apply_target(engine, st, "coalora", None)  # back: the NF-k configuration as it was
    assert st.target is None and st.config == nf and out[3:3 + nb] == [2] + [4] * (nb - 1)


def test_a_target_configuration_is_evaluated_without_the_gp(engine):
    st = SessionState()
    h.apply_target(engine, st, "torchao", "int4-g32")
    config = h.current_config(engine, st)
    seen = len(engine.predictor.observed) if engine.predictor is not None else 0
    *_, last = h.evaluate_stream(engine, st)
    rec = last[0].points[-1]
    assert rec["config_hash"] == config.hash and rec["extra"]["done"] and "predicted" not in rec["extra"]
    assert rec["config"]["target"] == "torchao" and "torchao" in rec["extra"]["summary"]
    assert (len(engine.predictor.observed) if engine.predictor is not None else 0) == seen  # the GP models NF-k only


def test_a_newer_target_choice_supersedes_a_running_evaluation(engine):
    st = SessionState()
    h.apply_target(engine, st, "bnb", "nf4")
    stream = h.evaluate_stream(engine, st)
    next(stream)
    h.apply_target(engine, st, "bnb", "int8")
    assert list(stream) == []  # stops at the next chunk boundary


def test_under_a_target_sliders_overrides_presets_and_allocation_pick_legal_formats(engine, tmp_path, monkeypatch):
    st = SessionState()
    nb = engine.space.n_blocks
    out = h.apply_target(engine, st, "gguf", "Q4_1")
    assert out[3:3 + nb + 2] == [4] * nb + [4, 4]  # block sliders, attention and MLP bits
    out = h.apply_sliders(engine, st, 5, *([4] * (nb - 1)))  # block 0 -> 5 bits: Q4_1's kind at 5 is Q5_1
    config = h.current_config(engine, st)
    assert {config.format(m.name) for m in engine.space.matrices if m.block == 0} == {"Q5_1"}
    assert {config.format(m.name) for m in engine.space.matrices if m.block != 0} == {"Q4_1"}
    assert out[3] == 5 and config.target == "gguf"
    h.apply_sliders(engine, st, 3, *([4] * (nb - 1)))  # no 3-bit gguf type holds 64-wide rows: the closest, 4 (ties up)
    assert {h.current_config(engine, st).format(m.name) for m in engine.space.matrices if m.block == 0} == {"Q4_1"}
    h.apply_override(engine, st, "mlp", 8)
    config = h.current_config(engine, st)
    assert {config.format(m.name) for m in engine.space.matrices if m.module_type == "down_proj"} == {"Q8_0"}
    h.apply_preset(engine, st, "max")
    assert set(h.current_config(engine, st).formats) == {"F32"}
    h.apply_target(engine, st, "torchao", "int4-g64-asym")
    h.apply_preset(engine, st, "nf2")
    assert set(h.current_config(engine, st).formats) == {"int2-g64-asym"}
    with pytest.raises(gr.Error, match="field of coalora's NF-k settings"):
        h.apply_field(engine, st, "block_size", 16)
    # the budget allocation follows the target, from its error table
    h.apply_target(engine, st, "bnb", "nf4")
    with pytest.raises(gr.Error, match="coalora allocate --target bnb"):
        h.apply_allocation(engine, st, 5.0, "fast")
    from coalora.models import load_model
    from coalora.search.target_alloc import get_target_costs

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    base, _ = load_model(engine.space.model_name, quiet=True)
    get_target_costs(engine.space, "bnb", model=base)  # computed and cached, as `coalora allocate --target` does
    out = h.apply_allocation(engine, st, 5.0, "fast")
    config = h.current_config(engine, st)
    assert config.target == "bnb" and config.avg_bits <= 5.0 and "bnb ILP allocation" in out[-1]
    h.apply_target(engine, st, "coalora", None)
    assert h.apply_allocation(engine, st, 3.0, "fast")[0].target is None  # back in the NF-k space


def test_export_writes_gguf_and_points_to_the_command_line_for_bnb(engine):
    st = SessionState()
    h.apply_target(engine, st, "bnb", "nf4")
    with pytest.raises(gr.Error, match="coalora export --target bnb"):
        h.export(engine, st)
    h.apply_target(engine, st, "gguf", "Q8_0")  # the tiny model has no embedded GGUF to copy from
    with pytest.raises(gr.Error, match="--gguf-base"):
        h.export(engine, st)


def test_verify_in_runtime_scores_there_and_here(engine):
    st = SessionState()
    with pytest.raises(gr.Error, match="simulated only"):
        h.verify_line(engine, st)
    h.apply_target(engine, st, "torchao", "int8-g32")
    line = h.verify_line(engine, st)
    assert "runtime (transformers + torchao + peft (load_torchao.py))" in line and "same prediction on 8/8 rows" in line
    *_, last = h.evaluate_stream(engine, st)  # the model is usable after verify, under the same configuration
    assert last[0].points[-1]["config_hash"] == h.current_config(engine, st).hash


@pytest.mark.real
def test_verify_in_runtime_on_the_default_checkpoint(tmp_path):
    from ui.engine import Engine

    engine = Engine.load("default", n_rows=8, front_path=None, pool_paths=(), baselines_path=None,
                         observations=tmp_path / "obs.jsonl")
    st = SessionState()
    h.apply_target(engine, st, "torchao", "int4-g32")
    line = h.verify_line(engine, st)
    assert "same prediction on 8/8 rows" in line and "transformers + torchao" in line
