"""One image of a batch run: read it, segment it frame by frame into its output files,
and return its summary row (in this process or as a dask task)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.events import (
    FrameDone,
    TileDone,
    run_to_end,
)
from napari_unet_nuclei.io.channels import resolve_stack_axis
from napari_unet_nuclei.io.image_inputs import BatchError, BatchInput, open_image
from napari_unet_nuclei.io.pixel_size import file_pixel_size, spatial_pixel_size
from napari_unet_nuclei.io.zarr_io import create_ome_zarr, finish_atomic, partial_path
from napari_unet_nuclei.nn.normalization import ImageWarning
from napari_unet_nuclei.notices import warn_user
from napari_unet_nuclei.prediction.volumes import looks_like_z_slices
from napari_unet_nuclei.workflows.batch_outputs import (
    labels_dtype,
    output_paths,
    remove_output,
    summary_row,
    write_tiff,
)
from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment
from napari_unet_nuclei.workflows.segment_options import SegmentOptions

__all__ = ["iter_segment_image", "segment_image_task"]


def _valid_axes(axes: list[str] | None, ndim: int) -> list[str] | None:
    """The axis names when they are OME names (t, c, z, y, x) in a valid order, else None."""
    order = "tczyx"
    if axes is None or len(axes) != ndim or not set(axes) <= set(order) or axes[-2:] != ["y", "x"]:
        return None
    positions = [order.index(a) for a in axes]
    return axes if positions == sorted(set(positions)) else None


def _new_array(
    path: Path | None, shape: tuple[int, ...], dtype: Any, axes: list[str] | None, attrs: dict
) -> Any:
    """A zarr output array at ``path`` (OME-Zarr), or a numpy array when ``path`` is None."""
    if path is None:
        return np.zeros(shape, dtype)

    return create_ome_zarr(
        path,
        shape,
        dtype,
        axes=axes,
        attributes=attrs,
        overwrite=True,
    )


def iter_segment_image(
    model: Any,
    source: BatchInput,
    out_dir: str | os.PathLike[str],
    options: SegmentOptions | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TileDone | FrameDone, None, dict[str, Any]]:
    """Segment one input image and write its outputs, yielding progress.

    Parameters
    ----------
    model : NucleiModel
        The model.
    source : BatchInput
        The image (see :func:`discover_inputs`).
    out_dir : path-like
        Output folder (created if needed).
    options : SegmentOptions, optional
        What to write; TIFF masks by default.
    should_stop : callable, optional
        Polled between tiles and frames; when it returns True,
        :class:`~napari_unet_nuclei.prediction.inference.InferenceCancelled` is raised and nothing
        is left under the output names.

    Yields
    ------
    TileDone or FrameDone
        Inference progress.

    Returns
    -------
    dict
        The summary row (columns :data:`SUMMARY_COLUMNS`, status ``"done"``).
    """
    from napari_unet_nuclei.workflows.segmentation import default_instance_config

    options = options or SegmentOptions()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(source, out_dir, options)
    if paths["main"].resolve() == source.path.resolve():
        raise BatchError(
            f"Writing {paths['main']} would overwrite the input image; choose another --out."
        )
    threshold = float(model.threshold if options.threshold is None else options.threshold)
    zarr_out = options.format == "zarr"
    partials = {key: partial_path(path) for key, path in paths.items()}
    attrs = {"source": source.path.name, "model": model.name, "threshold": threshold}
    try:
        with open_image(
            source, options.lazy_bytes, channel=options.channel, stack_axis=options.stack_axis
        ) as (image, axes):
            shape = tuple(int(n) for n in image.shape)
            axes = _valid_axes(axes, len(shape))
            outputs = SegmentOutputs()
            if options.probabilities:
                outputs.probabilities = _new_array(
                    partials["probabilities"] if zarr_out else None,
                    shape,
                    np.float32,
                    axes,
                    {**attrs, "kind": "probabilities"},
                )
            config = None
            if options.instances:
                # Labels are held in memory, then written with the smallest dtype.
                outputs.labels = np.zeros(shape, np.int32)
                config = options.instance_config or default_instance_config(model)
                if options.min_size is not None:
                    config = replace(config, min_size=options.min_size)
            else:
                outputs.mask = _new_array(
                    partials["main"] if zarr_out else None,
                    shape,
                    np.uint8,
                    axes,
                    {**attrs, "kind": "mask"},
                )
            stack_axis = resolve_stack_axis(options.stack_axis, shape, axes)
            summary = yield from iter_segment(
                model,
                image,
                outputs,
                threshold=threshold,
                instances=config,
                stack_axis=stack_axis,
                measure=options.measure,
                pixel_size=spatial_pixel_size(
                    file_pixel_size(source.path), volume=stack_axis == "z" and len(shape) == 3
                ),
                diameter=options.diameter,
                tile_size=options.tile_size,
                overlap=options.overlap,
                batch_size=options.batch_size,
                device=options.device,
                precision=options.precision,
                backend=options.backend,
                should_stop=should_stop,
            )
            nuclei, foreground = summary.nuclei, summary.foreground
            _hint_at_z(source, shape, axes, stack_axis, outputs)
            if options.instances:
                main_data = outputs.labels.astype(labels_dtype(nuclei), copy=False)
                if zarr_out:
                    array = _new_array(
                        partials["main"], shape, main_data.dtype, axes, {**attrs, "kind": "labels"}
                    )
                    array[...] = main_data
            else:
                main_data = outputs.mask
            if options.measure:
                from napari_unet_nuclei.prediction.measurements import write_measurements_csv

                write_measurements_csv(summary.table, paths["measurements"])
            if options.probabilities:
                if zarr_out:
                    finish_atomic(partials["probabilities"], paths["probabilities"])
                else:
                    write_tiff(paths["probabilities"], outputs.probabilities, axes)
            # The main output last: when it exists, everything else does.
            if zarr_out:
                finish_atomic(partials["main"], paths["main"])
            else:
                write_tiff(paths["main"], np.asarray(main_data), axes)
    finally:
        for partial in partials.values():
            remove_output(partial)
    return summary_row(
        source,
        paths["main"],
        "done",
        shape,
        nuclei,
        foreground,
        time.perf_counter() - start,
        diameter=summary.diameter,
        resized=summary.rescaled_frames,
    )


def _hint_at_z(
    source: BatchInput,
    shape: tuple[int, ...],
    axes: list[str] | None,
    stack_axis: str,
    outputs: Any,
) -> None:
    """Warn when a stack whose first axis the file does not name was segmented frame by
    frame but its frames look like z-slices of one volume (``--stack-axis z``)."""

    named = axes is not None and axes[0] in ("t", "z")
    if stack_axis != "frames" or len(shape) != 3 or named:
        return
    found = outputs.labels if outputs.labels is not None else outputs.mask
    if found is not None and looks_like_z_slices(found):
        warn_user(
            f"{source.name}: its {shape[0]} frames look like z-slices of one volume (the "
            "nuclei overlap from frame to frame), and each frame got its own nuclei; "
            "--stack-axis z finds the 3-D nuclei.",
            ImageWarning,
            stacklevel=2,
        )


_MODEL_CACHE: dict[tuple[str, int], Any] = {}


def _cached_model(path: str) -> Any:
    """Load a model file once per process (dask workers keep it between tasks)."""
    from napari_unet_nuclei.io.model_io import load_model

    key = (os.path.abspath(path), os.stat(path).st_mtime_ns)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = load_model(path)
    return _MODEL_CACHE[key]


def segment_image_task(
    model_path: str, source: BatchInput, out_dir: str, options: SegmentOptions
) -> dict[str, Any]:
    """Segment one image in a dask task: load the model from its file, segment, write.

    Parameters
    ----------
    model_path : str
        The model file, readable from the worker.
    source : BatchInput
        The image, readable from the worker.
    out_dir : str
        Output folder, writable from the worker.
    options : SegmentOptions
        What to write; ``options.threads`` sets the worker's torch threads.

    Returns
    -------
    dict
        The summary row.
    """
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    return run_to_end(
        iter_segment_image(_cached_model(model_path), source, out_dir, options), None
    )
