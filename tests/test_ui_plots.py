"""Plot builders (ui/plots.py): what the front's two bands mean, in numbers."""

from __future__ import annotations

import pytest

from coalora.search.front import FrontPoint, PredictedFront
from ui.plots import front_line, result_figure


def test_front_bands_expected_value_and_measurement(tiny_space):
    pts = (FrontPoint(3.0, tiny_space.preset("nf2"), 0.4, 0.01, 0.05),
           FrontPoint(5.0, tiny_space.preset("nf4"), 0.2, 0.02, 0.04))
    line = front_line(PredictedFront(pts, tiny_space, meta={"metric": "accuracy", "dev_rows": 174}))
    # accuracy = 1 - f1, so the f1 band's lower edge is the accuracy band's upper one
    assert line.y == pytest.approx((0.6, 0.8)) and line.lower == pytest.approx((0.62, 0.84))
    assert line.lower_pred == pytest.approx((0.7, 0.88)) and line.upper_pred == pytest.approx((0.5, 0.72))
    names = [t.name for t in result_figure([], front=line).data]
    assert names[:2] == ["a measurement would land here (± 2σ with row noise)", "front band (± 2σ of the expected value)"]
    assert "174 dev rows" in names[2]
    # a front saved before std_pred existed draws the one band it has
    old = front_line(PredictedFront(tuple(FrontPoint(p.budget, p.config, p.mean, p.std) for p in pts), tiny_space,
                                    meta={"metric": "accuracy"}))
    assert old.lower_pred == () and [t.name for t in result_figure([], front=old).data][0].startswith("front band")


def test_a_bits_per_byte_front_is_drawn_on_the_metric_axis(tiny_space):
    """An lm checkpoint's front (objective error: f1 is bits per byte itself) shares the
    points' axis, unconverted; a training-loss front goes to its own axis."""
    pts = (FrontPoint(3.0, tiny_space.preset("nf2"), 1.4, 0.01, 0.05),)
    line = front_line(PredictedFront(pts, tiny_space, meta={"metric": "bits_per_byte", "objective": "error"}))
    assert line.on_metric_axis and line.y == pytest.approx((1.4,)) and line.lower == pytest.approx((1.38,))
    fig = result_figure([], front=line, metric="bits_per_byte", task="lambada")
    assert "(lower is better)" in fig.layout.yaxis.title.text and "yaxis2" not in fig.layout.to_plotly_json()
    assert fig.layout.yaxis.type == "log"
    loss = front_line(PredictedFront(pts, tiny_space, meta={"metric": "loss", "objective": "loss"}))
    assert not loss.on_metric_axis
    assert not result_figure([], front=front_line(PredictedFront(pts, tiny_space, meta={"metric": "accuracy"})))\
        .layout.yaxis.title.text.count("lower is better")
