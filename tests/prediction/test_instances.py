"""Instance labels from probabilities: touching nuclei get one id each."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.measure import label

from napari_unet_nuclei.evaluate.object_metrics import object_scores
from napari_unet_nuclei.prediction.instances import (
    InstanceConfig,
    instances_from_mask,
    instances_from_probabilities,
    iter_instances,
    label_stack,
)


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


@pytest.mark.parametrize("radius", [8, 20, 50])
def test_two_touching_discs_of_any_size_are_split(radius: int) -> None:
    size = 5 * radius
    centre = size // 2
    mask = _discs(
        (size, size),
        [(centre, centre - int(0.8 * radius)), (centre, centre + int(0.8 * radius))],
        radius,
    )
    assert label(mask).max() == 1
    labels = instances_from_mask(mask)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert ((labels > 0) == mask).all()
    sizes = np.bincount(labels.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.1 * sizes.mean()


def test_single_round_nucleus_stays_one_and_small_bits_are_removed() -> None:
    mask = _discs((100, 100), [(50, 50)], 20)
    mask[5:8, 5:8] = True  # 9 pixels: noise
    labels = instances_from_mask(mask, InstanceConfig(min_size=30))
    assert labels.max() == 1
    assert labels[6, 6] == 0


def test_probabilities_and_probability_seeds() -> None:
    mask = _discs((80, 120), [(40, 40), (40, 72)], 18)
    probabilities = ndi.gaussian_filter(mask.astype(np.float32), 2)
    labels = instances_from_probabilities(probabilities)
    assert labels.max() == 2
    # A model that predicts a dip between nuclei: probability peaks give the seeds.
    dip = probabilities * (1 - 0.5 * np.exp(-((np.arange(120) - 56) ** 2) / 20.0))[None, :]
    labels = instances_from_probabilities(dip, InstanceConfig(seeds="probability"))
    assert labels.max() == 2
    with pytest.raises(ValueError, match="needs the probabilities"):
        instances_from_mask(mask, InstanceConfig(seeds="probability"))


def test_stack_ids_are_unique_across_frames() -> None:
    frame = ndi.gaussian_filter(_discs((64, 96), [(32, 30), (32, 58)], 14).astype(np.float32), 1.5)
    stack = np.stack([frame, np.zeros_like(frame), frame[:, ::-1]])
    labels = label_stack(stack)
    assert labels.shape == stack.shape
    assert sorted(np.unique(labels[0]))[1:] == [1, 2]
    assert not labels[1].any()
    assert sorted(np.unique(labels[2]))[1:] == [3, 4]
    events = []
    generator = iter_instances(stack[None], out=np.zeros((1, *stack.shape), np.uint16))
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            out = stop.value
            break
    assert [e.frame for e in events] == [0, 1, 2] and out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], labels)


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ValueError, match="neck_ratio"):
        InstanceConfig(neck_ratio=1.5)
    with pytest.raises(ValueError, match="seeds"):
        InstanceConfig(seeds="peaks")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_stack"):
        instances_from_mask(np.zeros((2, 8, 8), bool))


@pytest.mark.parametrize("name", ["normal_16", "normal_32", "otherspecimen_9"])
def test_touching_nuclei_are_separated_on_real_images(kromp_root, name: str) -> None:
    truth = tifffile.imread(kromp_root / "masks" / f"{name}.tif")
    n_true = np.unique(truth).size - 1
    # The ground-truth mask as a fake probability map: touching nuclei merge in it.
    probabilities = ndi.gaussian_filter((truth > 0).astype(np.float32), 2)
    components = label(probabilities >= 0.5)
    labels = instances_from_probabilities(probabilities)
    n_found = int(labels.max())
    assert np.unique(labels).size - 1 == n_found  # consecutive, unique ids
    assert components.max() < 0.9 * n_true  # the mask alone merges many nuclei
    assert abs(n_found - n_true) <= 0.15 * n_true
    split = object_scores(labels, truth)["f1"]
    merged = object_scores(components, truth)["f1"]
    assert split > 0.85 and split > merged + 0.15


@pytest.mark.parametrize("seeds", ["distance", "probability"])
def test_single_peak_shortcut_gives_skimage_h_maxima_exactly(kromp_root, seeds: str) -> None:
    """The vectorised h-maxima of single-peaked parts equals skimage's, part by part, on
    the merged masks of real dense images (touching nuclei make many multi-peak parts)."""
    from skimage.morphology import h_maxima

    from napari_unet_nuclei.prediction import instances

    for name in ("Ganglioneuroblastoma_7", "normal_34"):
        truth = tifffile.imread(kromp_root / "masks" / f"{name}.tif")[:512, :512]
        mask = truth > 0
        probabilities = ndi.gaussian_filter(mask.astype(np.float32), 2)
        config = InstanceConfig(seeds=seeds)
        mask = instances._clean_mask(mask, config)
        landscape, height = instances._seed_landscape(mask, probabilities, config)
        parts, _ = ndi.label(mask, structure=ndi.generate_binary_structure(2, 1))
        boxes = [
            tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            for box in ndi.find_objects(parts)
        ]
        peaks, handled = instances._single_peak_h_maxima(landscape, mask, parts, boxes, height)
        assert handled[1:].mean() > 0.5  # most parts take the shortcut
        assert not handled[1:].all()  # and some do not (touching nuclei)
        square = np.ones((3, 3), bool)
        for number, box in enumerate(boxes, start=1):
            if not handled[number]:
                continue
            own = parts[box] == number
            crop = np.where(own, landscape[box], 0).astype(np.float32)
            expected = h_maxima(crop, height, footprint=square).astype(bool) & own
            np.testing.assert_array_equal(peaks[box] & own, expected)
