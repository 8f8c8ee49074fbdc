"""Event handlers: plain functions of (engine, session state, control values), testable
without a browser. Bad input raises gr.Error with the message of the coalora error.

Controls edit the session's current configuration (the source of truth): a block slider sets
the weight bits of that block's 7 projections, the attention / MLP overrides set the bits of
those projection types in every block, the advanced fields set one field everywhere, presets
and allocations replace the whole configuration. Sliders then show each block's majority bits.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
from collections import Counter
from contextlib import closing
from typing import Any, Callable, Iterator, Mapping

import gradio as gr

from coalora.data import task_spec
from coalora.errors import CoaloraError
from coalora.quant.targets.base import format_bits
from coalora.quant.setting import FIELD_NAMES, FIELD_VALUES
from coalora.space import ATTENTION_TYPES, MLP_TYPES, Configuration
from coalora.errors import ConfigError
from ui import downloads
from ui.engine import Engine
from ui.plots import MB, calibration_figure, front_line, points_table, result_figure
from ui.state import SessionState

BITS = FIELD_VALUES["bits"]
ADVANCED_FIELDS = ("scale_bits", "scale_format", "block_size", "scale_block_size")
DEFAULT_PRESET = "nf4"


MAX_CONFIG_BYTES = 1 << 20  # a configuration JSON of SmolLM2 is ~60 kB at most; refuse huge uploads


def _err(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


def parse_config(engine: Engine, data: str | bytes, source: str = "configuration") -> Configuration:
    """Configuration JSON (text or bytes, at most MAX_CONFIG_BYTES) -> Configuration, read as
    strictly as the CLI reads files (coalora.jsonfile via ConfigSpace.loads): ConfigError /
    ModelMismatchError naming the problem."""
    if isinstance(data, (str, bytes)) and len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(data):,} bytes; a configuration file is at most {MAX_CONFIG_BYTES:,} bytes")
    return engine.space.loads(data, source=source)


def snap_bits(value: float) -> int:
    """A slider position -> the nearest allowed weight bit-width (2, 3, 4, 8; ties go up)."""
    v = float(value)
    return min(BITS, key=lambda b: (abs(b - v), -b))


# ---- checkpoints (the app's selector) ------------------------------------------------------------
def engine_of(engines: Mapping[str, Engine], state: SessionState) -> Engine:
    """The engine of the session's checkpoint (the app's first one until another is chosen)."""
    return engines.get(state.checkpoint or "") or next(iter(engines.values()))


def _loaded(engines: Mapping[str, Engine], name: str) -> Engine:
    """The engine of checkpoint `name`; a gr.Error naming the loaded ones when there is none."""
    if name not in engines:
        raise gr.Error(f"checkpoint {name!r} is not loaded in this app; loaded: {', '.join(engines)}")
    return engines[name]


def per_session(engines: Mapping[str, Engine], fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler fn(engine, state, *values) as gradio calls it, (state, *values), with the
    engine of the session's checkpoint; a generator function (a streamed evaluation) stays one."""
    if inspect.isgeneratorfunction(fn):
        def stream(state: SessionState, *values: Any) -> Iterator[Any]:
            yield from fn(engine_of(engines, state), state, *values)
        return stream

    def call(state: SessionState, *values: Any) -> Any:
        return fn(engine_of(engines, state), state, *values)
    return call


def checkpoint_choices(engines: Mapping[str, Engine]) -> list[tuple[str, str]]:
    """(label, name) per checkpoint for the selector: its task, metric and method."""
    out = []
    for name, e in engines.items():
        info = e.info()
        recipe = (e.loaded.meta.get("training") or {}).get("recipe", "task")
        what = "no adapter" if info.method == "base" else f"{info.method}, {recipe} recipe"
        out.append((f"{name}: {info.task} ({metric_name(e)}; {what})", name))
    return out


def metric_name(engine: Engine) -> str:
    """The quick eval's metric: bits per byte for a plain-text task, else accuracy."""
    return task_spec(engine.task).metric


def honest_labels(engine: Engine) -> str:
    """What the numbers mean, for the engine in use (model, simulation, quick eval, adapter)."""
    info = engine.info()
    metric = ("**bits per byte** of the passages' text (lower is better; token perplexity beside it), "
              if metric_name(engine) == "bits_per_byte" else "accuracy, ")
    lines = [
        f"**Model:** {info.model_description}. The shipped weights were already **Q4_1** (about 4.5 bits) before "
        "coalora saw them: \"full precision\" here means those weights dequantized.",
        "**Quantization is simulated:** weights are quantized to NF-k and dequantized back to float (exact "
        "storage sizes are computed; no low-bit kernels run).",
        f"**Quick eval:** {info.task.upper()} dev part, {info.n_rows} fixed seeded rows, {metric}{info.dtype} compute; "
        "error bars are ± 1 standard error. The predicted front and the GP are fitted on the same rows, so "
        "points and front are on one measure. Choosing among configurations by these rows makes them "
        "optimistic: the number to report is **Score on test (reportable)**, every row of the test part, "
        "which no choice has looked at.",
        ("**Adapter:** CoA-LoRA checkpoint `" + str(info.checkpoint) + "` (θ makes the adapter for each configuration)."
         if info.method == "coalora" else "**No trained adapter is loaded:** scores are the quantized base only."),
    ]
    lines += [f"⚠ {n}" for n in info.notices]
    return "\n\n".join(lines)


def select_checkpoint(engines: Mapping[str, Engine], state: SessionState, name: str) -> list[Any]:
    """Use checkpoint `name` for this session: its adapter on the same configuration, its task's
    quick eval, front and points -> [state, labels, figure, status, table, report line]; the
    layout chains the evaluation of the configuration under it."""
    engine = _loaded(engines, name)
    state.switch_checkpoint(state.checkpoint or next(iter(engines)), name)
    info = engine.info()
    status = (f"Checkpoint **{name}** ({info.task}, {metric_name(engine)}): evaluating the current configuration "
              "with its adapter.")
    return [state, honest_labels(engine), figure(engine, state), status, table(state), ""]


# ---- configuration <-> state ------------------------------------------------------------
def nf_config(engine: Engine, state: SessionState) -> Configuration:
    """The session's NF-k configuration (what the sliders and fields edit)."""
    if state.config is None:
        return engine.preset(DEFAULT_PRESET)
    return engine.space.decode(state.config)


def current_config(engine: Engine, state: SessionState) -> Configuration:
    """The configuration the session evaluates: its deployment-target one if chosen, else NF-k."""
    if state.target is not None:
        names = [m.name for m in engine.space.matrices]
        return engine.space.target_configuration(state.target["target"], {
            "default": state.target["formats"][0], "matrices": dict(zip(names, state.target["formats"]))})
    return nf_config(engine, state)


def _set(state: SessionState, config: Configuration) -> SessionState:
    if config.target == "coalora":
        state.config, state.target = config.encode().tolist(), None
    else:  # the NF-k configuration stays as it was, for the sliders
        state.target = {"target": config.target, "formats": list(config.formats)}
    if state.current is not None and state.current.get("config_hash") != config.hash:
        state.current, state.prediction = None, None
    return state


def with_bits(config: Configuration, bits_of: dict[str, int]) -> Configuration:
    """`config` with the weight bits of some matrices (by name) replaced."""
    return config.with_settings({n: config.setting(n).replace(bits=b) for n, b in bits_of.items()})


def with_field(config: Configuration, name: str, value: Any) -> Configuration:
    """`config` with one setting field set to `value` for every matrix."""
    return config.with_settings({m.name: s.replace(**{name: value}) for m, s in config.items()})


def majority(config: Configuration, name: str) -> Any:
    return Counter(getattr(s, name) for s in config.settings).most_common(1)[0][0]


def size_line(config: Configuration) -> str:
    """The always-visible storage line (exact, before any evaluation)."""
    if config.target != "coalora":
        kinds = ", ".join(f"{f} x{n}" for f, n in Counter(config.formats).most_common(4))
        return (f"**{config.avg_bits:.3f} bits per weight** on average · **{config.storage_bytes / MB:.2f} MB** as "
                f"**{config.target}** stores them ({config.storage_bytes:,} bytes: codes, scales, zero points and "
                f"padding of the {config.space.n_matrices} projections as that runtime holds them; embeddings, norms "
                f"and adapter not counted) · {kinds} · configuration `{config.hash}`")
    return (f"**{config.avg_bits:.3f} bits per weight** on average · **{config.packed_bytes / MB:.2f} MB** packed "
            f"({config.packed_bytes:,} bytes: weights, scales, offsets and padding of the "
            f"{config.space.n_matrices} quantized projections; embeddings, norms and adapter not counted) · "
            f"configuration `{config.hash}`")


def control_values(config: Configuration) -> list[Any]:
    """Values for [*block sliders, attention bits, MLP bits, *advanced fields]."""
    attn = Counter(s.bits for m, s in config.items() if m.module_type in ATTENTION_TYPES).most_common(1)[0][0]
    mlp = Counter(s.bits for m, s in config.items() if m.module_type in MLP_TYPES).most_common(1)[0][0]
    return [*config.block_bits(), attn, mlp, *[majority(config, f) for f in ADVANCED_FIELDS]]


def config_outputs(engine: Engine, state: SessionState, config: Configuration) -> list[Any]:
    """[state, size line, download path, *control values] after a configuration change. For a
    target configuration the block sliders and the attention / MLP bits show its formats' bit
    widths; the NF-k-only fields keep the session's NF-k values."""
    _set(state, config)
    values = control_values(nf_config(engine, state))
    if config.target != "coalora":
        nb = config.space.n_blocks
        widths = {t: Counter(format_bits(config.format(m.name)) for m in config.space.matrices if m.module_type in types)
                  for t, types in (("attention", ATTENTION_TYPES), ("mlp", MLP_TYPES))}
        values[:nb + 2] = [*target_block_bits(config), *(snap_bits(min(w.most_common(1)[0][0], 8))
                                                        for w in widths.values())]
    return [state, size_line(config), str(downloads.write_config(engine.workdir, config)), *values]


# ---- edits ---------------------------------------------------------------------------------
def apply_sliders(engine: Engine, state: SessionState, *values: float) -> list[Any]:
    """Block sliders -> configuration: blocks whose slider differs from their current bits get
    the (snapped) slider bits in all 7 projections; other blocks keep their settings."""
    config = current_config(engine, state)
    target = config.target != "coalora"
    now = target_block_bits(config) if target else config.block_bits()
    if len(values) != len(now):
        raise gr.Error(f"expected {len(now)} block sliders, got {len(values)}")
    changes: dict[str, int] = {}
    for b, v in enumerate(values):
        want = round(float(v)) if target else snap_bits(v)  # a target snaps per matrix (Target.closest_format)
        if want != now[b]:
            changes.update({m.name: want for m in config.space.matrices if m.block == b})
    if not changes:
        return config_outputs(engine, state, config)
    return config_outputs(engine, state, with_target_bits(config, changes) if target else with_bits(config, changes))


def apply_override(engine: Engine, state: SessionState, group: str, bits: Any) -> list[Any]:
    """group 'attention' or 'mlp': set the weight bits of those projections in every block."""
    types = {"attention": ATTENTION_TYPES, "mlp": MLP_TYPES}[group]
    config = current_config(engine, state)
    b = snap_bits(bits)
    which = {m.name: b for m in config.space.matrices if m.module_type in types}
    if config.target != "coalora":
        return config_outputs(engine, state, with_target_bits(config, which))
    return config_outputs(engine, state, with_bits(config, which))


def apply_field(engine: Engine, state: SessionState, name: str, value: Any) -> list[Any]:
    """One advanced field (scale_bits, scale_format, block_size, scale_block_size) everywhere."""
    if name not in FIELD_NAMES:
        raise gr.Error(f"unknown field {name!r}; known fields are {', '.join(FIELD_NAMES)}")
    if name != "scale_format":
        value = int(value)
    if state.target is not None:
        raise gr.Error(f"{name} is a field of coalora's NF-k settings; a {state.target['target']} configuration is "
                       "made of formats: choose them under 'Deployment target', or pick target coalora to edit NF-k fields")
    try:
        return config_outputs(engine, state, with_field(nf_config(engine, state), name, value))
    except CoaloraError as e:
        raise _err(e) from None


def apply_preset(engine: Engine, state: SessionState, name: str) -> list[Any]:
    """A preset; under a deployment target, its bit width in the target's closest formats
    (min / max: the narrowest / widest each matrix may hold)."""
    try:
        preset = engine.preset(name)
    except CoaloraError as e:
        raise _err(e) from None
    if state.target is None:
        return config_outputs(engine, state, preset)
    config = current_config(engine, state)
    bits = {"min": 1, "max": 32}.get(name, majority(preset, "bits"))
    return config_outputs(engine, state, with_target_bits(config, {m.name: bits for m in config.space.matrices}))


def apply_allocation(engine: Engine, state: SessionState, budget: float, method: str) -> list[Any]:
    """Budget + method -> configuration; returns config outputs plus the allocation note.
    Under a deployment target: the target's ILP in its real bytes (whatever the method)."""
    try:
        if state.target is not None:
            config, note = engine.allocate_target(state.target["target"], budget)
        else:
            config, note = engine.allocate(budget, method)
    except CoaloraError as e:
        raise _err(e) from None
    return [*config_outputs(engine, state, config), note]


PICK_UNITS = ("bits per weight", "MB")


def apply_front_pick(engine: Engine, state: SessionState, limit: float, unit: str) -> list[Any]:
    """The predicted front's best point within `limit` (average bits per weight, or MB of
    packed quantized projections) -> configuration; config outputs plus a note."""
    front = engine.predictor.front if engine.predictor is not None else None
    if front is None:
        raise gr.Error("there is no predicted front to pick from")
    if unit not in PICK_UNITS:
        raise gr.Error(f"unit {unit!r} is unknown; allowed: {', '.join(PICK_UNITS)}")
    try:
        x = float(limit)
    except (TypeError, ValueError):
        raise gr.Error(f"limit {limit!r} is not a number") from None
    size = (lambda c: c.avg_bits) if unit == PICK_UNITS[0] else (lambda c: c.packed_bytes / MB)  # noqa: E731
    fits = [p for p in front.points if size(p.config) <= x]
    if not fits:
        cheapest = min(size(p.config) for p in front.points)
        raise gr.Error(f"no point of the front fits within {x:g} {unit}; its cheapest needs {cheapest:.3f}")
    best = min(fits, key=lambda p: p.mean)  # the front's mean is the f1 (error) to minimise
    line = front_line(front)
    i = line.avg_bits.index(best.avg_bits)
    lo, hi = sorted((line.lower[i], line.upper[i]))  # in accuracy the f1 band's edges swap
    note = (f"front point at {best.avg_bits:.3f} bits, {best.config.packed_bytes / MB:.2f} MB: predicted "
            f"{line.y[i]:.3f} (band {lo:.3f} .. {hi:.3f}); measuring it now")
    measured = engine.predictor.best_measured(lambda c: size(c) <= x)
    if measured is not None:  # the best single measurement: the max of many, so it reads high
        c, value, n = measured
        note += (f". Best measured within {x:g} {unit}: {value:.3f} at {c.avg_bits:.3f} bits (configuration "
                 f"`{c.hash}`, the best of {n} measured; a maximum of noisy measurements reads optimistic)")
    return [*config_outputs(engine, state, best.config), note]


def apply_upload(engine: Engine, state: SessionState, path: str | None) -> list[Any]:
    """An uploaded configuration JSON file -> configuration (size checked before reading)."""
    if not path:
        raise gr.Error("no file was uploaded")
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise gr.Error(f"the uploaded file is {size:,} bytes; a configuration JSON is at most {MAX_CONFIG_BYTES:,} bytes")
    with open(path, "rb") as f:
        data = f.read()
    try:
        config = parse_config(engine, data, source=f"uploaded file {os.path.basename(path)!r}")
    except CoaloraError as e:
        raise _err(e) from None
    return config_outputs(engine, state, config)


# ---- deployment targets (docs/deploy.md) -------------------------------------------------------
TARGETS = ("coalora", "bnb", "gguf", "torchao")
TARGET_LABELS = {"coalora": "coalora NF-k (the sliders; simulated only)", "bnb": "bnb: transformers + bitsandbytes",
                 "gguf": "gguf: llama.cpp", "torchao": "torchao: transformers + torchao"}
DEFAULT_TARGET_FORMAT = {"bnb": "nf4", "gguf": "Q4_0", "torchao": "int4-g32"}


def target_block_bits(config: Configuration) -> list[int]:
    """(n_blocks,) the bit width most of each block's matrices' formats state, shown on the
    sliders (2..8: wider formats, fp16 and up, show as 8)."""
    out = []
    for b in range(config.space.n_blocks):
        widths = Counter(format_bits(config.format(m.name)) for m in config.space.matrices if m.block == b)
        out.append(min(max(widths.most_common(1)[0][0], 2), 8) if widths else 4)
    return out


def with_target_bits(config: Configuration, bits_of: dict[str, int]) -> Configuration:
    """A target configuration with some matrices (by name) moved to the format closest to the
    given bit width (Target.closest_format, keeping each one's kind)."""
    from coalora.quant.targets import get_target

    target, shape = get_target(config.target), {m.name: m.shape for m in config.space.matrices}
    return config.with_formats({n: target.closest_format(shape[n], b, like=config.format(n))
                                for n, b in bits_of.items()})


NF_SLIDER_INFO = "2, 3, 4 or 8 (5-7 snap to the nearest)"


def slider_info(engine: Engine, target: str) -> str:
    """The block sliders' hint: what a slider value becomes under `target`."""
    if _check_target(target) == "coalora":
        return NF_SLIDER_INFO
    widths = sorted({format_bits(f) for f in engine.target_formats(target)})
    return (f"{target}: the format of the nearest bit width ({', '.join(map(str, widths))}; "
            "same kind as the current one where it exists)")


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise gr.Error(f"deployment target {target!r} is unknown; allowed: {', '.join(TARGETS)}")
    return target


def target_choices(engine: Engine, target: str) -> tuple[list[str], str | None]:
    """(formats of `target` legal on every projection, the default one) for the format menu."""
    if _check_target(target) == "coalora":
        return [], None
    formats = list(engine.target_formats(target))
    return formats, DEFAULT_TARGET_FORMAT[target] if DEFAULT_TARGET_FORMAT[target] in formats else formats[0]


def apply_target(engine: Engine, state: SessionState, target: str, fmt: str | None) -> list[Any]:
    """Target + one format for every projection -> configuration (target coalora: back to the
    session's NF-k configuration); config outputs plus a note."""
    if _check_target(target) == "coalora":
        return [*config_outputs(engine, state, nf_config(engine, state)), "Back to coalora's NF-k configuration (the sliders)."]
    formats, default = target_choices(engine, target)
    fmt = fmt or default
    if fmt not in formats:
        raise gr.Error(f"format {fmt!r} is not legal for every projection under target {target}; allowed: {', '.join(formats)}")
    config = engine.space.target_configuration(target, fmt)
    return [*config_outputs(engine, state, config), f"{target}: {fmt} on all {engine.space.n_matrices} projections."]


def verify_line(engine: Engine, state: SessionState) -> str:
    """Score the current target configuration in its real runtime beside the simulation."""
    config = current_config(engine, state)
    missing = engine.runtime_missing(config.target)
    if config.target == "coalora":
        raise gr.Error(missing)
    if missing and config.target != "gguf":
        raise gr.Error(f"{config.target}'s runtime is not installed here: {missing}")
    try:
        r = engine.verify(config)
    except CoaloraError as e:
        raise _err(e) from None
    parts = [f"**Verified `{config.hash}` ({config.target})** on {len(engine.split)} {engine.split.part} rows, fp32:"]
    if "file_check" in r:
        fc = r["file_check"]
        parts.append(f"base.gguf: {fc['tensors_checked'] - len(fc['tensors_differing'])} of {fc['tensors_checked']} "
                     "tensors bit-identical to the simulation.")
    if r.get("runtime") is None:
        parts.append(f"Runtime not run: {r.get('runtime_absent')}.")
        return " ".join(parts)
    parts.append(f"runtime ({r['runtime']}) **{r['runtime_accuracy']:.4f}** vs simulated **{r['simulated_accuracy']:.4f}**;"
                 f" same prediction on {r['rows'] - len(r['rows_differing'])}/{r['rows']} rows; largest log-prob "
                 f"difference {r['max_label_logprob_diff']:.2g} (label words). Scored in fp32, so the simulated number "
                 "can differ slightly from the app's quick eval.")
    return " ".join(parts)


# ---- evaluation ----------------------------------------------------------------------------
_FRONT_LINES: dict[int, tuple[Any, Any]] = {}  # id(front) -> (front, FrontLine): converted once


def _front_line(engine: Engine) -> Any:
    front = engine.predictor.front if engine.predictor is not None else None
    if front is None:
        return None
    cached = _FRONT_LINES.get(id(front))
    if cached is None or cached[0] is not front:  # holding the front keeps its id from being reused
        cached = _FRONT_LINES[id(front)] = (front, front_line(front))
    return cached[1]


def figure(engine: Engine, state: SessionState, pending: Configuration | None = None) -> Any:
    """The session's figure; pending: the configuration being measured, whose GP prediction is
    drawn before its first estimate arrives."""
    info = engine.info()
    metric = state.current["metric"] if state.current else metric_name(engine)
    return result_figure(state.points, state.current, _front_line(engine),
                         [r.to_dict() for r in engine.baselines()], state.prediction, metric, info.task,
                         rows=f"{len(engine.split)} {engine.split.part} rows",
                         seen=engine.predictor.observed if engine.predictor is not None else (),
                         prediction_at=None if pending is None else pending.avg_bits)


def table(state: SessionState) -> list[list[Any]]:
    rows = points_table(state.points, state.reports)
    return [list(r.values()) for r in rows]


TABLE_HEADERS = ["avg_bits", "size_MB", "score", "stderr", "n", "predicted", "pred_std", "P(on front)", "test (reportable)",
                 "method", "formats", "config_hash", "summary"]


def status_line(rec: dict[str, Any], prediction: tuple[float, float] | None) -> str:
    extra = rec.get("extra") or {}
    state = "final" if extra.get("done") else "streaming"
    pred = "" if prediction is None else f" · GP predicted {prediction[0]:.3f} ± {prediction[1]:.3f}"
    if extra.get("p_front") is not None:
        pred += f" · P(on front) {extra['p_front']:.2f}"
    if extra.get("perplexity") is not None:  # a plain-text task: token perplexity beside bits per byte
        pred = f" · token perplexity {extra['perplexity']:.2f}" + pred
    return (f"{rec['metric']} **{rec['value']:.3f} ± {rec['stderr']:.3f}** on {rec['n']}/{extra.get('n_target', '?')} "
            f"rows ({state}, {rec['seconds']:.1f} s, {rec.get('dtype')}){pred}")


def pending_line(engine: Engine, config: Configuration, prediction: tuple[float, float] | None) -> str:
    """The status while a configuration's first estimate is computed: what the GP expects."""
    what = (f"measuring {metric_name(engine)} at {config.avg_bits:.3f} bits per weight on {len(engine.split)} "
            f"{engine.split.part} rows")
    if prediction is None:
        return f"{what} · waiting for the first estimate (no GP prediction for this configuration)"
    return (f"{what} · waiting for the first estimate · GP predicts **{prediction[0]:.3f} ± {prediction[1]:.3f}** "
            "(a prediction, not a measurement)")


def evaluate_stream(engine: Engine, state: SessionState) -> Iterator[list[Any]]:
    """Quick-eval the session's configuration, yielding [state, figure, status, table] after
    every chunk (the error bar tightens); the final record joins the session's points. A
    configuration not measured yet first gets one update at once, before any model work: the
    GP's prediction drawn at its size (a whole-configuration change waits ~1.3 s for its first
    estimate, and other sessions' evaluations may come first).

    A newer edit supersedes it: when the session's configuration is no longer the one being
    evaluated, the generator stops at its next chunk boundary (before computing another
    chunk, and without touching the session), which frees the model at once; the layout's
    trigger_mode="always_last" then runs the evaluation of the new configuration."""
    config = current_config(engine, state)
    _set(state, config)
    mine = state.identity()
    if state.current is None:
        state.prediction = engine.predict(config)
        yield [state, figure(engine, state, pending=config), pending_line(engine, config, state.prediction),
               table(state)]
        if state.identity() != mine:
            return  # a newer edit came meanwhile
    with closing(engine.evaluate(config)) as records:
        while state.identity() == mine:
            rec = next(records, None)
            if rec is None or state.identity() != mine:
                return
            d = rec.to_dict()
            prediction = state.prediction = tuple(d["extra"]["predicted"]) if "predicted" in d["extra"] else None
            state.current = d
            if d["extra"].get("done"):
                state.add_point(d)
            yield [state, figure(engine, state), status_line(d, prediction), table(state)]


def report_line(rec: dict[str, Any]) -> str:
    extra = rec.get("extra") or {}
    state = "final" if extra.get("done") else "streaming"
    return (f"**Reportable:** {rec['metric']} **{rec['value']:.3f} ± {rec['stderr']:.3f}** on {rec['n']}/"
            f"{extra.get('n_target', '?')} {rec['split'].get('part', 'test')} rows ({state}, {rec['seconds']:.1f} s) · "
            f"configuration `{rec['config_hash']}`. Choose configurations by the quick eval (dev rows); "
            "report this number, measured once on rows no choice has looked at.")


def report_stream(engine: Engine, state: SessionState) -> Iterator[list[Any]]:
    """Score the session's configuration on every row of the test part, the number to report
    (the quick eval is on dev rows, where choosing happens): yields [state, report line,
    table]; the final record is kept in state.reports. Superseded like evaluate_stream."""
    config = current_config(engine, state)
    _set(state, config)
    mine = state.identity()
    with closing(engine.evaluate(config, report=True)) as records:
        for rec in records:
            if state.identity() != mine:
                return
            d = rec.to_dict()
            if d["extra"].get("done"):
                state.reports[config.hash] = d
            yield [state, report_line(d), table(state)]


def calibration(engine: Engine, state: SessionState | None = None) -> list[Any]:
    """[figure, summary] of GP-predicted vs measured over every app observation so far."""
    from coalora.results import iter_records

    p = engine.predictor
    recs = [] if p is None or p.observations is None else [
        r.to_dict() for r in iter_records(p.observations)
        if r.split_hash == engine.split.manifest_hash and r.checkpoint == p.checkpoint]
    recs = [r for r in recs if (r.get("extra") or {}).get("predicted")]
    on_front = None
    if recs:  # under the GP as it is now (it has learned from these points)
        on_front = p.prob_on_front([engine.space.from_dict(r["config"]) for r in recs])
    return list(calibration_figure(recs, p.metric if p is not None else "accuracy", on_front))


def table_csv(engine: Engine, state: SessionState) -> str:
    """The session's table as a CSV file -> path."""
    buf = io.StringIO()
    rows = points_table(state.points, state.reports)
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else TABLE_HEADERS)
    w.writeheader()
    w.writerows(rows)
    return str(downloads.write_text(engine.workdir, "coalora-session-points.csv", buf.getvalue()))


def export(engine: Engine, state: SessionState) -> str:
    try:
        return str(engine.export_zip(current_config(engine, state), downloads.export_folder(engine.workdir)))
    except CoaloraError as e:
        raise _err(e) from None


def compute_baselines(engine: Engine, state: SessionState) -> list[Any]:
    engine.baselines(compute=True)
    return [figure(engine, state), f"Baselines: {len(engine.baselines())} points (quantized base, no adapter)."]


# ---- API -----------------------------------------------------------------------------------
def api_engine(engines: Mapping[str, Engine], checkpoint: str = "") -> Engine:
    """The engine of the API's `checkpoint` argument ('' or None: the app's first checkpoint)."""
    return _loaded(engines, checkpoint) if checkpoint else next(iter(engines.values()))


def api_config(engine: Engine, text: str) -> Configuration:
    """The API's configuration: JSON text, a preset name (nf4) or TARGET:FORMAT (gguf:Q4_0, that
    format on every projection); never a file path (this is a server)."""
    from coalora.space import PRESETS, TARGET_NAMES

    name = text.strip() if isinstance(text, str) and len(text) < 64 else ""
    if name in PRESETS:
        return engine.space.preset(name)
    head, colon, fmt = name.partition(":")
    if colon and head in TARGET_NAMES[1:]:
        return engine.space.target_configuration(head, fmt)
    if name and not name.startswith("{"):
        raise ConfigError(f"configuration {name!r} is not a preset ({', '.join(PRESETS)}), a TARGET:FORMAT such as "
                          "gguf:Q4_0 or bnb:nf4, or configuration JSON")
    return parse_config(engine, text)


def api_evaluate(engine: Engine, configuration: str) -> Iterator[str]:
    """Configuration (JSON text, preset name or TARGET:FORMAT) -> the result record JSON,
    streamed (the last one is final)."""
    try:
        config = api_config(engine, configuration)
    except CoaloraError as e:
        raise _err(e) from None
    for rec in engine.evaluate(config):
        yield rec.to_json()


def api_allocate(engine: Engine, budget: float, method: str = "fast") -> str:
    """(budget in average bits per weight, method fast / ilp / gp) -> configuration JSON text."""
    try:
        config, _ = engine.allocate(budget, method)
    except CoaloraError as e:
        raise _err(e) from None
    return config.to_json()
