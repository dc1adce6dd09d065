"""The pixel size from file metadata (issue 22, units): OME-TIFF, ImageJ TIFF, OME-Zarr,
and nothing from files that do not say it or say it badly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet_nuclei.io.pixel_size import (
    file_pixel_size,
    micrometres,
    spatial_pixel_size,
    zarr_pixel_size,
)


def test_lengths_become_micrometres_and_other_units_do_not() -> None:
    assert micrometres(0.5, "µm") == 0.5
    assert micrometres(650, "nm") == pytest.approx(0.65)
    assert micrometres(0.001, "mm") == pytest.approx(1.0)
    assert micrometres("0.325", "micron") == pytest.approx(0.325)
    for value, unit in ((1.0, "pixel"), (1.0, "s"), (0.0, "um"), (-1, "um"), ("x", "um")):
        assert micrometres(value, unit) is None


def test_tiff_files_give_their_pixel_size(tmp_path) -> None:
    image = np.zeros((4, 32, 32), np.uint16)
    tifffile.imwrite(
        tmp_path / "imagej.tif",
        image,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"unit": "um", "spacing": 1.5, "axes": "ZYX"},
    )
    tifffile.imwrite(
        tmp_path / "ome.tif",
        image,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 2},
    )
    tifffile.imwrite(tmp_path / "plain.tif", image)
    imagej = file_pixel_size(tmp_path / "imagej.tif")
    assert imagej == pytest.approx({"z": 1.5, "y": 0.2, "x": 0.2})
    assert file_pixel_size(tmp_path / "ome.tif") == pytest.approx({"z": 2.0, "y": 0.1, "x": 0.1})
    assert file_pixel_size(tmp_path / "plain.tif") is None
    assert spatial_pixel_size(imagej, volume=True) == pytest.approx((1.5, 0.2, 0.2))
    assert spatial_pixel_size(imagej, volume=False) == pytest.approx((0.2, 0.2))
    assert spatial_pixel_size({"y": 0.2, "x": 0.2}, volume=True) is None


def test_ome_zarr_gives_its_scale_in_micrometres(tmp_path) -> None:
    folder = tmp_path / "image.ome.zarr"
    folder.mkdir()
    (folder / ".zgroup").write_text(json.dumps({"zarr_format": 2}))  # an OME-NGFF 0.4 group
    axes = [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    transforms = [{"type": "scale", "scale": [2.0, 300.0, 300.0]}]
    attributes = {
        "multiscales": [
            {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
        ]
    }
    (folder / ".zattrs").write_text(json.dumps(attributes))
    assert zarr_pixel_size(folder) == pytest.approx({"z": 2.0, "y": 0.3, "x": 0.3})
    for axis in axes:
        del axis["unit"]
    (folder / ".zattrs").write_text(json.dumps(attributes))
    assert zarr_pixel_size(folder) is None  # a scale without units is not a size


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeXUnit", "PhysicalSizeYUnit"]
        ),
        st.text(alphabet="0123456789.-eEnmµux ", max_size=8),
    )
)
def test_bad_ome_sizes_give_no_size_or_a_positive_one(tmp_path_factory, metadata) -> None:
    path = tmp_path_factory.mktemp("ome") / "image.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), ome=True, metadata=dict(metadata))
    size = file_pixel_size(path)
    assert size is None or (set(size) >= {"y", "x"} and min(size.values()) > 0)
