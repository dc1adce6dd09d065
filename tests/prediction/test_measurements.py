"""Per-nucleus measurements checked against scikit-image's regionprops."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.measure import regionprops

from napari_unet_nuclei.prediction.measurements import (
    MEASUREMENT_COLUMNS,
    measure_nuclei,
    read_measurements_csv,
    to_layer_features,
    write_measurements_csv,
)


@pytest.fixture(scope="module")
def real(kromp_root):
    name = "Neuroblastoma_10"
    image = tifffile.imread(kromp_root / "images" / f"{name}.tif")
    labels = tifffile.imread(kromp_root / "masks" / f"{name}.tif")
    return image, labels


def test_columns_and_values_match_regionprops(real) -> None:
    image, labels = real
    table = measure_nuclei(labels, image)
    assert tuple(table) == MEASUREMENT_COLUMNS
    regions = regionprops(labels, intensity_image=image)
    assert table["label"].tolist() == [r.label for r in regions]
    assert len({len(v) for v in table.values()}) == 1
    for row, region in enumerate(regions):
        assert table["area_px"][row] == region.area
        assert table["centroid_y_px"][row] == pytest.approx(region.centroid[0])
        assert table["centroid_x_px"][row] == pytest.approx(region.centroid[1])
        assert table["mean_intensity"][row] == pytest.approx(region.intensity_mean)
        total = image[labels == region.label].astype(np.float64).sum()
        assert table["integrated_intensity"][row] == pytest.approx(total)
        assert table["eccentricity"][row] == pytest.approx(region.eccentricity)
    assert table["area_px"].dtype == np.int64 and table["label"].dtype == np.int64


def test_stack_adds_frame_columns_and_features(real) -> None:
    image, labels = real
    crop = (slice(0, 300), slice(0, 400))
    stack_labels = np.stack([labels[crop], labels[crop][::-1]])
    stack_image = np.stack([image[crop], image[crop][::-1]])
    table = measure_nuclei(stack_labels, stack_image)
    assert list(table)[:2] == ["frame", "label"]
    single = measure_nuclei(labels[crop], image[crop])
    n = single["label"].size
    assert table["frame"].tolist() == [0] * n + [1] * n
    np.testing.assert_allclose(table["mean_intensity"][:n], single["mean_intensity"])
    features = to_layer_features(single)
    assert features["index"].tolist() == single["label"].tolist()
    without_image = measure_nuclei(labels[crop])
    assert np.isnan(without_image["mean_intensity"]).all()
    four_d = measure_nuclei(stack_labels[None], stack_image[None])
    assert list(four_d)[:3] == ["frame_0", "frame_1", "label"]
    empty = measure_nuclei(np.zeros((5, 5), np.uint16))
    assert tuple(empty) == MEASUREMENT_COLUMNS and empty["label"].size == 0


def test_volume_measurement() -> None:
    volume = np.zeros((6, 20, 20), np.uint8)
    volume[1:4, 5:10, 5:12] = 2
    table = measure_nuclei(volume, per_frame=False)
    assert table["volume_voxels"].tolist() == [3 * 5 * 7] and "area_px" not in table
    assert table["centroid_z_px"][0] == pytest.approx(2.0)
    assert table["z_slices"].tolist() == [3] and "eccentricity" not in table
    # With the voxel size (z, y, x in micrometres) the table carries micrometres too.
    sized = measure_nuclei(volume, per_frame=False, pixel_size=(2.0, 0.5, 0.25))
    assert sized["volume_um3"][0] == pytest.approx(3 * 5 * 7 * 2.0 * 0.5 * 0.25)
    assert sized["centroid_z_um"][0] == pytest.approx(4.0)
    assert sized["centroid_x_um"][0] == pytest.approx(sized["centroid_x_px"][0] * 0.25)


def test_a_known_pixel_size_adds_micrometre_columns(real) -> None:
    image, labels = real
    pixels = measure_nuclei(labels, image)
    sized = measure_nuclei(labels, image, pixel_size=(0.5, 0.25))
    assert list(sized)[: len(pixels)] == list(pixels)
    assert list(sized)[len(pixels) :] == ["area_um2", "centroid_y_um", "centroid_x_um"]
    np.testing.assert_allclose(sized["area_um2"], pixels["area_px"] * 0.125)
    np.testing.assert_allclose(sized["centroid_y_um"], pixels["centroid_y_px"] * 0.5)
    for bad in ((0.0, 1.0), (1.0,), (float("nan"), 1.0)):
        with pytest.raises(ValueError, match="pixel size must be 2 positive numbers"):
            measure_nuclei(labels, image, pixel_size=bad)


def test_csv_round_trip_is_atomic(real, tmp_path) -> None:
    image, labels = real
    table = measure_nuclei(labels, image)
    path = write_measurements_csv(table, tmp_path / "x_nuclei.csv")
    assert path.read_text().splitlines()[0] == ",".join(MEASUREMENT_COLUMNS)
    back = read_measurements_csv(path)
    assert list(back) == list(table)
    for name in table:
        np.testing.assert_allclose(back[name], table[name])
    assert [p.name for p in tmp_path.iterdir()] == ["x_nuclei.csv"]


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="integers"):
        measure_nuclei(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        measure_nuclei(np.zeros((4, 4), np.uint8), np.zeros((4, 5)))
