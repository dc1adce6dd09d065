"""Tests of the pixel metrics on hand-computed arrays and on the real Kromp 2020 data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_unet_nuclei.evaluate.metrics import (
    ERROR_CLASSES,
    ERROR_COLORS,
    LAB_LOGIT_THRESHOLDS,
    ConfusionCounts,
    PrecisionRecallCurve,
    average_precision,
    confusion_counts,
    error_map,
    otsu_mask,
    per_frame_counts,
    per_frame_scores,
    precision_recall_curve,
    segmentation_scores,
)
from napari_unet_nuclei.nn.probabilities import logit_to_probability, probability_to_logit

SCORE_KEYS = {"accuracy", "precision", "recall", "f1", "iou"}

# Hand example. Predicted (float mask) and truth (integer instance labels, ids 7 and 9):
#   predicted        truth
#   1 1 0 0          7 0 0 0
#   1 1 0 0          7 9 9 0
#   0 0 0 0          0 0 0 0
#   0 0 1 0          0 0 0 0
# TP = (0,0) (1,0) (1,1) = 3; FP = (0,1) (3,2) = 2; FN = (1,2) = 1; TN = 16 - 6 = 10.
HAND_PRED = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
HAND_TRUTH = np.array([[7, 0, 0, 0], [7, 9, 9, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint16)


@pytest.fixture(scope="module")
def full_image(kromp_root: Path, splits: dict) -> tuple[np.ndarray, np.ndarray]:
    """One full-size Kromp image (uint8) and its binary nucleus mask."""
    name = splits["lab_70_9"]["test"][0]
    image = tifffile.imread(kromp_root / "images" / f"{name}.tif")
    labels = tifffile.imread(kromp_root / "masks" / f"{name}.tif")
    assert image.shape == labels.shape and image.ndim == 2
    return image, labels > 0


@pytest.fixture(scope="module")
def full_probability(full_image: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A real 'probability map': a sigmoid of the image around its Otsu threshold."""
    image = full_image[0].astype(np.float32)
    return logit_to_probability((image - np.float32(threshold_otsu(image))) / np.float32(8.0))


def _brute_force_pr(probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray):
    """Precision and recall with one full comparison per threshold."""
    truth = truth > 0
    precision, recall = [], []
    for t in thresholds:
        pred = probs >= t
        tp = int(np.sum(pred & truth))
        fp = int(np.sum(pred & ~truth))
        fn = int(np.sum(~pred & truth))
        precision.append(tp / (tp + fp) if tp + fp else 1.0)
        recall.append(tp / (tp + fn) if tp + fn else 1.0)
    return np.array(precision), np.array(recall)


def _brute_force_ap(probs: np.ndarray, truth: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over every distinct value, from the highest down."""
    truth = truth > 0
    n_pos = int(truth.sum())
    ap, previous_recall = 0.0, 0.0
    for t in np.unique(probs)[::-1]:
        pred = probs >= t
        tp = int(np.sum(pred & truth))
        fp = int(np.sum(pred & ~truth))
        r = tp / n_pos
        ap += (r - previous_recall) * (tp / (tp + fp))
        previous_recall = r
    return ap


# ---------------------------------------------------------------------------------------
# Confusion counts and scores
# ---------------------------------------------------------------------------------------


def test_confusion_counts_hand_example() -> None:
    counts = confusion_counts(HAND_PRED, HAND_TRUTH)
    assert counts == ConfusionCounts(tp=3, fp=2, fn=1, tn=10)
    assert counts.accuracy == pytest.approx(13 / 16)  # 0.8125
    assert counts.precision == pytest.approx(3 / 5)  # 0.6
    assert counts.recall == pytest.approx(3 / 4)  # 0.75
    assert counts.f1 == pytest.approx(6 / 9)  # 2 tp / (2 tp + fp + fn)
    assert counts.iou == pytest.approx(3 / 6)  # tp / (tp + fp + fn)
    scores = segmentation_scores(HAND_PRED.astype(bool), HAND_TRUTH)
    assert scores == pytest.approx(
        {"accuracy": 0.8125, "precision": 0.6, "recall": 0.75, "f1": 2 / 3, "iou": 0.5}
    )
    # Dice identity: f1 = 2 iou / (1 + iou)
    assert counts.f1 == pytest.approx(2 * counts.iou / (1 + counts.iou))
    as_dict = counts.to_dict()
    assert {"tp": 3, "fp": 2, "fn": 1, "tn": 10}.items() <= as_dict.items()
    assert set(as_dict) == SCORE_KEYS | {"tp", "fp", "fn", "tn"}
    json.dumps(as_dict)


def test_empty_case_conventions() -> None:
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    both_empty = confusion_counts(empty, empty)
    assert both_empty.scores() == {
        "accuracy": 1.0,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "iou": 1.0,
    }
    missed_all = confusion_counts(empty, full)  # nothing predicted
    assert (missed_all.precision, missed_all.recall, missed_all.f1, missed_all.iou) == (
        1.0,
        0.0,
        0.0,
        0.0,
    )
    added_only = confusion_counts(full, empty)  # no true nucleus
    assert (added_only.precision, added_only.recall, added_only.f1, added_only.iou) == (
        0.0,
        1.0,
        0.0,
        0.0,
    )
    assert ConfusionCounts(0, 0, 0, 0).accuracy == 0.0


def test_counts_pool_with_add_and_sum() -> None:
    a = ConfusionCounts(1, 2, 3, 4)
    b = ConfusionCounts(10, 20, 30, 40)
    assert a + b == ConfusionCounts(11, 22, 33, 44)
    assert sum([a, b]) == a + b
    assert isinstance(ConfusionCounts(np.int64(2), 0, 0, 0).tp, int)
    with pytest.raises(ValueError, match=">= 0"):
        ConfusionCounts(-1, 0, 0, 0)
    with pytest.raises(TypeError):
        ConfusionCounts(1.5, 0, 0, 0)


@pytest.mark.parametrize("func", [confusion_counts, error_map, per_frame_scores])
def test_shape_mismatch_names_both_shapes(func) -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4\).*\(4, 5\)"):
        func(np.zeros((4, 4)), np.zeros((4, 5)))


def test_counts_on_real_image_match_explicit_float_formulas(
    full_image: tuple[np.ndarray, np.ndarray],
) -> None:
    image, truth = full_image
    predicted = otsu_mask(image)
    # The baseline is exactly skimage's Otsu threshold.
    assert np.array_equal(predicted, image > threshold_otsu(image))
    counts = confusion_counts(predicted, truth.astype(np.uint16) * 5)  # labels, not bools
    assert counts.tp + counts.fp + counts.fn + counts.tn == image.size
    p = predicted.astype(np.float64)
    t = truth.astype(np.float64)
    tp, fp = float(np.sum(p * t)), float(np.sum(p * (1 - t)))
    fn, tn = float(np.sum((1 - p) * t)), float(np.sum((1 - p) * (1 - t)))
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (tp, fp, fn, tn)
    assert counts.precision == pytest.approx(tp / (tp + fp), rel=1e-12)
    assert counts.recall == pytest.approx(tp / (tp + fn), rel=1e-12)
    assert counts.accuracy == pytest.approx((tp + tn) / image.size, rel=1e-12)
    assert counts.f1 == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert counts.iou == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
    # Otsu is a decent but imperfect segmentation of this real image.
    assert 0.7 < counts.f1 < 0.99


def test_per_frame_scores_on_lab_stack(lab_arrays) -> None:
    images, masks, names = lab_arrays
    predicted = otsu_mask(images)  # (79, 1, 128, 128), one threshold per frame
    assert predicted.shape == images.shape and predicted.dtype == bool
    frames = per_frame_scores(predicted, masks)
    assert len(frames) == len(names) == images.shape[0]
    pooled = confusion_counts(predicted, masks)
    assert pooled.total == masks.size
    assert sum(per_frame_counts(predicted, masks)) == pooled
    for key in ("tp", "fp", "fn", "tn"):
        assert sum(frame[key] for frame in frames) == getattr(pooled, key)
    for index in (0, 17, 78):
        expected = segmentation_scores(predicted[index, 0], masks[index, 0])
        assert {k: frames[index][k] for k in SCORE_KEYS} == expected
    assert len(per_frame_scores(predicted[0, 0], masks[0, 0])) == 1


def test_otsu_reference_on_lab_test_split(lab_arrays, splits: dict) -> None:
    images, masks, names = lab_arrays
    index = {str(name): i for i, name in enumerate(names)}
    test_names = splits["lab_70_9"]["test"]
    f1 = [
        segmentation_scores(otsu_mask(images[index[n], 0]), masks[index[n], 0])["f1"]
        for n in test_names
    ]
    assert len(f1) == 9
    assert 0.85 < float(np.mean(f1)) < 0.95


def test_otsu_mask_constant_and_stack_frames() -> None:
    stack = np.zeros((3, 8, 8), np.uint16)
    stack[1, 2:5, 2:5] = 1000
    stack[2] = 7  # constant non-zero frame
    mask = otsu_mask(stack)
    assert mask.dtype == bool and mask.shape == stack.shape
    assert not mask[0].any() and not mask[2].any()
    assert np.array_equal(mask[1], stack[1] > 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        otsu_mask(np.arange(5))


# ---------------------------------------------------------------------------------------
# Logits and precision-recall curves
# ---------------------------------------------------------------------------------------


def test_logit_probability_conversions() -> None:
    assert LAB_LOGIT_THRESHOLDS.shape == (101,)
    assert LAB_LOGIT_THRESHOLDS[0] == -5.0 and LAB_LOGIT_THRESHOLDS[-1] == 5.0
    assert logit_to_probability(0.0) == 0.5
    with np.errstate(all="raise"):  # no overflow for huge logits
        extreme = logit_to_probability(np.array([-1000.0, -30.0, 30.0, 1000.0]))
        assert np.all((extreme >= 0) & (extreme <= 1))
        assert extreme[0] == 0.0 and extreme[-1] == 1.0
        logits = probability_to_logit(np.array([0.0, 1e-30, 0.5, 1.0]))
    assert np.all(np.isfinite(logits)) and logits[2] == 0.0 and logits[0] < -15
    x = np.linspace(-10, 10, 41)
    np.testing.assert_allclose(probability_to_logit(logit_to_probability(x)), x, atol=1e-9)
    np.testing.assert_allclose(logit_to_probability(x), 1 / (1 + np.exp(-x)), rtol=1e-12)
    assert logit_to_probability(np.zeros(3, np.float32)).dtype == np.float32
    assert isinstance(probability_to_logit(0.25), float)


def test_hand_average_precision() -> None:
    # scikit-learn's documented example: sorted scores 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-):
    # AP = (1/2) * 1/1 + (1/2) * 2/3 = 0.8333...
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # Ties form one step: P = 0.5 at R = 1.
    assert average_precision([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.5)
    curve = precision_recall_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], [0.2, 0.5, 0.9, 0.3])
    np.testing.assert_array_equal(curve.thresholds, [0.2, 0.3, 0.5, 0.9])
    np.testing.assert_array_equal(curve.precision, [2 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(curve.recall, [1.0, 1.0, 0.5, 0.0])


def test_pr_curve_properties_on_real_image(full_image, full_probability) -> None:
    truth = full_image[1]
    curve = precision_recall_curve(full_probability, truth)
    assert curve.thresholds.shape == curve.precision.shape == curve.recall.shape == (101,)
    assert np.all(np.diff(curve.thresholds) > 0)
    np.testing.assert_allclose(curve.logit_thresholds, LAB_LOGIT_THRESHOLDS, atol=1e-9)
    assert np.all(np.diff(curve.recall) <= 0)  # recall never rises with the threshold
    for values in (curve.precision, curve.recall):
        assert np.all((values >= 0) & (values <= 1))
    assert 0.5 < curve.average_precision <= 1.0
    assert curve.average_precision == average_precision(full_probability, truth)
    # The logit-0 point equals the hard mask probability >= 0.5.
    counts = confusion_counts(full_probability >= 0.5, truth)
    assert curve.point_at(0.0, logit=True) == (counts.precision, counts.recall)
    assert curve.point_at(0.5001) == (counts.precision, counts.recall)
    assert not curve.thresholds.flags.writeable


def test_pr_curve_on_a_full_image_matches_counting_at_each_threshold(
    full_image, full_probability
) -> None:
    """1001 thresholds in one pass give what counting at each threshold gives (its speed
    is measured in benchmarks/speed.py, not asserted here)."""
    thresholds = np.linspace(0, 1, 1001)
    curve = precision_recall_curve(full_probability, full_image[1], thresholds)
    assert curve.thresholds.size == 1001
    truth = full_image[1] > 0
    for index in (0, 250, 500, 999):
        counts = confusion_counts(full_probability >= thresholds[index], truth)
        assert curve.precision[index] == pytest.approx(counts.precision, abs=1e-9)
        assert curve.recall[index] == pytest.approx(counts.recall, abs=1e-9)


def test_perfect_predictor_has_ap_one(lab_arrays) -> None:
    masks = lab_arrays[1]
    assert average_precision(masks, masks) == 1.0
    curve = precision_recall_curve(masks.astype(np.float64), masks)
    np.testing.assert_array_equal(curve.precision, 1.0)
    np.testing.assert_array_equal(curve.recall, 1.0)
    assert curve.average_precision == 1.0


def test_random_predictor_ap_is_foreground_fraction(lab_arrays) -> None:
    masks = lab_arrays[1]
    probs = np.random.default_rng(0).random(masks.shape)
    fraction = float(np.mean(masks > 0))
    assert average_precision(probs, masks) == pytest.approx(fraction, abs=0.05)


@pytest.mark.parametrize("smooth", [False, True], ids=["uint8-ties", "continuous"])
def test_pr_curve_and_ap_match_brute_force_on_real_crop(full_image, smooth: bool) -> None:
    image, truth = full_image
    rows, cols = np.nonzero(truth)
    r, c = int(np.median(rows)), int(np.median(cols))
    crop = image[r - 24 : r + 24, c - 24 : c + 24].astype(np.float64) / 255.0
    truth_crop = truth[r - 24 : r + 24, c - 24 : c + 24]
    if smooth:
        crop = ndimage.gaussian_filter(crop, 1.5)
    assert 0 < truth_crop.mean() < 1
    lab_grid = np.asarray(logit_to_probability(LAB_LOGIT_THRESHOLDS))
    for grid in (None, np.unique(crop)):
        curve = precision_recall_curve(crop, truth_crop, grid)
        expected_grid = lab_grid if grid is None else grid
        np.testing.assert_array_equal(curve.thresholds, expected_grid)
        precision, recall = _brute_force_pr(crop, truth_crop, expected_grid)
        np.testing.assert_array_equal(curve.precision, precision)
        np.testing.assert_array_equal(curve.recall, recall)
    expected_ap = _brute_force_ap(crop, truth_crop)
    assert average_precision(crop, truth_crop) == pytest.approx(expected_ap, rel=1e-12)
    assert curve.average_precision == pytest.approx(expected_ap, rel=1e-12)


def test_ap_equals_sklearn_when_available(full_image, full_probability) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    truth = full_image[1]
    expected = sklearn_metrics.average_precision_score(truth.ravel(), full_probability.ravel())
    assert average_precision(full_probability, truth) == pytest.approx(expected, rel=1e-9)


def test_pr_curve_edge_cases_and_serialisation() -> None:
    probs = np.array([[0.2, 0.9], [0.6, 0.1]])
    no_nucleus = precision_recall_curve(probs, np.zeros((2, 2)))
    assert np.isnan(no_nucleus.average_precision)
    assert np.isnan(average_precision(probs, np.zeros((2, 2))))
    np.testing.assert_array_equal(no_nucleus.recall, 1.0)
    as_dict = no_nucleus.to_dict()
    assert as_dict["average_precision"] is None
    text = json.dumps(as_dict, allow_nan=False)
    again = PrecisionRecallCurve.from_dict(json.loads(text))
    np.testing.assert_array_equal(again.precision, no_nucleus.precision)
    assert np.isnan(again.average_precision)
    with pytest.raises(ValueError, match="logit_to_probability"):
        precision_recall_curve(probs * 10 - 5, probs > 0.5)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4,\)"):
        average_precision(probs, np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0.5, np.nan]), np.array([1, 0]))


# ---------------------------------------------------------------------------------------
# Error maps
# ---------------------------------------------------------------------------------------


def test_error_map_hand_example_and_legend() -> None:
    codes = error_map(HAND_PRED, HAND_TRUTH)
    expected = np.array([[1, 2, 0, 0], [1, 1, 3, 0], [0, 0, 0, 0], [0, 0, 2, 0]], np.uint8)
    np.testing.assert_array_equal(codes, expected)
    assert codes.dtype == np.uint8
    assert set(ERROR_CLASSES) == set(ERROR_COLORS) == {0, 1, 2, 3}
    assert "missed" in ERROR_CLASSES[3] and "added" in ERROR_CLASSES[2]
    assert ERROR_COLORS[0][3] == 0.0
    for color in ERROR_COLORS.values():
        assert len(color) == 4 and all(0.0 <= v <= 1.0 for v in color)
    assert len(set(ERROR_COLORS.values())) == 4


def test_error_map_counts_equal_confusion_counts(lab_arrays, full_image) -> None:
    images, masks, _ = lab_arrays
    cases = [(otsu_mask(images), masks), (otsu_mask(full_image[0]), full_image[1])]
    for predicted, truth in cases:
        codes = error_map(predicted, truth)
        assert codes.dtype == np.uint8 and codes.shape == truth.shape
        counts = confusion_counts(predicted, truth)
        histogram = np.bincount(codes.ravel(), minlength=4)
        assert histogram.tolist() == [counts.tn, counts.tp, counts.fp, counts.fn]
