"""The physical pixel size of an image, in micrometres, from what its file says.

Measurements carry units (:mod:`napari_unet_nuclei.prediction.measurements`): pixels always, and
micrometres where the pixel size is known. It is read from

- OME-TIFF: ``PhysicalSizeX/Y/Z`` and their units in the OME-XML;
- ImageJ TIFF: the X/Y resolution tags with the ``unit`` of the ImageJ metadata, and its
  ``spacing`` (z);
- OME-Zarr: the first dataset's ``scale`` transformation with the axes' ``unit``;
- a napari layer: its ``scale`` with its ``units`` (see ``_napari``).

A file that names no length unit gives None: a size in unknown units is not a
micrometre. A size is a mapping from axis name (``"z"``, ``"y"``, ``"x"``) to micrometres.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from napari_unet_nuclei.io._file_checks import quiet_tifffile
from napari_unet_nuclei.io.image_files import TIFF_SUFFIXES
from napari_unet_nuclei.io.zarr_io import ome_multiscales

__all__ = [
    "file_pixel_size",
    "micrometres",
    "spatial_pixel_size",
    "tiff_pixel_size",
    "zarr_pixel_size",
]

_PER_MICROMETRE = {
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "cm": 1e4,
    "centimeter": 1e4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "angstrom": 1e-4,
    "å": 1e-4,
}


def micrometres(value: Any, unit: Any) -> float | None:
    """``value`` in ``unit`` as micrometres; None for a unit that is not a length or a
    value that is not a positive finite number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    factor = _PER_MICROMETRE.get(str(unit).strip().lower())
    if factor is None or not (math.isfinite(value) and value > 0):
        return None
    return value * factor


def tiff_pixel_size(tif: Any) -> dict[str, float] | None:
    """The pixel size an open ``tifffile.TiffFile`` declares (OME, then ImageJ)."""
    try:
        if tif.is_ome and tif.ome_metadata:
            size = _ome_xml_size(tif.ome_metadata)
            if size:
                return size
        if tif.is_imagej:
            return _imagej_size(tif)
    except Exception:  # damaged metadata: no size rather than no segmentation
        return None
    return None


def _ome_xml_size(xml: str) -> dict[str, float] | None:
    match = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", xml)
    if not match:
        return None
    attributes = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
    size = {}
    for axis in ("z", "y", "x"):
        key = f"PhysicalSize{axis.upper()}"
        if key in attributes:
            value = micrometres(attributes[key], attributes.get(f"{key}Unit", "µm"))
            if value is not None:
                size[axis] = value
    return size if "y" in size and "x" in size else None


def _imagej_size(tif: Any) -> dict[str, float] | None:
    metadata = tif.imagej_metadata or {}
    unit = metadata.get("unit")
    if unit is None:
        return None
    tags = tif.pages[0].tags
    size = {}
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        if tag not in tags:
            return None
        numerator, denominator = tags[tag].value  # pixels per unit, as a fraction
        if not numerator:
            return None
        value = micrometres(denominator / numerator, unit)
        if value is None:
            return None
        size[axis] = value
    if "spacing" in metadata:
        z = micrometres(metadata["spacing"], unit)
        if z is not None:
            size["z"] = z
    return size


def zarr_pixel_size(path: str | os.PathLike[str]) -> dict[str, float] | None:
    """The pixel size in an OME-Zarr image's ``multiscales`` metadata (version 0.4 or 0.5)."""
    import zarr

    try:
        multiscales = ome_multiscales(dict(zarr.open(str(path), mode="r").attrs))
        multiscale = multiscales[0]
        axes = multiscale["axes"]
        transforms = multiscale["datasets"][0]["coordinateTransformations"]
        scale = next(t["scale"] for t in transforms if t.get("type") == "scale")
    except Exception:  # not a group, no multiscales, damaged metadata: no size
        return None
    size = {}
    for axis, step in zip(axes, scale):
        if isinstance(axis, dict) and axis.get("type") == "space" and "unit" in axis:
            value = micrometres(step, axis["unit"])
            if value is not None:
                size[str(axis.get("name", "")).lower()] = value
    return size if "y" in size and "x" in size else None


def spatial_pixel_size(size: dict[str, float] | None, volume: bool) -> tuple[float, ...] | None:
    """The sizes :func:`~napari_unet_nuclei.measure_nuclei` takes: ``(y, x)``, or
    ``(z, y, x)`` for a volume (None when a needed axis is unknown)."""
    if not size:
        return None
    axes = ("z", "y", "x") if volume else ("y", "x")
    if any(axis not in size for axis in axes):
        return None
    return tuple(size[axis] for axis in axes)


def file_pixel_size(path: str | os.PathLike[str]) -> dict[str, float] | None:
    """The pixel size a TIFF file or an OME-Zarr folder declares; None when it says none
    (PNG and JPEG files never do)."""
    path = Path(path)
    if path.is_dir():
        return zarr_pixel_size(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            return tiff_pixel_size(tif)
    except Exception:  # an unreadable file fails where it is read, with its own sentence
        return None
