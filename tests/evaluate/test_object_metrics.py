"""Object matching, object P/R/F1, DSB average precision and the object error map."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.measure import label

from napari_unet_nuclei.evaluate.object_metrics import (
    DSB_THRESHOLDS,
    OBJECT_ERROR_CLASSES,
    OBJECT_ERROR_COLORS,
    dsb_average_precision,
    dsb_precisions,
    match_objects,
    object_error_map,
    object_scores,
)


def _box(shape, y0, y1, x0, x1, value, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[y0:y1, x0:x1] = value
    return out


def test_identical_labels_score_one_and_ids_need_not_be_consecutive() -> None:
    truth = _box((40, 40), 2, 10, 2, 10, 7)
    _box((40, 40), 20, 30, 20, 35, 1000, truth)
    predicted = np.where(truth == 7, 3, np.where(truth == 1000, 9, 0))
    match = match_objects(predicted, truth)
    assert (match.tp, match.fp, match.fn) == (2, 0, 0)
    assert match.f1 == match.precision == match.recall == 1.0
    assert dict(zip(match.matched_true.tolist(), match.matched_pred.tolist())) == {7: 3, 1000: 9}
    assert dsb_average_precision(predicted, truth) == 1.0


def test_counts_and_dsb_by_hand() -> None:
    shape = (50, 50)
    truth = _box(shape, 0, 10, 0, 10, 1)  # 100 px
    _box(shape, 20, 30, 20, 30, 2, truth)  # missed
    predicted = _box(shape, 0, 10, 0, 7, 1)  # 70 px inside truth 1: IoU 0.7
    _box(shape, 40, 45, 40, 45, 2, predicted)  # false
    scores = object_scores(predicted, truth)
    assert scores["tp"] == 1 and scores["fp"] == 1 and scores["fn"] == 1
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    assert scores["mean_matched_iou"] == pytest.approx(0.7)
    # Hits (IoU > t) for t = 0.5, 0.55, 0.6, 0.65: 1 / (1 + 1 + 1); none from 0.7 on.
    expected = [1 / 3] * 4 + [0.0] * 6
    np.testing.assert_allclose(dsb_precisions(predicted, truth), expected)
    assert dsb_average_precision(predicted, truth) == pytest.approx(0.4 / 3)
    assert len(DSB_THRESHOLDS) == 10 and DSB_THRESHOLDS[0] == 0.5 and DSB_THRESHOLDS[-1] == 0.95


def test_matching_is_one_to_one_when_ambiguous() -> None:
    # One 2-pixel true object, two 1-pixel predictions: both have IoU exactly 0.5.
    truth = np.array([[1, 1, 0]])
    predicted = np.array([[1, 2, 0]])
    match = match_objects(predicted, truth, 0.5)
    assert match.tp == 1 and match.fp == 1 and match.fn == 0
    assert match_objects(predicted, truth, 0.5, strict=True).tp == 0


def test_empty_images() -> None:
    empty = np.zeros((8, 8), np.uint16)
    one = _box((8, 8), 1, 4, 1, 4, 1)
    assert object_scores(empty, empty)["f1"] == 1.0
    assert dsb_average_precision(empty, empty) == 1.0
    assert object_scores(empty, one)["recall"] == 0.0
    assert object_scores(one, empty)["precision"] == 0.0
    assert dsb_average_precision(one, empty) == 0.0


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="binary mask"):
        object_scores(np.zeros((4, 4), bool), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="shape"):
        object_scores(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="integer labels"):
        object_scores(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32))


def test_error_map_codes_missed_false_merge_split() -> None:
    shape = (60, 80)
    truth = np.zeros(shape, np.int32)
    predicted = np.zeros(shape, np.int32)
    truth[2:12, 2:12] = 1  # matched
    predicted[2:12, 2:12] = 1
    truth[20:30, 2:12] = 2  # missed
    predicted[45:50, 40:45] = 2  # false nucleus
    truth[2:12, 30:40] = 3  # three nuclei merged into one prediction (IoU 1/3 each)
    truth[2:12, 40:50] = 4
    truth[2:12, 50:60] = 6
    predicted[2:12, 30:60] = 3
    truth[30:60, 60:70] = 5  # one nucleus split into three predictions
    predicted[30:40, 60:70] = 4
    predicted[40:50, 60:70] = 5
    predicted[50:60, 60:70] = 6
    errors = object_error_map(predicted, truth)
    assert errors.counts() == {
        "matched": 1,
        "false_nuclei": 1,
        "missed": 1,
        "merges": 1,
        "splits": 1,
    }
    codes = errors.map
    assert codes.dtype == np.uint8
    assert codes[5, 5] == 1 and codes[25, 5] == 3 and codes[47, 42] == 2
    assert codes[5, 35] == codes[5, 45] == codes[5, 55] == 4
    assert codes[35, 65] == codes[45, 65] == codes[55, 65] == 5
    assert codes[55, 5] == 0
    assert set(OBJECT_ERROR_CLASSES) == set(OBJECT_ERROR_COLORS) == set(range(6))


def test_real_ground_truth_against_its_merged_mask(kromp_root) -> None:
    truth = tifffile.imread(kromp_root / "masks" / "normal_16.tif")
    assert object_scores(truth, truth)["f1"] == 1.0
    merged = label(truth > 0)  # touching nuclei become one object
    errors = object_error_map(merged, truth)
    scores = errors.match.scores()
    assert scores["n_true"] == np.unique(truth).size - 1
    assert errors.merges >= 5
    assert scores["f1"] < 0.6
    assert 0 < dsb_average_precision(merged, truth) < scores["f1"]
    counted = object_error_map(merged, truth, paint=False)
    assert counted.counts() == errors.counts() and counted.map.size == 0
    assert counted.match.scores() == scores
