"""Pure plot builders: records / front -> plotly Figure. No gradio, no model.

Records are ResultRecord dicts (coalora.results); `extra.summary` carries the configuration
summary and `extra.predicted` the GP's (mean, std) when known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Sequence

from coalora.metrics import from_error, higher_is_better

MB = 1e6  # sizes are shown in decimal megabytes of packed quantized matrices


@dataclass(frozen=True)
class FrontLine:
    """The predicted front as plain numbers for plotting. `on_metric_axis`: y values are in the
    task metric (converted from the front's f1 = 1 - accuracy); otherwise they are the front's
    raw f1, drawn on a second axis."""

    avg_bits: tuple[float, ...]
    packed_bytes: tuple[int, ...]
    y: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    summaries: tuple[str, ...]
    on_metric_axis: bool
    label: str
    lower_pred: tuple[float, ...] = ()  # ± 2 predictive σ: where one measurement would land
    upper_pred: tuple[float, ...] = ()


def front_line(front: Any) -> FrontLine:
    """A coalora.search.front.PredictedFront -> FrontLine, in the task metric when the front
    models it (objective "error": f1 = 1 - accuracy, or bits per byte itself), else (a training
    loss) in raw f1 on its own axis. The label names the rows the front was fitted on."""
    metric = str(front.meta.get("metric", ""))
    on_axis = front.meta.get("objective", "error") == "error" and metric not in ("", "loss")
    pts = sorted(front.points, key=lambda p: p.avg_bits)
    conv = (lambda v: from_error(metric, v)) if on_axis else (lambda v: v)  # noqa: E731
    n_rows = front.meta.get("dev_rows")
    rows = f", {n_rows} {front.meta.get('part', 'dev')} rows" if n_rows else ""
    return FrontLine(
        avg_bits=tuple(p.avg_bits for p in pts),
        packed_bytes=tuple(p.config.packed_bytes for p in pts),
        y=tuple(conv(p.mean) for p in pts),
        lower=tuple(conv(p.mean - 2 * p.std) for p in pts),
        upper=tuple(conv(p.mean + 2 * p.std) for p in pts),
        summaries=tuple(p.config.describe() for p in pts),
        on_metric_axis=on_axis,
        lower_pred=() if any(p.std_pred is None for p in pts) else tuple(conv(p.mean - 2 * p.std_pred) for p in pts),
        upper_pred=() if any(p.std_pred is None for p in pts) else tuple(conv(p.mean + 2 * p.std_pred) for p in pts),
        label=("GP-predicted front (mean ± 2σ" if on_axis else "GP-predicted f1 (mean ± 2σ, right axis") + rows + ")",
    )


def _fmt_pred(pred: Sequence[float] | None) -> str:
    return "n/a (no GP)" if not pred else f"{pred[0]:.3f} ± {pred[1]:.3f}"


def _hover(rec: dict[str, Any], title: str) -> str:
    extra = rec.get("extra") or {}
    n, target = rec.get("n"), extra.get("n_target")
    rows = f"{n}/{target} rows" if target else f"{n} rows"
    return (f"<b>{title}</b><br>{extra.get('summary', '')}<br>avg bits {rec['avg_bits']:.3f}, "
            f"{rec['packed_bytes'] / MB:.2f} MB<br>measured {rec['value']:.3f} ± {rec['stderr']:.3f} ({rows})"
            f"<br>predicted {_fmt_pred(extra.get('predicted'))}")


def result_figure(points: Sequence[dict[str, Any]], current: dict[str, Any] | None = None,
                  front: Any = None, baselines: Sequence[dict[str, Any]] = (),
                  prediction: Sequence[float] | None = None, metric: str = "accuracy", task: str = "sst2",
                  rows: str = "quick-eval rows", seen: Collection[str] = (), prediction_at: float | None = None):
    """Score vs average bits: the front line with its band, the baselines, this session's
    points, and the current point with its error bar and the GP's prediction.

    front: a FrontLine (or None). Error bars are ± 1 stderr; the band ± 2σ. seen: hashes of the
    configurations the GP behind the front was fitted on (filled markers; open: not yet).
    prediction_at: the average bits to draw `prediction` at while `current` has no measured
    point yet (the configuration whose first estimate is being computed).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    secondary = front is not None and not front.on_metric_axis
    if front is not None:
        yaxis = "y2" if secondary else "y"
        hover = [f"<b>predicted front</b><br>{s}<br>avg bits {b:.3f}, {mb / MB:.2f} MB<br>predicted {y:.3f} "
                 f"(band {lo:.3f} .. {hi:.3f})"
                 for s, b, mb, y, lo, hi in zip(front.summaries, front.avg_bits, front.packed_bytes, front.y,
                                                front.lower, front.upper)]
        if front.lower_pred:
            fig.add_trace(go.Scatter(x=list(front.avg_bits) + list(front.avg_bits)[::-1],
                                     y=list(front.upper_pred) + list(front.lower_pred)[::-1], fill="toself",
                                     fillcolor="rgba(99,110,250,0.07)", line={"width": 0}, hoverinfo="skip",
                                     name="a measurement would land here (± 2σ with row noise)", yaxis=yaxis))
        fig.add_trace(go.Scatter(x=list(front.avg_bits) + list(front.avg_bits)[::-1],
                                 y=list(front.upper) + list(front.lower)[::-1], fill="toself",
                                 fillcolor="rgba(99,110,250,0.18)", line={"width": 0}, hoverinfo="skip",
                                 name="front band (± 2σ of the expected value)", yaxis=yaxis))
        fig.add_trace(go.Scatter(x=front.avg_bits, y=front.y, mode="lines+markers", name=front.label,
                                 line={"color": "rgb(99,110,250)"}, marker={"size": 4},
                                 hovertext=hover, hoverinfo="text", yaxis=yaxis))
    if baselines:
        b = sorted(baselines, key=lambda r: r["avg_bits"])
        fig.add_trace(go.Scatter(
            x=[r["avg_bits"] for r in b], y=[r["value"] for r in b], mode="markers", name="base, no adapter",
            marker={"symbol": "square", "size": 9, "color": "gray"},
            error_y={"type": "data", "array": [r["stderr"] for r in b], "visible": True},
            hovertext=[_hover(r, f"quantized base, no adapter ({(r.get('extra') or {}).get('preset', '')})") for r in b],
            hoverinfo="text"))
    done = [p for p in points if current is None or p.get("config_hash") != current.get("config_hash")]
    for group, name, symbol in ((True, "this session, seen by the front", "circle"),
                                (False, "this session, not yet seen by the front", "circle-open")):
        pts = [r for r in done if (r.get("config_hash") in seen) == group]
        if pts:
            fig.add_trace(go.Scatter(
                x=[r["avg_bits"] for r in pts], y=[r["value"] for r in pts], mode="markers", name=name,
                marker={"size": 8, "color": "rgb(0,150,136)", "symbol": symbol, "line": {"width": 2}},
                error_y={"type": "data", "array": [r["stderr"] for r in pts], "visible": True, "thickness": 1},
                hovertext=[_hover(r, "evaluated this session") for r in pts], hoverinfo="text"))
    if current is not None:
        fig.add_trace(go.Scatter(
            x=[current["avg_bits"]], y=[current["value"]], mode="markers", name="current",
            marker={"size": 13, "color": "rgb(239,85,59)", "symbol": "diamond"},
            error_y={"type": "data", "array": [current["stderr"]], "visible": True, "thickness": 2},
            hovertext=[_hover(current, "current configuration")], hoverinfo="text"))
    at = current["avg_bits"] if current is not None else prediction_at
    if prediction is not None and at is not None:
        title = "GP prediction" if current is not None else "GP prediction, being measured"
        fig.add_trace(go.Scatter(
            x=[at], y=[prediction[0]], mode="markers", name="GP prediction (± σ)",
            marker={"size": 10, "symbol": "x-open", "color": "rgb(99,110,250)"},
            error_y={"type": "data", "array": [prediction[1]], "visible": True},
            yaxis="y2" if secondary else "y",
            hovertext=[f"<b>{title}</b><br>avg bits {at:.3f}<br>{prediction[0]:.3f} ± {prediction[1]:.3f}"],
            hoverinfo="text"))
    fig.update_layout(
        xaxis={"title": {"text": "average bits per weight (quantized projections)"}, "range": [1.9, 8.8]},
        yaxis={"title": {"text": f"{task} {metric}, {rows} (± 1 stderr)" if higher_is_better(metric) else
                         f"{task} {metric} (lower is better)<br>{rows}, ± 1 stderr, log scale"},
               # bits per byte: the 2-bit points (5-10) would flatten the 1.2-1.5 where choices are made
               **({} if higher_is_better(metric) else {"type": "log"})},
        legend={"orientation": "h", "y": -0.2}, margin={"l": 60, "r": 60 if secondary else 20, "t": 30, "b": 40},
        height=480, template="plotly_white", hovermode="closest",
    )
    if not fig.data and metric in ("accuracy", "acc", "acc_norm"):
        fig.update_layout(yaxis={"range": [0, 1]})  # an empty chart still shows the metric's scale
    if secondary:
        fig.update_layout(yaxis2={"title": {"text": "GP-predicted f1 (lower is better)"}, "overlaying": "y", "side": "right"})
    return fig


def points_table(points: Sequence[dict[str, Any]], reports: dict[str, dict[str, Any]] | None = None
                 ) -> list[dict[str, Any]]:
    """Rows for the session table / CSV: one per evaluated point, newest first; `reports`
    (config hash -> record on the full test part) fills the reportable column."""
    rows = []
    reports = reports or {}
    for r in reversed(points):
        rep = reports.get(r.get("config_hash"))
        extra = r.get("extra") or {}
        pred = extra.get("predicted")
        rows.append({
            "avg_bits": round(r["avg_bits"], 4), "size_MB": round(r["packed_bytes"] / MB, 3),
            r.get("metric", "value"): round(r["value"], 4), "stderr": round(r["stderr"], 4), "n": r["n"],
            "predicted": None if not pred else round(pred[0], 4), "pred_std": None if not pred else round(pred[1], 4),
            "P(on front)": extra.get("p_front"),
            "test (reportable)": None if rep is None else f"{rep['value']:.4f} ± {rep['stderr']:.4f} (n={rep['n']})",
            "method": r.get("method"),
            # which runtime's formats: a deployment target's name, or NF-k (coalora's own format)
            "formats": (r.get("config") or {}).get("target") or "NF-k",
            "config_hash": r.get("config_hash"), "summary": extra.get("summary", ""),
        })
    return rows


def calibration_figure(records: Sequence[dict[str, Any]], metric: str = "accuracy",
                       on_front: Sequence[float] | None = None):
    """GP-predicted vs measured for every observation whose prediction was made before it was
    measured (extra.predicted = [mean, std]): the y = x line, ±2σ bars; `on_front` (one per
    such record, or None) colours each point by its probability of being on the front.
    -> (figure, summary line: how many, share inside ±2σ, Spearman rank correlation)."""
    import plotly.graph_objects as go
    from scipy.stats import spearmanr

    pts = [r for r in records if (r.get("extra") or {}).get("predicted")]
    pred = [r["extra"]["predicted"][0] for r in pts]
    sd = [r["extra"]["predicted"][1] for r in pts]
    meas = [r["value"] for r in pts]
    pf = list(on_front) if on_front is not None and len(on_front) == len(pts) else None
    fig = go.Figure()
    lo, hi = min(pred + meas + [0.4]), max(pred + meas + [1.0])
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"dash": "dot", "color": "gray"}))
    if pts:
        marker: dict[str, Any] = {"size": 8, "color": "rgb(99,110,250)"}
        if pf is not None:
            marker.update(color=pf, cmin=0, cmax=1, colorscale="Viridis",
                          colorbar={"title": {"text": "P(on front)"}, "thickness": 12})
        fig.add_trace(go.Scatter(
            x=pred, y=meas, mode="markers", name="observations", marker=marker,
            error_x={"type": "data", "array": [2 * s for s in sd], "visible": True, "thickness": 1},
            hovertext=[f"{(r.get('extra') or {}).get('summary', '')}<br>{r['avg_bits']:.3f} bits<br>predicted "
                       f"{p:.3f} ± {2 * s:.3f} (2σ)<br>measured {m:.3f} ± {r['stderr']:.3f}"
                       + ("" if pf is None else f"<br>P(on front) {pf[i]:.2f} under the current GP")
                       for i, (r, p, s, m) in enumerate(zip(pts, pred, sd, meas))], hoverinfo="text"))
    fig.update_layout(xaxis={"title": {"text": f"GP-predicted {metric} (± 2σ), made before measuring"}},
                      yaxis={"title": {"text": f"measured {metric} (quick eval)"}}, height=380,
                      template="plotly_white", margin={"l": 60, "r": 20, "t": 30, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    if not pts:
        return fig, "No calibration data yet: every evaluation made in the app adds one point."
    inside = sum(abs(m - p) <= 2 * s for p, s, m in zip(pred, sd, meas)) / len(pts)
    rho = spearmanr(pred, meas).statistic if len(pts) >= 3 else float("nan")
    likely = "" if pf is None else f" {sum(q >= 0.5 for q in pf)} of them are likely on the front (P ≥ 0.5)."
    return fig, (f"{len(pts)} observations: {inside:.0%} inside their ±2σ interval, Spearman rank correlation "
                 f"{rho:.2f} (each prediction was made before its point was measured and learned from).{likely}")
