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

import os
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from napari_unet_nuclei.events import (
    BatchFinished,
    BatchStarted,
    ImageDone,
)
from napari_unet_nuclei.io.image_inputs import BatchError, BatchInput, discover_inputs
from napari_unet_nuclei.workflows.batch_image import iter_segment_image, segment_image_task
from napari_unet_nuclei.workflows.batch_outputs import (
    existing_row,
    is_done,
    output_paths,
    summary_row,
    write_summary_csv,
)
from napari_unet_nuclei.workflows.segment_options import SegmentOptions

__all__ = ["segment_files"]


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
    return summary_row(source, main, "failed", (), 0, 0, 0.0, message)


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
                row = existing_row(sources[index], out_dir, options)
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
