"""Labels that cover only some nuclei are spotted on real images, and only those."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.train.label_coverage import (
    PartialLabelsWarning,
    label_coverage,
    partial_labels_note,
)
from napari_unet_nuclei.train.training import TrainingConfig, train_model

#: One training step of a tiny network, no validation: enough to see what training says.
ONE_STEP = {
    "features": 4,
    "depth": 2,
    "epochs": 1,
    "steps_per_epoch": 1,
    "validation_fraction": 0.0,
    "device": "cpu",
}
NAMES = ("Ganglioneuroblastoma_0", "Neuroblastoma_14", "normal_16", "otherspecimen_9")


def _grey(image: np.ndarray) -> np.ndarray:
    return image.mean(-1) if image.ndim == 3 else image


def _keep_some(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    keep = np.random.default_rng(seed).choice(ids, max(1, int(len(ids) * fraction)), False)
    return np.where(np.isin(labels, keep), labels, 0)


@pytest.fixture(scope="module")
def kromp_pairs(kromp_root):
    return [
        (
            _grey(tifffile.imread(kromp_root / "images" / f"{name}.tif")),
            tifffile.imread(kromp_root / "masks" / f"{name}.tif"),
        )
        for name in NAMES
    ]


@pytest.mark.parametrize("index", range(len(NAMES)))
def test_complete_labels_are_not_flagged_and_a_fifth_of_them_are(kromp_pairs, index) -> None:
    image, labels = kromp_pairs[index]
    complete = label_coverage([image], [labels])
    assert complete.labelled_blobs > 0 and not complete.looks_partial
    assert partial_labels_note(complete) is None
    partial = label_coverage([image], [_keep_some(labels, 0.2)])
    assert partial.looks_partial and partial.unlabelled_fraction > 0.5
    note = partial_labels_note(partial)
    assert f"{partial.unlabelled_blobs} of " in note and "annotated regions" in note


def test_labels_painted_in_one_corner_are_flagged(kromp_pairs) -> None:
    image, labels = kromp_pairs[0]
    corner = np.zeros_like(labels)
    corner[:200, :200] = labels[:200, :200]
    assert label_coverage([image], [corner]).looks_partial


def test_frames_without_labels_are_not_judged() -> None:
    image = np.zeros((64, 64), np.float32)
    image[10:20, 10:20] = 1.0
    coverage = label_coverage([image], [np.zeros((64, 64), np.int32)])
    assert coverage.frames == 0 and not coverage.looks_partial


def test_training_warns_on_partial_labels_unless_regions_say_where(kromp_pairs) -> None:
    image, labels = kromp_pairs[0]
    crop = (slice(0, 256), slice(0, 256))
    image, labels = image[crop], _keep_some(labels[crop], 0.2)
    config = TrainingConfig(**ONE_STEP, batch_size=2, patch_size=64)
    with pytest.warns(PartialLabelsWarning, match="only part of the nuclei"):
        model = train_model([image], [labels], config)
    assert model.config.features == 4
    annotated = np.zeros(labels.shape, bool)
    annotated[:64, :64] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialLabelsWarning)
        train_model([image], [labels], config, annotated=[annotated])


def test_training_on_a_tiny_image_says_it_is_too_small() -> None:
    from napari_unet_nuclei.nn.normalization import ImageWarning

    rng = np.random.default_rng(0)
    image = rng.random((5, 5)).astype(np.float32)
    labels = np.zeros((5, 5), np.int32)
    labels[1:3, 1:3] = 1
    config = TrainingConfig(**ONE_STEP, batch_size=1, patch_size=16)
    with pytest.warns(ImageWarning, match="5 x 5 pixels: too small"):
        train_model([image], [labels], config)
