"""Box geometry: IoU, area, clip-and-order, in the contract order (x_min, x_max, y_min, y_max)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.data.boxes import area, clip_and_order, iou

UNIT = (0.0, 1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        pytest.param(UNIT, UNIT, 1.0, id="identical"),
        pytest.param((0.0, 0.2, 0.0, 0.2), (0.5, 0.9, 0.5, 0.9), 0.0, id="disjoint"),
        pytest.param((0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0), 0.0, id="touching-edge"),
        pytest.param((0.0, 0.5, 0.0, 0.5), (0.5, 1.0, 0.5, 1.0), 0.0, id="touching-corner"),
        # Two unit-height boxes of width 0.5 shifted by 0.25: overlap 0.25, union 0.75.
        pytest.param((0.0, 0.5, 0.0, 1.0), (0.25, 0.75, 0.0, 1.0), 1 / 3, id="half-overlap"),
        # A quarter-area box inside the unit box.
        pytest.param((0.25, 0.75, 0.25, 0.75), UNIT, 0.25, id="contained"),
        # Overlap in x only would be wrong if the order were (x_min, y_min, x_max, y_max):
        # here x: [0.1, 0.3] vs [0.2, 0.4] overlap 0.1; y: [0, 1] both -> 0.1 / 0.3.
        pytest.param((0.1, 0.3, 0.0, 1.0), (0.2, 0.4, 0.0, 1.0), 1 / 3, id="contract-order"),
    ],
)
def test_iou_hand_computed(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_iou_zero_area_boxes_score_zero_without_warnings():
    point = (0.5, 0.5, 0.5, 0.5)
    line = (0.2, 0.8, 0.5, 0.5)
    with np.errstate(all="raise"):
        assert iou(point, point) == 0.0
        assert iou(line, line) == 0.0
        assert iou(point, UNIT) == 0.0


def test_iou_inverted_box_has_no_area():
    assert iou((0.9, 0.1, 0.0, 1.0), UNIT) == 0.0
    assert area((0.9, 0.1, 0.0, 1.0)) == 0.0


def test_iou_broadcasts_to_a_pairwise_matrix():
    a = np.array([UNIT, (0.0, 0.5, 0.0, 1.0)])
    b = np.array([UNIT, (0.5, 1.0, 0.0, 1.0), (0.0, 0.1, 0.0, 0.1)])
    matrix = iou(a[:, None], b[None, :])
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, [[1.0, 0.5, 0.01], [0.5, 0.0, 0.02]])


def test_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match="last axis of 4"):
        iou((0.0, 1.0, 0.0), UNIT)


def test_area():
    np.testing.assert_allclose(area([UNIT, (0.1, 0.3, 0.5, 1.0)]), [1.0, 0.1])


def test_clip_and_order():
    boxes = [(0.8, -0.2, 1.5, 0.4), (0.1, 0.2, 0.3, 0.4)]
    np.testing.assert_allclose(clip_and_order(boxes), [(0.0, 0.8, 0.4, 1.0), (0.1, 0.2, 0.3, 0.4)])


coordinate = st.floats(0.0, 1.0, allow_nan=False)
box = st.tuples(coordinate, coordinate, coordinate, coordinate)


@given(box, box)
def test_iou_properties(a, b):
    value = float(iou(a, b))
    assert 0.0 <= value <= 1.0
    assert value == float(iou(b, a))


@given(box)
def test_iou_with_itself_is_one_for_positive_area(raw):
    ordered = clip_and_order(raw)
    if area(ordered) > 0:
        assert float(iou(ordered, ordered)) == pytest.approx(1.0)
    else:
        assert float(iou(ordered, ordered)) == 0.0
