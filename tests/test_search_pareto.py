"""Segmented Pareto selection, non-dominated filtering, hypervolume, reference points."""

import pytest
import torch

from coalora.errors import ConfigError
from coalora.search.acquisition import reference_point
from coalora.search.pareto import BITS_MAX, BITS_MIN, hypervolume, non_dominated, segmented_pareto


def test_bit_range_constants():
    assert BITS_MIN == pytest.approx(2 + 2 / 64 + 16 / (64 * 256))
    assert BITS_MAX == 8.625


def test_non_dominated_hand_made():
    pts = torch.tensor([[1.0, 4.0], [2.0, 3.0], [2.0, 5.0], [3.0, 3.0], [2.0, 3.0]])
    # (2,5) is beaten by (1,4); (3,3) by (2,3); the two equal (2,3) points both stay
    assert non_dominated(pts).tolist() == [True, True, False, False, True]


def test_segmented_selection_keeps_each_segments_front():
    # Two segments over [0, 2): [0,1) and [1,2)
    bits = [0.2, 0.5, 0.8, 1.1, 1.5, 1.9]
    f1 = [0.9, 0.5, 0.6, 0.3, 0.3, 0.1]
    # segment 0: (0.2,.9) (0.5,.5) keep, (0.8,.6) dominated by (0.5,.5)
    # segment 1: (1.1,.3) keep, (1.5,.3) dominated, (1.9,.1) keep
    assert segmented_pareto(bits, f1, n_segments=2, bit_range=(0.0, 2.0)) == [0, 1, 3, 5]
    # one segment: the global front drops the low-bit points beaten by nothing cheaper
    assert segmented_pareto(bits, f1, n_segments=1, bit_range=(0.0, 2.0)) == [0, 1, 3, 5]
    # global front with 1 segment would drop index 1 if a cheaper point were better
    assert segmented_pareto([0.1, 0.5, 1.5], [0.2, 0.5, 0.4], n_segments=1, bit_range=(0, 2)) == [0]
    assert segmented_pareto([0.1, 0.5, 1.5], [0.2, 0.5, 0.4], n_segments=2, bit_range=(0, 2)) == [0, 2]


def test_segmented_selection_out_of_range_points_go_to_edge_segments():
    assert segmented_pareto([-5.0, 10.0], [1.0, 1.0], n_segments=4, bit_range=(0, 4)) == [0, 1]


@pytest.mark.parametrize("kwargs", [{"n_segments": 0}, {"n_segments": 2.5}, {"bit_range": (3, 3)}])
def test_segmented_selection_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        segmented_pareto([3.0], [0.5], **kwargs)


def test_segmented_selection_mismatched_lengths_and_nan():
    with pytest.raises(ConfigError, match="bits has 2 values but f1 has 1"):
        segmented_pareto([3.0, 4.0], [0.5])
    with pytest.raises(ConfigError, match="NaN"):
        segmented_pareto([3.0], [float("nan")])


def test_hypervolume_normalisation():
    # zero size and perfect accuracy fill the unit square; the largest size adds nothing
    assert hypervolume([BITS_MIN], [1.0]) == pytest.approx(1.0)
    assert hypervolume([BITS_MAX], [1.0]) == pytest.approx(0.0)
    mid = (BITS_MIN + BITS_MAX) / 2
    assert hypervolume([mid], [0.8]) == pytest.approx(0.5 * 0.8)
    # two points: a staircase; a dominated point changes nothing
    two = hypervolume([BITS_MIN, mid], [0.4, 0.8])
    assert two == pytest.approx(0.5 * 0.4 + 0.5 * 0.8)
    assert hypervolume([BITS_MIN, mid, mid + 1], [0.4, 0.8, 0.7]) == pytest.approx(two)
    assert hypervolume([], []) == 0.0
    # explicit range
    assert hypervolume([3.0], [0.5], bit_range=(2.0, 4.0)) == pytest.approx(0.25)


def test_reference_point_is_strictly_worse_than_every_observation():
    f1 = torch.tensor([0.3, 0.5, 0.4])
    bits = torch.tensor([2.5, 4.0, 6.0])
    ref = reference_point(f1, bits)
    assert ref[0] > f1.max() and ref[1] > bits.max()
    assert ref.tolist() == pytest.approx([0.5 + 0.1 * 0.2, 6.0 + 0.1 * 3.5])
    assert ref.tolist() != [0.0, 0.0]
    # a single distinct value still gets a positive margin (never the value itself)
    one = reference_point([0.0, 0.0], [3.0, 3.0])
    assert one[0] > 0.0 and one[1] > 3.0


def test_reference_point_rejects_empty_or_nan():
    with pytest.raises(ConfigError, match="f1"):
        reference_point([], [3.0])
    with pytest.raises(ConfigError, match="bits"):
        reference_point([0.1], [float("nan")])
