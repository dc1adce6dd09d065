"""Per-nucleus measurements: a table of columns for napari layer features and CSV files.

One row per nucleus (label id): area, centroid, mean and integrated intensity and
eccentricity, measured with scikit-image's ``regionprops``. Every size and position
column names its unit: ``area_px`` and ``centroid_y_px`` in pixels, and, where the pixel
size is known (file metadata or the layer's scale, see
:mod:`napari_unet_nuclei.io.pixel_size`), ``area_um2`` and ``centroid_y_um`` in micrometres
too. A 3-D nucleus has ``volume_voxels`` (and ``volume_um3``), ``centroid_z_px`` and
``z_slices``, the number of slices it spans, in place of the eccentricity of a 2-D one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import file_problem, one_line
from napari_unet_nuclei.io.file_writing import atomic_path

__all__ = [
    "MEASUREMENT_COLUMNS",
    "MeasurementsFileError",
    "concatenate_tables",
    "frame_columns",
    "measure_nuclei",
    "read_measurements_csv",
    "to_layer_features",
    "with_frame_columns",
    "write_measurements_csv",
]

#: Columns of a 2-D measurement table without a pixel size, in order (stacks add frame
#: columns in front; a known pixel size adds the micrometre columns at the end).
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "label",
    "area_px",
    "centroid_y_px",
    "centroid_x_px",
    "mean_intensity",
    "integrated_intensity",
    "eccentricity",
)

# ("area" and "volume": tables written before the columns named their units.)
_INTEGER_COLUMNS = ("label", "area_px", "volume_voxels", "z_slices", "area", "volume")


def empty_table(columns: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        name: np.zeros(
            0, np.int64 if name in _INTEGER_COLUMNS or name.startswith("frame") else float
        )
        for name in columns
    }


def frame_columns(n_leading: int) -> list[str]:
    """Names of the frame columns of a stack's measurement table.

    Parameters
    ----------
    n_leading : int
        Axes in front of ``(H, W)``.

    Returns
    -------
    list of str
        ``[]``, ``["frame"]`` or ``["frame_0", "frame_1", ...]``.
    """
    if n_leading == 0:
        return []
    return ["frame"] if n_leading == 1 else [f"frame_{i}" for i in range(n_leading)]


def with_frame_columns(
    table: dict[str, np.ndarray], index: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """One frame's measurements with its frame columns (its ``index``) in front.

    Parameters
    ----------
    table : dict of str to numpy.ndarray
        Measurements of one 2-D frame (columns :data:`MEASUREMENT_COLUMNS`).
    index : tuple of int
        The frame's index over the stack's leading axes.

    Returns
    -------
    dict of str to numpy.ndarray
    """
    count = table["label"].size
    front = {
        name: np.full(count, value, np.int64)
        for name, value in zip(frame_columns(len(index)), index)
    }
    return {**front, **table}


def concatenate_tables(
    parts: Sequence[dict[str, np.ndarray]], n_leading: int, micrometres: bool = False
) -> dict[str, np.ndarray]:
    """Frames' measurement tables (each with its frame columns) as one table.

    Parameters
    ----------
    parts : sequence of dict
        Per-frame tables, in the order of their rows in the result.
    n_leading : int
        Axes in front of ``(H, W)`` (names the columns of an empty result).
    micrometres : bool
        An empty result has the micrometre columns too (the pixel size was known).

    Returns
    -------
    dict of str to numpy.ndarray
    """
    if not parts:
        # The columns of a frame without nuclei, by the one rule that names them.
        columns = _measure_frame(
            np.zeros((1, 1), np.uint8), None, (1.0, 1.0) if micrometres else None
        )
        return {**empty_table(frame_columns(n_leading)), **columns}
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _measure_frame(
    labels: np.ndarray, image: np.ndarray | None, pixel_size: Sequence[float] | None
) -> dict[str, np.ndarray]:
    """Measurements of one 2-D label image (or 3-D volume)."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops_table

    volume = labels.ndim == 3
    spatial = ("z", "y", "x")[-labels.ndim :]
    size = "volume_voxels" if volume else "area_px"
    shape_column = "z_slices" if volume else "eccentricity"
    columns = ["label", size, *(f"centroid_{axis}_px" for axis in spatial)]
    columns += ["mean_intensity", "integrated_intensity", shape_column]
    if pixel_size is not None:
        columns += ["volume_um3" if volume else "area_um2"]
        columns += [f"centroid_{axis}_um" for axis in spatial]
    if not labels.any():
        return empty_table(columns)
    properties = ["label", "area", "centroid", "bbox" if volume else "eccentricity"]
    raw = regionprops_table(labels, properties=properties)
    ids = raw["label"].astype(np.int64)
    table: dict[str, np.ndarray] = {
        "label": ids,
        size: np.rint(raw["area"]).astype(np.int64),
    }
    for number, axis in enumerate(spatial):
        table[f"centroid_{axis}_px"] = raw[f"centroid-{number}"].astype(float)
    if image is None:
        table["mean_intensity"] = np.full(ids.size, np.nan)
        table["integrated_intensity"] = np.full(ids.size, np.nan)
    else:
        values = np.asarray(image, dtype=np.float64)
        integrated = np.asarray(ndi.sum_labels(values, labels, index=ids), dtype=float)
        table["integrated_intensity"] = integrated
        table["mean_intensity"] = integrated / table[size]
    if volume:  # bbox: min z, y, x, then max z, y, x (exclusive)
        table["z_slices"] = (raw["bbox-3"] - raw["bbox-0"]).astype(np.int64)
    else:
        table["eccentricity"] = raw["eccentricity"].astype(float)
    if pixel_size is not None:
        micrometres = [float(v) for v in pixel_size][-labels.ndim :]
        table["volume_um3" if volume else "area_um2"] = table[size] * float(np.prod(micrometres))
        for axis, step in zip(spatial, micrometres):
            table[f"centroid_{axis}_um"] = table[f"centroid_{axis}_px"] * step
    return {name: table[name] for name in columns}


def measure_nuclei(
    labels: Any,
    image: Any = None,
    *,
    per_frame: bool | None = None,
    pixel_size: Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """Measure every nucleus of a label image: one row per label id.

    Parameters
    ----------
    labels : array_like
        Integer labels, 0 = background: a 2-D image, a stack ``(..., H, W)`` of frames, or a
        3-D volume (``per_frame=False``).
    image : array_like, optional
        The intensity image of the same shape (raw values, any real dtype); without it the
        intensity columns are NaN.
    per_frame : bool, optional
        Measure each 2-D frame of a stack on its own (the default for more than 2
        dimensions: this package segments frame by frame) and add one column per leading
        axis (``frame`` for a 3-D stack, ``frame_0``, ``frame_1``... for more). ``False``
        measures a 3-D volume as such (``volume_voxels`` instead of ``area_px``,
        ``centroid_z_px`` is added, and ``z_slices``, the slices a nucleus spans, replaces
        the eccentricity).
    pixel_size : sequence of float, optional
        The pixel size in micrometres along y, x (and z first, for a volume), from the
        file's metadata or the layer's scale; adds ``area_um2`` (``volume_um3``) and
        ``centroid_*_um``. Without it the table is in pixels only.

    Returns
    -------
    dict of str to numpy.ndarray
        Columns of equal length, in this order: the frame columns (stacks), ``label``,
        ``area_px``, ``centroid_y_px``, ``centroid_x_px`` (row and column),
        ``mean_intensity``, ``integrated_intensity`` (sum over the nucleus),
        ``eccentricity`` (of the ellipse with the same second moments, 0 = circle), then
        with ``pixel_size`` ``area_um2``, ``centroid_y_um``, ``centroid_x_um``.
        Suitable as napari layer ``features`` (see :func:`to_layer_features`) or for
        :func:`write_measurements_csv`.

    Raises
    ------
    ValueError
        When shapes differ, labels are not integers, or a volume has more than 3 dimensions.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "uib":
        raise ValueError(
            f"Labels must be integers (0 = background), got dtype {labels.dtype}; pass the "
            "instance labels, not probabilities."
        )
    if labels.ndim < 2:
        raise ValueError(f"Labels must have at least 2 dimensions, got shape {labels.shape}.")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if image is not None:
        image = np.asarray(image)
        if image.shape != labels.shape:
            raise ValueError(
                f"The image has shape {image.shape} but the labels {labels.shape}; measure "
                "each labels layer with the image it was segmented from."
            )
    if per_frame is None:
        per_frame = labels.ndim > 2
    if pixel_size is not None:
        pixel_size = tuple(float(v) for v in pixel_size)
        wanted = 3 if labels.ndim == 3 and not per_frame else 2
        if len(pixel_size) < wanted or not all(np.isfinite(pixel_size)) or min(pixel_size) <= 0:
            raise ValueError(
                f"The pixel size must be {wanted} positive numbers (micrometres along "
                f"{', '.join(('z', 'y', 'x')[-wanted:])}), got {pixel_size}."
            )
    if not per_frame:
        if labels.ndim > 3:
            raise ValueError(
                f"Volumes of {labels.ndim} dimensions cannot be measured as one; use "
                "per_frame=True."
            )
        return _measure_frame(labels, image, pixel_size)
    if labels.ndim == 2:
        return _measure_frame(labels, image, pixel_size)
    leading = labels.shape[:-2]
    parts = [
        with_frame_columns(
            _measure_frame(labels[index], None if image is None else image[index], pixel_size),
            index,
        )
        for index in np.ndindex(*leading)
    ]
    return concatenate_tables(parts, len(leading))


def to_layer_features(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The table as napari Labels ``features``: an ``index`` column maps rows to label ids.

    Parameters
    ----------
    table : dict of str to numpy.ndarray
        Output of :func:`measure_nuclei` (ids unique in the layer).

    Returns
    -------
    dict of str to numpy.ndarray
        ``{"index": label ids, **table}``.
    """
    return {"index": np.asarray(table["label"]), **table}


def write_measurements_csv(table: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a measurement table as CSV (comma-separated, header row), atomically.

    Parameters
    ----------
    table : dict of str to array_like
        Columns of equal length, e.g. from :func:`measure_nuclei`.
    path : path-like
        The CSV file (conventionally ``<image name>_nuclei.csv``); written under a hidden
        temporary name and renamed when complete.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    columns = list(table)
    lengths = {len(table[name]) for name in columns}
    if len(lengths) > 1:
        raise ValueError(f"Table columns have different lengths: {sorted(lengths)}.")
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in zip(*(np.asarray(table[name]).tolist() for name in columns)):
            writer.writerow(_format(value) for value in row)
    return path


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else repr(value)
    return value


def read_measurements_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_measurements_csv` back into columns.

    Integer columns (``label``, ``area_px``, ``volume_voxels``, ``z_slices``, frame columns)
    come back as int64, the others as float (empty cells are NaN).

    Parameters
    ----------
    path : str or path-like
        The CSV file.

    Returns
    -------
    dict of str to numpy.ndarray
        One array per column, in file order.

    Raises
    ------
    MeasurementsFileError
        With one sentence, for anything that is not such a table: not a regular file, not
        text, an empty file, rows of another length than the header, cells that are not
        numbers, repeated column names (a ``ValueError``).
    """
    problem = file_problem(path)
    if problem:
        raise MeasurementsFileError(f"{path} cannot be read as a nuclei table: it {problem}.")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, strict=True))
    except Exception as error:  # not UTF-8, NUL bytes, a field too large, unreadable...
        raise MeasurementsFileError(
            f"{path} is not a nuclei table (a CSV of numbers): {type(error).__name__}: "
            f"{one_line(error)}."
        ) from error
    if not rows or not rows[0]:
        raise MeasurementsFileError(f"{path} is empty; expected a header row of column names.")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise MeasurementsFileError(f"{path} names a column twice; it is not a nuclei table.")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise MeasurementsFileError(
                f"{path} is not a nuclei table: row {line} has {len(row)} cells for "
                f"{len(header)} columns."
            )
    table = {}
    for number, name in enumerate(header):
        values = [row[number] for row in body]
        try:
            if name in _INTEGER_COLUMNS or name.startswith("frame"):
                table[name] = np.array([int(v) for v in values], np.int64)
            else:
                table[name] = np.array([float(v) if v else np.nan for v in values], float)
        except (ValueError, OverflowError) as error:
            raise MeasurementsFileError(
                f"{path} is not a nuclei table: the column {name!r} holds a value that is not "
                f"a number ({one_line(error)})."
            ) from error
    return table


class MeasurementsFileError(ValueError):
    """A file could not be read as a table of nuclei measurements."""
