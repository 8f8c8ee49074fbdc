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
