"""The gr.Blocks of the app: controls on the left, plot, status and table on the right.

Every control edit updates the session configuration (instantly: avg bits and MB), then
chains one streamed quick eval. A newer edit supersedes the evaluation still running
(it stops at its next chunk boundary; see h.evaluate_stream).
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Mapping

import gradio as gr

from coalora.search.pareto import BITS_MAX, BITS_MIN
from coalora.space import PRESET_HELP, PRESETS
from ui import downloads
from ui import handlers as h
from ui import zerogpu
from coalora.search.allocate import METHODS as ALLOCATION_METHODS
from ui.engine import Engine
from ui.state import SessionState

GROUP = 5  # block sliders per accordion


def build_app(engines: Engine | Mapping[str, Engine]) -> gr.Blocks:
    """The whole app for one engine, or several (name -> Engine: checkpoints sharing one model,
    Engine.alongside; the first is the default and a selector picks one per session). Engines
    are shared by all sessions; per-user data lives in gr.State."""
    if isinstance(engines, Engine):
        engines = {"default": engines}
    engine = next(iter(engines.values()))  # what the page shows before a session picks another
    on = partial(h.per_session, engines)  # handler(engine, state, ...) -> (state, ...) on the session's engine
    space = engine.space
    nf4 = engine.preset(h.DEFAULT_PRESET)
    values0 = h.control_values(nf4)
    eval_kw = dict(concurrency_limit=4, concurrency_id="eval", api_visibility="private")

    # Gradio keeps a copy of every served download in its cache: delete copies older than an
    # hour, checked every 10 minutes (our own files are bounded by ui.downloads.KEEP).
    with gr.Blocks(title="coalora: configuration-aware LoRA", delete_cache=(600, 3600)) as demo:
        state = gr.State(SessionState())
        gr.Markdown("# CoA-LoRA: one adapter for any per-layer quantization\nPick bits per block (or a bit budget); "
                    "the adapter for that configuration is made instantly and scored by a streamed quick eval.")
        picker = gr.Dropdown(h.checkpoint_choices(engines), value=next(iter(engines)), label="Adapter (checkpoint)",
                             elem_id="checkpoint", visible=len(engines) > 1,
                             info="each one was trained on its own task; θ makes its adapter for the configuration below")
        with gr.Accordion("What the numbers mean", open=False):
            labels_md = gr.Markdown(h.honest_labels(engine), elem_id="labels")
        size_md = gr.Markdown(h.size_line(nf4), elem_id="size-line")
        with gr.Row():
            with gr.Column(scale=2, min_width=360):
                with gr.Group():
                    budget = gr.Slider(round(BITS_MIN + 0.005, 2), round(BITS_MAX - 0.005, 2), value=4.0, step=0.05,
                                       label="Bit budget (average bits per weight)", elem_id="budget")
                    method = gr.Radio(list(ALLOCATION_METHODS), value="fast", label="Allocation method",
                                      info="fast: Lagrangian relaxation of the ILP (ms) · ilp: exact integer "
                                           "program (seconds) · gp: the GP's best predicted configuration"
                                           + ("" if engine.info().gp_available else " (not available: no GP pool or front)"))
                    alloc_btn = gr.Button("Allocate for this budget", size="sm")
                    alloc_note = gr.Markdown("")
                with gr.Group():
                    with gr.Row():
                        pick_limit = gr.Number(value=4.0, label="Best on the front under", elem_id="pick-limit",
                                               minimum=0)
                        pick_unit = gr.Radio(list(h.PICK_UNITS), value=h.PICK_UNITS[0], label="unit")
                    pick_btn = gr.Button("Pick from the predicted front", size="sm",
                                         interactive=engine.info().front_available)
                preset = gr.Dropdown(list(PRESETS), value=h.DEFAULT_PRESET, label="Preset",
                                     info=" · ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
                sliders = []
                for start in range(0, space.n_blocks, GROUP):
                    stop = min(start + GROUP, space.n_blocks)
                    with gr.Accordion(f"Blocks {start}-{stop - 1}: weight bits", open=start == 0):
                        for b in range(start, stop):
                            sliders.append(gr.Slider(2, 8, value=values0[b], step=1, label=f"Block {b} bits",
                                                     info=h.NF_SLIDER_INFO if b == 0 else None,
                                                     elem_id=f"block-{b}"))
                with gr.Accordion("Advanced: per-module-type overrides and other fields", open=False):
                    attn = gr.Radio(list(h.BITS), value=values0[space.n_blocks], label="Attention (q, k, v, o) bits, all blocks")
                    mlp = gr.Radio(list(h.BITS), value=values0[space.n_blocks + 1], label="MLP (gate, up, down) bits, all blocks")
                    fields = [gr.Radio(list(h.FIELD_VALUES[f]), value=values0[space.n_blocks + 2 + i], label=f"{f} (all matrices)")
                              for i, f in enumerate(h.ADVANCED_FIELDS)]
                with gr.Accordion("Deployment target: a format a runtime loads (docs/deploy.md)", open=False):
                    target = gr.Radio([(h.TARGET_LABELS[t], t) for t in h.TARGETS], value="coalora",
                                      label="Target", elem_id="target",
                                      info="bnb, gguf and torchao formats are simulated bit for bit as their runtime "
                                           "dequantizes them. Under a target the block sliders, attention / MLP bits, "
                                           "presets and 'Allocate for this budget' pick that target's legal formats "
                                           "(the closest bit width each matrix may hold; fp16 and wider show as 8); "
                                           "the GP front stays coalora's NF-k one")
                    target_fmt = gr.Dropdown([], value=None, label="Format on every projection", elem_id="target-format",
                                             interactive=True)
                    target_btn = gr.Button("Use this format", size="sm")
                    verify_btn = gr.Button("Verify in runtime (export, score there and here)", size="sm",
                                           elem_id="verify-btn")
                    target_note = gr.Markdown("", elem_id="target-note")
                with gr.Row():
                    upload = gr.UploadButton("Upload configuration JSON", file_types=[".json"], size="sm")
                    download = gr.DownloadButton("Download configuration JSON", value=str(downloads.write_config(engine.workdir, nf4)), size="sm")
                evaluate_btn = gr.Button("Evaluate current configuration", variant="primary")
            with gr.Column(scale=3):
                status = gr.Markdown("No evaluation yet: move a slider, pick a preset or a budget.", elem_id="status")
                with gr.Row():
                    report_btn = gr.Button("Score on test (reportable)", size="sm", elem_id="report-btn")
                    report_md = gr.Markdown("", elem_id="report")
                plot = gr.Plot(label="Score vs average bits", elem_id="plot")
                with gr.Row():
                    base_btn = gr.Button("Measure baselines (base without adapter, nf2/3/4/8)", size="sm")
                    export_btn = gr.Button("Export (peft adapter; gguf: llama.cpp files) as a zip", size="sm")
                export_file = gr.File(label="Export", interactive=False, height=90)
                tbl = gr.Dataframe(headers=h.TABLE_HEADERS, label="Points evaluated in this session (click a header to sort)",
                                   interactive=False, wrap=True, elem_id="points",
                                   # 13 columns: fixed widths (the table scrolls sideways) keep each
                                   # header readable instead of squeezing it into a letter per line
                                   column_widths=[TABLE_WIDTHS.get(c, "80px") for c in h.TABLE_HEADERS])
                csv_btn = gr.Button("Table as CSV", size="sm")
                csv_file = gr.File(label="CSV", interactive=False, height=90)
                with gr.Accordion("Calibration: GP-predicted vs measured", open=False):
                    calib_md = gr.Markdown("", elem_id="calibration-summary")
                    calib_plot = gr.Plot(label="Predicted vs measured", elem_id="calibration")
                    calib_btn = gr.Button("Refresh calibration", size="sm")

        controls = [*sliders, attn, mlp, *fields]
        cfg_out = [state, size_md, download, *controls]
        ev_out = [state, plot, status, tbl]
        # Model work runs inside spaces.GPU functions on a ZeroGPU Space; elsewhere gpu() returns fn.
        evaluate = zerogpu.gpu(on(h.evaluate_stream), 60)

        def chain(dep):
            return dep.then(evaluate, [state], ev_out, trigger_mode="always_last", **eval_kw)

        chain(gr.on([s.release for s in sliders], on(h.apply_sliders), [state, *sliders],
                    cfg_out, trigger_mode="always_last", api_visibility="private"))
        chain(attn.input(on(lambda e, st, v: h.apply_override(e, st, "attention", v)), [state, attn],
                         cfg_out, api_visibility="private"))
        chain(mlp.input(on(lambda e, st, v: h.apply_override(e, st, "mlp", v)), [state, mlp], cfg_out,
                        api_visibility="private"))
        for f, comp in zip(h.ADVANCED_FIELDS, fields):
            chain(comp.input(on(partial(_field_fn, f)), [state, comp], cfg_out, api_visibility="private"))
        chain(preset.input(on(h.apply_preset), [state, preset], cfg_out, api_visibility="private"))
        chain(gr.on([budget.release, alloc_btn.click], on(h.apply_allocation),
                    [state, budget, method], [*cfg_out, alloc_note], trigger_mode="always_last",
                    api_visibility="private"))
        chain(pick_btn.click(on(h.apply_front_pick), [state, pick_limit, pick_unit],
                             [*cfg_out, alloc_note], api_visibility="private"))
        chain(upload.upload(on(h.apply_upload), [state, upload], cfg_out, api_visibility="private"))
        # picking a target applies its default format at once; picking a format applies that one
        chain(target.input(on(_target_fn), [state, target], [target_fmt, *cfg_out, target_note],
                           trigger_mode="always_last", api_visibility="private"))
        chain(gr.on([target_btn.click, target_fmt.input], on(h.apply_target), [state, target, target_fmt],
                    [*cfg_out, target_note], trigger_mode="always_last", api_visibility="private"))
        verify_btn.click(zerogpu.gpu(on(h.verify_line), 120), [state], [target_note],
                         api_visibility="private")
        evaluate_btn.click(evaluate, [state], ev_out, trigger_mode="always_last", **eval_kw)
        # A newer edit supersedes the evaluation still running: h.evaluate_stream stops at its
        # next chunk boundary once the session's configuration has changed, and always_last runs
        # the newest evaluation after it. No gradio `cancels=` here: gradio 6's page runs an
        # event's listeners one after another, so a cancel listener on the edit triggers ran
        # only after the edit's handler had finished and its .then evaluation was submitted, and
        # targeted that NEW evaluation before its event id was known: POST /cancel and /reset
        # with event_id null, HTTP 422 on every edit (tests/test_ui_browser.py checks for none).

        report_btn.click(zerogpu.gpu(on(h.report_stream), 120), [state], [state, report_md, tbl],
                         trigger_mode="always_last", **eval_kw)
        base_btn.click(zerogpu.gpu(on(h.compute_baselines), 300), [state], [plot, alloc_note],
                       api_visibility="private")
        export_btn.click(zerogpu.gpu(on(h.export), 60), [state], [export_file], api_visibility="private")
        csv_btn.click(on(h.table_csv), [state], [csv_file], api_visibility="private")
        demo.load(on(h.figure), [state], [plot], api_visibility="private")
        calib_btn.click(on(h.calibration), [state], [calib_plot, calib_md], api_visibility="private")
        demo.load(on(h.calibration), [state], [calib_plot, calib_md], api_visibility="private")
        # another checkpoint: its labels, front, points and calibration, then the configuration under its adapter
        chain(picker.input(partial(h.select_checkpoint, engines), [state, picker],
                           [state, labels_md, plot, status, tbl, report_md], api_visibility="private")
              .then(on(h.calibration), [state], [calib_plot, calib_md], api_visibility="private"))

        api_eval = zerogpu.gpu(h.api_evaluate, 60)

        def evaluate_api(configuration: str, checkpoint: str = "") -> Iterator[str]:
            yield from api_eval(h.api_engine(engines, checkpoint), configuration)

        def allocate_api(budget: float, method: str = "fast", checkpoint: str = "") -> str:
            return h.api_allocate(h.api_engine(engines, checkpoint), budget, method)

        gr.api(evaluate_api, api_name="evaluate",
               api_description="(configuration JSON text, checkpoint: a name of the selector, default the first) -> "
                               "result record JSON (streamed; the last is final).",
               concurrency_limit=4, concurrency_id="eval")
        gr.api(allocate_api, api_name="allocate",
               api_description="(budget: average bits per weight, method: fast | ilp | gp, checkpoint) -> "
                               "configuration JSON.")
    return demo


TABLE_WIDTHS = {"n": "50px", "test (reportable)": "170px", "config_hash": "150px", "summary": "260px"}


def _target_fn(engine: Engine, state: SessionState, target: str) -> list:
    """A new target: its format menu, and its default format applied (coalora: back to NF-k)."""
    formats, default = h.target_choices(engine, target)
    out = h.apply_target(engine, state, target, default)
    first_slider = 3  # apply_target's outputs are cfg_out's: state, size, download, then the sliders
    out[first_slider] = gr.update(value=out[first_slider], info=h.slider_info(engine, target))
    return [gr.update(choices=formats, value=default), *out]


def _field_fn(name: str, engine: Engine, state: SessionState, value):
    return h.apply_field(engine, state, name, value)

