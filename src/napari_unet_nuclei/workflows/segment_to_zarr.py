"""Segmenting a lazy image (dask, zarr) into an OME-Zarr on disk, never loading it whole."""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.events import FrameDone, TileDone
from napari_unet_nuclei.io.zarr_io import (
    create_ome_zarr,
    finish_atomic,
    partial_path,
    read_ome_zarr_lazy,
)
from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment

__all__ = ["iter_segment_to_zarr"]


def iter_segment_to_zarr(
    model: Any,
    image: Any,
    path: str | os.PathLike[str],
    *,
    kind: str = "mask",
    threshold: float | None = None,
    axes: list[str] | None = None,
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Generator[TileDone | FrameDone, None, Any]:
    """Segment a lazy image into an OME-Zarr on disk and return the result as a dask array.

    The image is never loaded whole: frames are read in bands and results are written as
    they come, into a hidden temporary folder renamed to ``path`` at the end (an
    interrupted run leaves nothing under ``path``).

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : array-like
        ``(H, W)`` or ``(..., H, W)`` dask, zarr or numpy array (2 to 5 dimensions).
    path : path-like
        OME-Zarr folder to write, e.g. ``"nuclei.ome.zarr"``.
    kind : {"mask", "probabilities"}
        Write the uint8 mask (1 = nucleus) or the float32 probabilities.
    threshold : float, optional
        Mask threshold (default: the model's).
    axes : list of str, optional
        OME axis names (default from the number of dimensions).
    chunks : tuple of int, optional
        Output chunks (default: one frame of up to 1024 x 1024 per chunk).
    overwrite : bool
        Replace an existing ``path``; otherwise an existing path is an error.
    **options
        ``tile_size``, ``overlap``, ``batch_size``, ``device``, ``should_stop`` of
        :func:`iter_predict_lazy`.

    Yields
    ------
    TileDone or FrameDone

    Returns
    -------
    dask.array.Array
        The written result, read lazily from ``path``.
    """
    if kind not in ("mask", "probabilities"):
        raise ValueError(f"kind must be 'mask' or 'probabilities', got {kind!r}.")
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
    partial = partial_path(target)
    threshold = float(model.threshold if threshold is None else threshold)
    dtype = np.uint8 if kind == "mask" else np.float32
    array = create_ome_zarr(
        partial,
        image.shape,
        dtype,
        axes=axes,
        chunks=chunks,
        attributes={"kind": kind, "threshold": threshold, "model": model.name},
        overwrite=True,
    )
    outputs = SegmentOutputs(**{"mask" if kind == "mask" else "probabilities": array})
    try:
        yield from iter_segment(
            model,
            image,
            outputs,
            threshold=threshold,
            read="bands",
            count_nuclei=False,
            **options,
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finish_atomic(partial, target)
    return read_ome_zarr_lazy(target)
