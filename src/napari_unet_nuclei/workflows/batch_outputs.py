"""A batch run's files: the output paths of an image, what a finished image left, and the
summary CSV."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.io.image_files import TIFF_SUFFIXES
from napari_unet_nuclei.io.image_inputs import BatchInput
from napari_unet_nuclei.io.zarr_io import finish_atomic, open_zarr_image, partial_path
from napari_unet_nuclei.workflows.segment_options import SegmentOptions

__all__ = [
    "SUMMARY_COLUMNS",
    "existing_row",
    "is_done",
    "labels_dtype",
    "output_paths",
    "remove_output",
    "summary_row",
    "write_summary_csv",
    "write_tiff",
]


#: Columns of the summary CSV, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "name",
    "input",
    "output",
    "status",
    "frames",
    "height",
    "width",
    "nuclei",
    "foreground_fraction",
    "nucleus_diameter_px",
    "resized_frames",
    "seconds",
    "error",
)


def output_paths(
    source: BatchInput, out_dir: str | os.PathLike[str], options: SegmentOptions
) -> dict[str, Path]:
    """The files an image writes: ``main`` (mask or labels), ``probabilities``, ``measurements``."""
    out_dir = Path(out_dir)
    suffix = ".tif" if options.format == "tiff" else ".ome.zarr"
    paths = {"main": out_dir / f"{source.name}{suffix}"}
    if options.probabilities:
        paths["probabilities"] = out_dir / f"{source.name}_prob{suffix}"
    if options.measure:
        paths["measurements"] = out_dir / f"{source.name}_nuclei.csv"
    return paths


def is_done(source: BatchInput, out_dir: str | os.PathLike[str], options: SegmentOptions) -> bool:
    """True when every output of ``source`` exists (outputs appear complete or not at all)."""
    return all(path.exists() for path in output_paths(source, out_dir, options).values())


def remove_output(path: Path) -> None:
    """Delete an output file or folder (an OME-Zarr), or a partial one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_tiff(path: Path, data: np.ndarray, axes: list[str] | None) -> Path:
    """Write a zlib-compressed TIFF under a temporary name, then rename it."""
    import tifffile

    partial = partial_path(path)
    metadata = {"axes": "".join(a.upper() for a in axes)} if axes else None
    try:
        tifffile.imwrite(
            partial, data, compression="zlib", photometric="minisblack", metadata=metadata
        )
        return finish_atomic(partial, path)
    finally:
        remove_output(partial)


def labels_dtype(count: int) -> Any:
    return np.uint16 if count < np.iinfo(np.uint16).max else np.uint32


def _count_mask_nuclei(mask: Any) -> tuple[int, int]:
    """Connected parts (8-neighbours) and foreground pixels of every frame of a mask."""
    from scipy import ndimage as ndi

    shape = tuple(mask.shape)
    nuclei = foreground = 0
    for index in frame_indices(shape):
        frame = np.asarray(mask[index] if index else mask[...]) > 0
        nuclei += ndi.label(frame, structure=np.ones((3, 3), bool))[1]
        foreground += int(frame.sum())
    return nuclei, foreground


def _read_output(path: Path) -> Any:
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return tifffile.imread(path)

    return open_zarr_image(path)[0]


def existing_row(source: BatchInput, out_dir: Path, options: SegmentOptions) -> dict[str, Any]:
    """Summary row of an image whose outputs exist, read back from its main output."""
    main = output_paths(source, out_dir, options)["main"]
    data = _read_output(main)
    shape = tuple(data.shape)
    if options.instances:
        ids = set()
        foreground = 0
        for index in frame_indices(shape):
            frame = np.asarray(data[index] if index else data[...])
            ids.update(np.unique(frame[frame > 0]).tolist())
            foreground += int((frame > 0).sum())
        nuclei = len(ids)
    else:
        nuclei, foreground = _count_mask_nuclei(data)
    return summary_row(source, main, "skipped", shape, nuclei, foreground, 0.0)


def summary_row(
    source: BatchInput,
    output: Path,
    status: str,
    shape: tuple[int, ...],
    nuclei: int,
    foreground: int,
    seconds: float,
    error: str = "",
    diameter: float | None = None,
    resized: int = 0,
) -> dict[str, Any]:
    size = int(np.prod(shape)) if shape else 0
    return {
        "name": source.name,
        "input": str(source.path),
        "output": str(output),
        "status": status,
        "frames": int(np.prod(shape[:-2])) if len(shape) > 2 else (1 if shape else 0),
        "height": int(shape[-2]) if shape else 0,
        "width": int(shape[-1]) if shape else 0,
        "nuclei": int(nuclei),
        "foreground_fraction": foreground / size if size else float("nan"),
        "nucleus_diameter_px": float("nan") if diameter is None else round(float(diameter), 1),
        "resized_frames": int(resized),
        "seconds": round(float(seconds), 3),
        "error": error,
    }


def write_summary_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the batch summary (columns :data:`SUMMARY_COLUMNS`) atomically.

    Parameters
    ----------
    rows : sequence of dict
        One row per image, as in :attr:`BatchFinished.rows`.
    path : path-like
        The CSV file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                value = row.get("foreground_fraction")
                writer.writerow(
                    {**row, "foreground_fraction": f"{value:.6f}" if value == value else ""}
                )
        return finish_atomic(partial, path)
    finally:
        remove_output(partial)
