"""Partial annotations: patches and loss only inside the annotated regions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet_nuclei.project.ledger import weights_sha256
from napari_unet_nuclei.train.annotations import annotated_pixel_count, region_mask, regions_mask
from napari_unet_nuclei.train.augmentation import AugmentationConfig
from napari_unet_nuclei.train.patches import PatchSampler
from napari_unet_nuclei.train.training import TrainingConfig, train_model


def tiny_config(**changes) -> TrainingConfig:
    settings = {
        "features": 4,
        "depth": 2,
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "patch_size": 64,
        "device": "cpu",
        "validation_fraction": 0.25,
        "augmentation": AugmentationConfig(flips=True, rotations90=True, affine=True),
    }
    settings.update(changes)
    return TrainingConfig(**settings)


def corner_regions(n: int, size: int = 128) -> list[np.ndarray]:
    """A different annotated rectangle on each image (about a quarter of it)."""
    maps = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        top, left = (i * 17) % 60, (i * 29) % 60
        mask[top : top + 60, left : left + 70] = True
        maps.append(mask)
    return maps


def test_region_masks_follow_napari_pixel_centres() -> None:
    rectangle = np.array([[2, 1], [2, 4], [5, 4], [5, 1]])
    mask = region_mask((8, 8), rectangle, "rectangle")
    expected = np.zeros((8, 8), bool)
    expected[2:6, 1:5] = True
    np.testing.assert_array_equal(mask, expected)

    triangle = np.array([[0, 0], [0, 6], [6, 0]])
    tri = region_mask((8, 8), triangle, "polygon")
    assert tri[0, 0] and tri[0, 6] and tri[6, 0] and tri[2, 2] and not tri[5, 5]

    ellipse = region_mask((20, 20), np.array([[2, 2], [2, 12], [12, 12], [12, 2]]), "ellipse")
    assert ellipse[7, 7] and not ellipse[2, 2] and 50 < ellipse.sum() < 100

    union = regions_mask((8, 8), [rectangle, (triangle, "polygon")])
    np.testing.assert_array_equal(union, mask | tri)
    assert annotated_pixel_count((8, 8), None) == 64
    assert annotated_pixel_count((8, 8), union) == int(union.sum())
    with pytest.raises(ValueError, match="encloses no area"):
        region_mask((8, 8), rectangle, "line")


def test_patches_come_only_from_annotated_regions(lab_arrays) -> None:
    _x, y, _ = lab_arrays
    masks = [y[i, 0] > 0 for i in range(3)]
    annotated = corner_regions(3)
    annotated[2][:] = False  # nothing annotated on the third image: never sampled
    # Images holding their own pixel coordinates locate each patch.
    coords = [
        (np.arange(128 * 128, dtype=np.float32).reshape(128, 128) + 1e6 * i) for i in range(3)
    ]
    sampler = PatchSampler(coords, masks, 32, annotated, np.random.default_rng(0))
    assert sampler.n_pixels == int(annotated[0].sum() + annotated[1].sum())
    images, targets, weights = sampler.sample(200)
    for image, target, weight in zip(images[:, 0], targets[:, 0], weights[:, 0]):
        index = int(image[0, 0] // 1e6)
        top, left = divmod(int(image[0, 0] - 1e6 * index), 128)
        window = (slice(top, top + 32), slice(left, left + 32))
        assert index in (0, 1)
        np.testing.assert_array_equal(weight, annotated[index][window])
        np.testing.assert_array_equal(target, masks[index][window])
        assert weight.sum() > 0  # every patch holds annotated pixels


def test_label_changes_outside_annotated_regions_change_nothing(lab_arrays) -> None:
    x, y, _ = lab_arrays
    images = [x[i, 0] for i in range(4)]
    labels = [y[i, 0] for i in range(4)]
    annotated = corner_regions(4)
    changed = [label.copy() for label in labels]
    for label, region in zip(changed, annotated):
        label[~region] = 1.0 - label[~region]  # every label outside is wrong now
    config = tiny_config()

    first = train_model(images, labels, config, annotated=annotated)
    second = train_model(images, changed, config, annotated=annotated)
    assert weights_sha256(first) == weights_sha256(second)
    for a, b in zip(first.summary["history"], second.summary["history"]):
        assert a["train_loss"] == b["train_loss"] and a["val_f1"] == b["val_f1"]

    # The same change with every pixel annotated does change the weights.
    whole = train_model(images, changed, config)
    assert weights_sha256(whole) != weights_sha256(first)


def test_labels_inside_the_regions_do_matter(lab_arrays) -> None:
    x, y, _ = lab_arrays
    images = [x[i, 0] for i in range(4)]
    labels = [y[i, 0] for i in range(4)]
    annotated = corner_regions(4)
    changed = [label.copy() for label in labels]
    changed[0][annotated[0]] = 0.0
    config = tiny_config()
    first = train_model(images, labels, config, annotated=annotated)
    second = train_model(images, changed, config, annotated=annotated)
    assert weights_sha256(first) != weights_sha256(second)


@pytest.mark.parametrize("rows", [(0, 40), (100, 128)])
def test_one_partially_annotated_image_validates_inside_its_region(lab_arrays, rows) -> None:
    x, y, _ = lab_arrays
    image, label = x[5, 0], y[5, 0]
    region = np.zeros(image.shape, bool)
    region[rows[0] : rows[1], 10:120] = True
    assert label[region].any()
    config = tiny_config(epochs=1, steps_per_epoch=2, patch_size=32, validation_fraction=0.1)
    model = train_model([image], [label], config, annotated=[region])
    assert model.summary["val_names"] == ["image_000 (bottom)"]
    # The validation band is cut from the annotated rows: it holds real nuclei, so the
    # validation F1 is a real score, not the 1.0 of an empty comparison.
    assert 0.0 <= model.summary["history"][0]["val_f1"] < 1.0
