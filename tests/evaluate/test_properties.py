"""Property-based tests (hypothesis): inference shapes and ranges, metrics and error maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_unet_nuclei.evaluate.metrics import confusion_counts, error_map, segmentation_scores
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.prediction.inference import predict, threshold_mask

SETTINGS = settings(
    max_examples=25,
    derandomize=True,  # the same examples on every machine (CI has no example database)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.uint32,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {depth: create_model(features=4, depth=depth) for depth in (1, 2, 3)}


@st.composite
def images(draw):
    """A 2-D image or a small stack of any real dtype, 1-40 pixels a side."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    leading = draw(st.sampled_from([(), (2,), (1, 2), (6,)]))
    shape = (*leading, draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    if dtype.kind == "f":
        elements = st.floats(-1e3, 1e3, width=dtype.itemsize * 8, allow_nan=False)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -(10**6)), min(info.max, 10**6))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@SETTINGS
@given(image=images(), depth=st.sampled_from([1, 2, 3]), tile=st.sampled_from([16, 24, 512]))
def test_inference_keeps_shape_and_gives_probabilities(models, image, depth, tile) -> None:
    import warnings

    if image.ndim >= 3 and image.shape[-1] in (3, 4) and min(image.shape[-3:-1]) > 4:
        with pytest.raises(ValueError, match="colour channels"):  # (..., H, W, 3) is RGB
            predict(models[depth], image)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant frames are announced; not the point here
        probabilities = predict(models[depth], image, tile_size=tile, overlap=4)
    assert probabilities.shape == image.shape
    assert probabilities.dtype == np.float32
    assert np.isfinite(probabilities).all()
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    mask = threshold_mask(probabilities, 0.5)
    assert mask.shape == image.shape and mask.dtype == np.uint8


masks = (
    st.integers(1, 5)
    .flatmap(
        lambda ndim: st.tuples(
            hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=12)
        )
    )
    .flatmap(
        lambda shape: st.tuples(
            hnp.arrays(np.bool_, shape[0]),
            hnp.arrays(np.int32, shape[0], elements=st.integers(0, 5)),
        )
    )
)


@SETTINGS
@given(pair=masks)
def test_metrics_are_in_range_and_follow_the_counts(pair) -> None:
    predicted, truth = pair
    counts = confusion_counts(predicted, truth)
    pred, true = predicted > 0, truth > 0
    assert counts.tp == np.sum(pred & true) and counts.fp == np.sum(pred & ~true)
    assert counts.fn == np.sum(~pred & true) and counts.tn == np.sum(~pred & ~true)
    assert counts.total == predicted.size
    scores = segmentation_scores(predicted, truth)
    for name, value in scores.items():
        assert 0.0 <= value <= 1.0, name
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    assert scores["accuracy"] == pytest.approx((tp + tn) / counts.total)
    if tp + fp:
        assert scores["precision"] == pytest.approx(tp / (tp + fp))
    if tp + fn:
        assert scores["recall"] == pytest.approx(tp / (tp + fn))
    if tp + fp + fn:
        assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))
        # Dice and Jaccard are tied: F1 = 2 IoU / (1 + IoU).
        assert scores["f1"] == pytest.approx(2 * scores["iou"] / (1 + scores["iou"]))
    else:
        assert scores["f1"] == scores["iou"] == 1.0


@SETTINGS
@given(pair=masks)
def test_error_map_counts_equal_the_confusion_counts(pair) -> None:
    predicted, truth = pair
    errors = error_map(predicted, truth)
    counts = confusion_counts(predicted, truth)
    assert errors.shape == predicted.shape and errors.dtype == np.uint8
    assert set(np.unique(errors)) <= {0, 1, 2, 3}
    found = np.bincount(errors.ravel(), minlength=4)
    assert found.tolist() == [counts.tn, counts.tp, counts.fp, counts.fn]
