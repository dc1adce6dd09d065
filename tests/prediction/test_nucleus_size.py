"""Nucleus size (issue 20, item 3): the diameter estimate, and resizing images whose nuclei
are far larger than the model learned, on real Kromp images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet_nuclei.evaluate.object_metrics import object_error_map
from napari_unet_nuclei.events import run_to_end
from napari_unet_nuclei.prediction.nucleus_size import (
    BUILTIN_TRAINED_DIAMETER,
    diameter_of_masks,
    estimate_diameter,
    rescale_factor,
    resize_to,
    trained_diameter,
)
from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment
from napari_unet_nuclei.workflows.segmentation import default_instance_config


@pytest.fixture(scope="module")
def builtin():
    from napari_unet_nuclei.io.model_io import load_model

    return load_model("fluo-nuclei")


def _kromp(kromp_root, name: str) -> tuple[np.ndarray, np.ndarray]:
    return (
        tifffile.imread(kromp_root / "images" / f"{name}.tif"),
        tifffile.imread(kromp_root / "masks" / f"{name}.tif"),
    )


def _segment(model, image, diameter):
    outputs = SegmentOutputs(labels=np.zeros(image.shape, np.int32))
    summary = run_to_end(
        iter_segment(
            model, image, outputs, instances=default_instance_config(model), diameter=diameter
        ),
        None,
    )
    return outputs.labels, summary


def _object_f1(labels, truth) -> float:
    return object_error_map(labels, truth, paint=False).match.scores()["f1"]


@pytest.mark.parametrize("radius", [4, 12, 40])
def test_the_diameter_of_round_nuclei_is_measured(radius: int) -> None:
    yy, xx = np.mgrid[:400, :400]
    mask = np.zeros((400, 400), bool)
    for cy, cx in ((100, 100), (100, 300), (300, 200)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    assert estimate_diameter(mask) == pytest.approx(2 * radius, rel=0.12)
    assert estimate_diameter(np.zeros((10, 10), bool)) is None
    assert diameter_of_masks([mask.astype(np.uint8) * 7, mask]) == pytest.approx(
        estimate_diameter(mask)
    )


def test_auto_shrinks_only_nuclei_far_larger_than_learned() -> None:
    learned = BUILTIN_TRAINED_DIAMETER
    assert rescale_factor(None, learned, automatic=True) == 1.0
    assert rescale_factor(learned * 1.8, learned, automatic=True) == 1.0  # near enough
    assert rescale_factor(learned / 3, learned, automatic=True) == 1.0  # small: as they are
    assert rescale_factor(learned * 4, learned, automatic=True) == pytest.approx(0.25)
    # A diameter the user gives is always honoured, both ways.
    assert rescale_factor(learned / 2, learned, automatic=False) == pytest.approx(2.0)
    assert rescale_factor(learned * 1.5, learned, automatic=False) == pytest.approx(1 / 1.5)
    assert trained_diameter({"nucleus_diameter": 40.0}) == 40.0
    assert trained_diameter({}) is None
    assert trained_diameter({"nucleus_diameter": "nonsense"}) is None


def test_resizing_keeps_ids_and_shapes() -> None:
    labels = np.zeros((60, 90), np.int32)
    labels[10:30, 10:40] = 3
    labels[40:55, 50:80] = 9
    small = resize_to(labels, (20, 30), labels=True)
    assert set(np.unique(small)) == {0, 3, 9}
    back = resize_to(small, (60, 90), labels=True)
    assert back.shape == (60, 90) and set(np.unique(back)) == {0, 3, 9}
    assert (back == labels).mean() > 0.97
    channels = resize_to(np.random.default_rng(0).random((3, 60, 90)), (20, 30))
    assert channels.shape == (3, 20, 30) and channels.dtype == np.float32


def test_large_nuclei_are_resized_and_found_whole(builtin, kromp_root) -> None:
    """Neuroblastoma_13: nuclei of about 14,500 px (135 px across); the model learned 26."""
    image, truth = _kromp(kromp_root, "Neuroblastoma_13")
    as_is, plain = _segment(builtin, image, None)
    resized, summary = _segment(builtin, image, "auto")
    assert plain.diameter is None and plain.rescaled_frames == 0
    assert summary.rescaled_frames == 1 and summary.diameter > 4 * BUILTIN_TRAINED_DIAMETER
    assert resized.shape == image.shape
    assert _object_f1(resized, truth) > _object_f1(as_is, truth) + 0.1


def test_nuclei_of_the_learned_size_are_left_as_they_are(builtin, kromp_root) -> None:
    image, _ = _kromp(kromp_root, "normal_34")
    crop = image[:384, :384]
    auto, summary = _segment(builtin, crop, "auto")
    plain, _ = _segment(builtin, crop, None)
    assert summary.rescaled_frames == 0
    assert 0.5 * BUILTIN_TRAINED_DIAMETER < summary.diameter < 2 * BUILTIN_TRAINED_DIAMETER
    np.testing.assert_array_equal(auto, plain)
    # A diameter given by hand is honoured: twice the learned one halves the image.
    given_labels, given = _segment(builtin, crop, 2 * BUILTIN_TRAINED_DIAMETER)
    assert given.rescaled_frames == 1 and given.diameter == 2 * BUILTIN_TRAINED_DIAMETER
    assert given_labels.shape == crop.shape and given_labels.max() > 0


@settings(max_examples=25, deadline=None)
@given(
    st.one_of(
        st.floats(max_value=0.0),
        st.just(math.nan),
        st.just(math.inf),
        st.text(alphabet="abcdxyz -_", min_size=1, max_size=6).filter(lambda t: t != "auto"),
    )
)
def test_a_bad_diameter_is_refused_with_a_sentence(builtin, bad) -> None:
    image = np.zeros((64, 64), np.uint8)
    outputs = SegmentOutputs(labels=np.zeros(image.shape, np.int32))
    with pytest.raises(ValueError, match="diameter must be a number of pixels above 0"):
        run_to_end(iter_segment(builtin, image, outputs, diameter=bad), None)


def test_a_diameter_needs_whole_frames(builtin) -> None:
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="needs each frame read whole"):
        run_to_end(
            iter_segment(builtin, image, SegmentOutputs(), read="bands", diameter=40.0), None
        )
    # 'auto' reads bands as they are.
    run_to_end(iter_segment(builtin, image, SegmentOutputs(), read="bands"), None)


def test_auto_leaves_images_alone_when_the_model_or_its_mask_says_nothing_of_size(
    builtin, untrained_model, kromp_root
) -> None:
    """A model that stores no learned diameter, or a mask covering most of the frame
    (an untrained network), never resizes; the built-in model's file carries its 26 px."""
    from dataclasses import replace

    image, _ = _kromp(kromp_root, "Neuroblastoma_13")
    assert builtin.summary["nucleus_diameter"] == BUILTIN_TRAINED_DIAMETER
    unknown = replace(
        builtin, summary={k: v for k, v in builtin.summary.items() if k != "nucleus_diameter"}
    )
    _, summary = _segment(unknown, image, "auto")
    assert summary.rescaled_frames == 0 and summary.diameter > 4 * BUILTIN_TRAINED_DIAMETER
    untrained = replace(untrained_model, summary={"nucleus_diameter": 20.0})
    outputs = SegmentOutputs(probabilities=np.zeros(image.shape[:2], np.float32))
    summary = run_to_end(
        iter_segment(untrained, image[..., 0] if image.ndim == 3 else image, outputs), None
    )
    assert summary.rescaled_frames == 0


def test_a_fine_tune_learns_at_the_size_its_start_model_learned(builtin, kromp_root) -> None:
    """Large nuclei are shrunk for training as segmenting shrinks them, and the fine-tuned
    model keeps the start model's diameter (its kept weights then segment as it did)."""
    from napari_unet_nuclei.train.training import TrainingConfig, train_model
    from napari_unet_nuclei.train.training_data import TargetRecipe, prepare_split

    large, large_truth = _kromp(kromp_root, "Neuroblastoma_13")
    typical, typical_truth = _kromp(kromp_root, "normal_34")
    recipe = TargetRecipe(builtin.normalization, builtin.object_maps, True, 26.0)
    split = prepare_split([large, typical], [large_truth, typical_truth], None, None, recipe)
    assert split.images[0].shape[0] < large.shape[0] / 3  # about 135 px nuclei -> 26 px
    assert split.images[1].shape == typical.shape  # already near the learned size
    assert split.masks[0].shape == split.instances[0].shape == split.images[0].shape
    assert split.instances[0].max() >= 0.8 * (np.unique(large_truth).size - 1)
    model = train_model(
        [large, typical],
        [large_truth, typical_truth],
        TrainingConfig(steps=2, batch_size=2, patch_size=128),
        init_model=builtin,
    )
    assert model.summary["nucleus_diameter"] == BUILTIN_TRAINED_DIAMETER
