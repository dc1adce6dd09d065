"""Segment many images: files, folders, globs, stacks and OME-Zarr, here or on a dask cluster.

:func:`segment_files` is a generator of progress events (:class:`BatchStarted`, tile and
frame progress when run in this process, one :class:`ImageDone` per image,
:class:`BatchFinished`) that the command line prints and a widget can show. For each input
it writes, under the same name in the output folder:

- ``<name>.tif`` or ``<name>.ome.zarr``: the uint8 mask (1 = nucleus), or with
  ``instances`` the nuclei labels (one id per nucleus, unique in a stack);
- ``<name>_prob.tif`` / ``<name>_prob.ome.zarr`` with ``probabilities``;
- ``<name>_nuclei.csv`` with ``measure``: one row per nucleus;

and a summary CSV (per image: nuclei count, foreground fraction, time). Every file is
written under a hidden temporary name and renamed when complete, the main output last: an
interrupted run leaves no half-written output, and a re-run skips the images whose outputs
all exist.

With ``workers=N`` the images are spread over a ``dask.distributed.LocalCluster`` of N
processes; with ``scheduler="tcp://host:8786"`` over an existing cluster (e.g. started with
dask-jobqueue on SLURM). Each task reads the model file itself from its path (torch models
are never sent through pickle), so the path must be readable on every worker.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.events import (
    BatchFinished,
    BatchStarted,
    FrameDone,
    ImageDone,
    TileDone,
    run_to_end,
)
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.io.channels import (
    resolve_stack_axis,
)
from napari_unet_nuclei.io.datasets import TIFF_SUFFIXES
from napari_unet_nuclei.io.image_inputs import BatchError, BatchInput, discover_inputs, open_image
from napari_unet_nuclei.prediction.instances import InstanceConfig

__all__ = [
    "SUMMARY_COLUMNS",
    "BatchError",
    "BatchInput",
    "SegmentOptions",
    "discover_inputs",
    "is_done",
    "iter_segment_image",
    "open_image",
    "output_paths",
    "segment_files",
    "segment_image_task",
    "write_summary_csv",
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


@dataclass(frozen=True)
class SegmentOptions:
    """What to write for each image, and how to compute it.

    Parameters
    ----------
    threshold : float, optional
        Probability threshold of the mask (default: the model's).
    format : {"tiff", "zarr"}
        Output files: TIFF (zlib-compressed) or OME-Zarr 0.4 folders.
    probabilities : bool
        Also write the float32 probabilities (``<name>_prob``).
    instances : bool
        Write nuclei labels (seeded watershed, one id per nucleus) instead of the mask.
    instance_config : InstanceConfig, optional
        Watershed settings (its threshold is replaced by ``threshold``); by default the
        model's own (see :func:`~napari_unet_nuclei.workflows.segmentation.default_instance_config`).
    min_size : int, optional
        Smallest nucleus in pixels, replacing the instance settings' ``min_size``.
    stack_axis : {"auto", "frames", "z"}
        What the first axis of a 3-D stack is: separate frames (nuclei labelled frame by
        frame, ids unique in the stack) or z-slices of one volume (3-D nuclei); ``"auto"``:
        z where the file names that axis z, frames otherwise.
    channel : int, optional
        The nuclear channel of a multi-channel image (its ``c`` axis, or a short unnamed
        first axis); by default the channel with the most nucleus-like contrast where the
        file names a channel axis, and a refusal where an unnamed short axis could be
        channels or frames.
    measure : bool
        Also write ``<name>_nuclei.csv`` (one row per nucleus: area, centroid, intensity,
        eccentricity; sizes in pixels and, where the file gives its pixel size, in
        micrometres too); nuclei are the instance labels, or the connected parts of the
        mask.
    diameter : float or "auto" or None
        The nuclei's diameter in pixels, to resize each frame to the size the model
        learned; ``"auto"`` estimates it (and resizes only nuclei over twice that size),
        None never resizes (see :func:`~napari_unet_nuclei.workflows.segment.iter_segment`).
    tile_size, overlap, batch_size : int
        Tiled inference settings (overlap None: ``inference.default_overlap(tile_size)``,
        the rule the docks use too).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    precision, backend : str
        Numeric precision and runtime, as in
        :func:`~napari_unet_nuclei.prediction.inference.iter_predict`.
    threads : int, optional
        torch threads per task (set on dask workers so they share the CPU cores).
    lazy_bytes : int
        TIFF inputs larger than this are read lazily, a band of rows at a time.
    """

    threshold: float | None = None
    format: str = "tiff"
    probabilities: bool = False
    instances: bool = False
    instance_config: InstanceConfig | None = None
    min_size: int | None = None
    stack_axis: str = "auto"
    channel: int | None = None
    measure: bool = False
    diameter: float | str | None = "auto"
    tile_size: int = 512
    overlap: int | None = None
    batch_size: int = 1
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    lazy_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        if self.format not in ("tiff", "zarr"):
            raise BatchError(f"Output format must be 'tiff' or 'zarr', got {self.format!r}.")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise BatchError(f"The threshold must be in [0, 1], got {self.threshold}.")
        if self.stack_axis not in ("auto", "frames", "z"):
            raise BatchError(
                f"The stack axis must be 'auto', 'frames' or 'z', got {self.stack_axis!r}."
            )
        if self.channel is not None and self.channel < 0:
            raise BatchError(f"The channel must be 0 or more, got {self.channel}.")
        if self.min_size is not None and self.min_size < 0:
            raise BatchError(f"The smallest nucleus size must be >= 0, got {self.min_size}.")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data."""
        data = asdict(self)
        data["instance_config"] = (
            self.instance_config.to_dict() if self.instance_config is not None else None
        )
        return data


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_tiff(path: Path, data: np.ndarray, axes: list[str] | None) -> Path:
    """Write a zlib-compressed TIFF under a temporary name, then rename it."""
    import tifffile

    from napari_unet_nuclei.io.zarr_io import finish_atomic, partial_path

    partial = partial_path(path)
    metadata = {"axes": "".join(a.upper() for a in axes)} if axes else None
    try:
        tifffile.imwrite(
            partial, data, compression="zlib", photometric="minisblack", metadata=metadata
        )
        return finish_atomic(partial, path)
    finally:
        _remove(partial)


def _labels_dtype(count: int) -> Any:
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
    from napari_unet_nuclei.io.zarr_io import open_zarr_image

    return open_zarr_image(path)[0]


def _existing_row(source: BatchInput, out_dir: Path, options: SegmentOptions) -> dict[str, Any]:
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
    return _row(source, main, "skipped", shape, nuclei, foreground, 0.0)


def _row(
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
    from napari_unet_nuclei.io.zarr_io import finish_atomic, partial_path

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
        _remove(partial)


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


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
    from napari_unet_nuclei.io.zarr_io import create_ome_zarr

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
    from napari_unet_nuclei.io.pixel_size import file_pixel_size, spatial_pixel_size
    from napari_unet_nuclei.io.zarr_io import finish_atomic, partial_path
    from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment
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
                main_data = outputs.labels.astype(_labels_dtype(nuclei), copy=False)
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
                    _write_tiff(paths["probabilities"], outputs.probabilities, axes)
            # The main output last: when it exists, everything else does.
            if zarr_out:
                finish_atomic(partials["main"], paths["main"])
            else:
                _write_tiff(paths["main"], np.asarray(main_data), axes)
    finally:
        for partial in partials.values():
            _remove(partial)
    return _row(
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
    import warnings

    from napari_unet_nuclei.nn.normalization import ImageWarning
    from napari_unet_nuclei.prediction.volumes import looks_like_z_slices

    named = axes is not None and axes[0] in ("t", "z")
    if stack_axis != "frames" or len(shape) != 3 or named:
        return
    found = outputs.labels if outputs.labels is not None else outputs.mask
    if found is not None and looks_like_z_slices(found):
        warnings.warn(
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


# --------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------


@dataclass
class _Run:
    sources: list[BatchInput]
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)

    def event(self, index: int, row: dict[str, Any]) -> ImageDone:
        self.rows[index] = row
        return ImageDone(
            index=index,
            n_images=len(self.sources),
            name=row["name"],
            status=row["status"],
            output=row["output"],
            nuclei=row["nuclei"],
            foreground_fraction=row["foreground_fraction"],
            seconds=row["seconds"],
            error=row["error"],
            diameter=row.get("nucleus_diameter_px", float("nan")),
            resized_frames=row.get("resized_frames", 0),
        )


def _failed_row(
    source: BatchInput, out_dir: Path, options: SegmentOptions, error: BaseException
) -> dict[str, Any]:
    main = output_paths(source, out_dir, options)["main"]
    message = (
        f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error)
    )
    return _row(source, main, "failed", (), 0, 0, 0.0, message)


def segment_files(
    model: Any,
    inputs: Iterable[str | os.PathLike[str] | BatchInput],
    out_dir: str | os.PathLike[str],
    options: SegmentOptions | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    summary: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Any, None, list[dict[str, Any]]]:
    """Segment many images and write one output per input, yielding progress events.

    Parameters
    ----------
    model : path-like, str or NucleiModel
        The model file (needed with ``workers`` or ``scheduler``: each task loads it), the
        name of a built-in model (``"fluo-nuclei"``), or a loaded model for a run in this
        process.
    inputs : iterable
        Files, folders, globs, OME-Zarr folders (see :func:`discover_inputs`) or
        :class:`BatchInput` items.
    out_dir : path-like
        Output folder (created if needed).
    options : SegmentOptions, optional
        Format, threshold, instances, measurements, probabilities, tiling.
    workers : int
        0: segment here, one image after the other, with tile progress and Cancel within a
        batch of tiles. N >= 1: start a ``dask.distributed.LocalCluster`` of N worker
        processes (torch threads per worker: CPU cores / N).
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``) to use instead.
    summary : path-like, optional
        Summary CSV (default ``<out_dir>/summary.csv``).
    overwrite : bool
        Segment again images whose outputs exist (default: skip them).
    should_stop : callable, optional
        Polled between tiles (in this process) or between finished images (cluster); when
        it returns True the run stops with
        :class:`~napari_unet_nuclei.prediction.inference.InferenceCancelled` after writing the
        summary of the images finished so far.

    Yields
    ------
    BatchStarted, TileDone, FrameDone, ImageDone, BatchFinished
        Tile and frame progress only for runs in this process.

    Returns
    -------
    list of dict
        The summary rows, in input order.
    """
    from napari_unet_nuclei.nn.model import NucleiModel
    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    options = options or SegmentOptions()
    out_dir = Path(out_dir)
    distributed = bool(workers) or scheduler is not None
    if isinstance(model, NucleiModel):
        if distributed:
            raise BatchError(
                "Running on dask workers needs the model as a file path (each worker loads "
                "it): save it with save_model(model, path) and pass the path."
            )
        loaded, model_path = model, None
    else:
        from napari_unet_nuclei.io.builtin_models import builtin_model_path, is_builtin_name
        from napari_unet_nuclei.io.model_io import load_model

        model_path = os.fspath(model)
        if is_builtin_name(model_path) and not Path(model_path).is_file():
            model_path = os.fspath(builtin_model_path(model_path))  # workers load the file
        loaded = load_model(model_path)  # fails early, with a clear message
    items = list(inputs)
    if all(isinstance(item, BatchInput) for item in items):
        sources: list[BatchInput] = items  # type: ignore[assignment]
    else:
        sources = discover_inputs(
            [item.path if isinstance(item, BatchInput) else item for item in items]
        )
    if workers < 0:
        raise BatchError(f"--workers must be 0 or more, got {workers}.")
    inputs_by_path = {source.path.resolve() for source in sources}
    for source in sources:
        for path in output_paths(source, out_dir, options).values():
            if path.resolve() in inputs_by_path:
                raise BatchError(
                    f"Writing {path} would overwrite an input image; choose another --out."
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = Path(summary) if summary is not None else out_dir / "summary.csv"
    run = _Run(sources)
    todo = []
    skipped = []
    for index, source in enumerate(sources):
        if not overwrite and is_done(source, out_dir, options):
            skipped.append(index)
        else:
            todo.append(index)
    mode = scheduler or ("local cluster" if workers else "in-process")
    yield BatchStarted(len(sources), len(todo), len(skipped), workers, mode)
    start = time.perf_counter()
    try:
        for index in skipped:
            try:
                row = _existing_row(sources[index], out_dir, options)
            except Exception as error:  # an unreadable old output: report, do not stop
                row = _failed_row(sources[index], out_dir, options, error)
            yield run.event(index, row)
        if distributed:
            yield from _run_distributed(
                run, todo, model_path, out_dir, options, workers, scheduler, should_stop
            )
        else:
            for index in todo:
                if should_stop is not None and should_stop():
                    raise InferenceCancelled("Batch segmentation was cancelled.")
                try:
                    row = yield from iter_segment_image(
                        loaded, sources[index], out_dir, options, should_stop=should_stop
                    )
                except (InferenceCancelled, KeyboardInterrupt):
                    raise
                except Exception as error:
                    row = _failed_row(sources[index], out_dir, options, error)
                yield run.event(index, row)
    finally:
        rows = [run.rows[i] for i in sorted(run.rows)]
        if rows:
            write_summary_csv(rows, summary_path)
    elapsed = time.perf_counter() - start
    n_done = sum(row["status"] == "done" for row in rows)
    yield BatchFinished(
        n_done=n_done,
        n_skipped=sum(row["status"] == "skipped" for row in rows),
        n_failed=sum(row["status"] == "failed" for row in rows),
        seconds=elapsed,
        images_per_second=n_done / elapsed if elapsed > 0 else float("nan"),
        summary_path=str(summary_path),
        rows=rows,
    )
    return rows


def _run_distributed(
    run: _Run,
    todo: list[int],
    model_path: str | None,
    out_dir: Path,
    options: SegmentOptions,
    workers: int,
    scheduler: str | None,
    should_stop: Callable[[], bool] | None,
) -> Generator[ImageDone, None, None]:
    """Submit one task per image to a dask cluster and yield results as they finish."""
    import logging

    from distributed import Client, LocalCluster, as_completed

    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    if not todo:
        return
    if scheduler is not None:
        cluster = None
        client = Client(scheduler)
    else:
        threads = options.threads or max(1, (os.cpu_count() or 1) // workers)
        options = replace(options, threads=threads)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        futures = {
            client.submit(
                segment_image_task,
                os.path.abspath(model_path),
                replace(run.sources[index], path=run.sources[index].path.absolute()),
                str(out_dir.absolute()),
                options,
                key=f"segment-{index}-{run.sources[index].name}",
                pure=False,
            ): index
            for index in todo
        }
        completed = as_completed(list(futures))
        while not completed.is_empty():
            ready = completed.next_batch(block=False)
            if not ready:
                time.sleep(0.1)
            for future in ready:
                index = futures[future]
                try:
                    row = future.result()
                except Exception as error:
                    row = _failed_row(run.sources[index], out_dir, options, error)
                yield run.event(index, row)
            if not completed.is_empty() and should_stop is not None and should_stop():
                client.cancel(list(futures))
                raise InferenceCancelled("Batch segmentation was cancelled.")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
