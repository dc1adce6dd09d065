"""Worker jobs for nuclei as objects and for large (lazy) images: plain generators, no Qt.

* :func:`segment_objects_job` runs the engine's one segment path
  (:func:`~napari_unet_nuclei.workflows.segment.iter_segment`) for the Segment dock:
  in-memory images into new arrays, optionally split into nuclei (seeded watershed) and
  measured; lazy images (dask, zarr, multiscale levels) frame by frame into zarr arrays
  the plugin owns (:class:`~.lazy_outputs.LazyOutputs`), never holding a whole stack in memory.
* :func:`object_evaluation_job` adds object-level scores (matching at IoU >= 0.5, the Data
  Science Bowl 2018 average precision over IoU 0.5:0.95) and an object error map to
  :func:`~._jobs.evaluation_job`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_unet_nuclei._napari._jobs import (
    EvaluationResult,
    SegmentFrame,
    SegmentProgress,
    SegmentResult,
    SegmentTask,
    evaluation_job,
    guarded_job,
    tile_progress,
)
from napari_unet_nuclei._napari.lazy_outputs import LazyOutputs
from napari_unet_nuclei.events import TileDone
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.nn.object_targets import instance_labels
from napari_unet_nuclei.prediction.instances import InstanceConfig, iter_instances
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE
from napari_unet_nuclei.workflows.evaluate import object_frame_scores, pool_object_scores
from napari_unet_nuclei.workflows.frame_writer import FrameSegmented
from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment

__all__ = [
    "OBJECT_SCORE_KEYS",
    "LazyFrameDone",
    "ObjectEvaluation",
    "ObjectsResult",
    "is_lazy",
    "object_evaluation_job",
    "segment_objects_job",
    "to_labels",
]

#: Keys of the object scores, in table order.
OBJECT_SCORE_KEYS = ("object_precision", "object_recall", "object_f1", "dsb_ap")


# ---------------------------------------------------------------------------- helpers
def is_lazy(data: Any) -> bool:
    """True for layer data that is not a numpy array (dask, zarr, a multiscale list)."""
    return not isinstance(data, np.ndarray)


def to_labels(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """Instance labels of a labels array; a 0/1 mask becomes its connected parts per frame.

    Returns
    -------
    numpy.ndarray
        Integer labels (ids unique within each frame).
    bool
        True when ``array`` was a mask (touching nuclei then count as one object).
    """
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = np.rint(array).astype(np.int64)
    if array.dtype == bool or (array.size and int(array.max()) <= 1):
        # The one rule that makes a mask into nuclei (the command line's too).
        out = np.zeros(array.shape, np.int32)
        for index in frame_indices(array.shape):
            out[index] = instance_labels(array[index] > 0)
        return out, True
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        array = np.where(array < 0, 0, array)
    return array, False


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class ObjectsResult:
    """Nuclei labels (ids unique in the task's array) and their measurements."""

    task: int
    labels: np.ndarray
    table: dict[str, np.ndarray]


@dataclass(frozen=True)
class LazyFrameDone:
    """A frame of a lazy task is written; ``n_done`` frames of ``n_frames`` are finished."""

    task: int
    frame: int
    n_frames: int


def _task_outputs(
    model: Any, shape: tuple[int, ...], instances: Any, lazy: LazyOutputs | None
) -> SegmentOutputs:
    """Where one task's results go: the lazy zarr arrays, or new numpy arrays."""
    if lazy is not None:
        return SegmentOutputs(probabilities=lazy.probabilities, labels=lazy.labels)
    wanted = (instances.seeds,) if instances is not None and instances.uses_object_map else ()
    return SegmentOutputs(
        probabilities=np.empty(shape, np.float32),
        labels=np.zeros(shape, np.int32) if instances is not None else None,
        maps={name: np.empty(shape, np.float32) for name in wanted if name in model.object_maps},
    )


def _task_events(
    events: Generator[Any, None, Any],
    number: int,
    n_tasks: int,
    outputs: SegmentOutputs,
    lazy: LazyOutputs | None,
    splitting: bool = False,
    volume: bool = False,
) -> Generator[SegmentProgress | SegmentFrame | LazyFrameDone, None, Any]:
    """The engine's events of one task as the dock's events; returns its summary.

    With ``splitting`` a frame's tiles fill 90 % of its share of the bar and its split
    nuclei the rest; a ``volume``'s frames fill 90 % of the task's, its 3-D nuclei the rest.
    """
    network_share = 0.9 if splitting else 1.0
    task_share = 0.9 if volume else 1.0
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if isinstance(event, TileDone):
            yield tile_progress(event, number, n_tasks, network_share, task_share)
        elif isinstance(event, FrameSegmented):
            inner = task_share * (event.frame + 1) / event.n_frames
            yield SegmentProgress(
                number, n_tasks, event.frame, event.n_frames, (number + inner) / n_tasks
            )
            if lazy is not None:
                if event.table is not None:
                    lazy.tables[event.index] = event.table
                lazy.mark_done(event.index)
                yield LazyFrameDone(number, event.frame, event.n_frames)
            elif event.n_frames > 1:
                frame = np.array(outputs.probabilities[event.index], copy=True)
                yield SegmentFrame(number, event.frame, event.n_frames, frame)


# ------------------------------------------------------------------------ segmentation
@guarded_job
def segment_objects_job(
    model: Any,
    tasks: Sequence[SegmentTask],
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    device: str | None = None,
    instances: Any = None,
    lazy_outputs: dict[int, LazyOutputs] | None = None,
    diameter: float | str | None = "auto",
    stop: threading.Event,
) -> Generator[Any, None, int]:
    """Segment each task with :func:`~napari_unet_nuclei.workflows.segment.iter_segment`;
    split into nuclei and measure them when ``instances`` is given.

    Parameters
    ----------
    model : NucleiModel
    tasks : sequence of SegmentTask
        In-memory tasks (numpy) fill new arrays, each frame read whole (a 3-D task whose
        ``stack_axis`` is z gives 3-D nuclei, lazy stacks are labelled frame by frame);
        tasks listed in
        ``lazy_outputs`` are streamed frame by frame into their zarr arrays (read in
        bands when no nuclei are asked for).
    tile_size : int
        Tile side of the tiled inference.
    device : str, optional
        Where to compute.
    instances : InstanceConfig, optional
        Instance settings (threshold and seeds included); None: masks only. Seeds from
        an object map make the job keep that map of the model too (in memory).
    lazy_outputs : dict of int to LazyOutputs, optional
        Outputs of the lazy tasks, by task number.
    diameter : float or "auto" or None
        The nuclei's diameter in pixels (see
        :func:`~napari_unet_nuclei.workflows.segment.iter_segment`).
    stop : threading.Event
        Set to cancel (between tiles and frames).

    Yields
    ------
    SegmentProgress, SegmentFrame, SegmentResult, ObjectsResult, LazyFrameDone, JobFailed

    Returns
    -------
    int
        Tasks done (fewer when cancelled).
    """
    from napari_unet_nuclei.prediction.inference import InferenceCancelled, check_image

    lazy_outputs = lazy_outputs or {}
    n_tasks = len(tasks)
    for number, task in enumerate(tasks):
        if stop.is_set():
            return number
        lazy = lazy_outputs.get(number)
        shape = check_image(task.image)
        outputs = _task_outputs(model, shape, instances, lazy)
        volume = lazy is None and len(shape) == 3 and task.stack_axis == "z"
        events = iter_segment(
            model,
            task.image,
            outputs,
            instances=instances,
            stack_axis="z" if volume else "frames",
            spacing=task.spacing,
            measure=instances is not None,
            pixel_size=task.pixel_size,
            read="frames" if lazy is None else "auto",
            count_nuclei=False,
            diameter=diameter,
            tile_size=tile_size,
            overlap=None,  # tiling.default_overlap(tile_size), as on the command line
            device=device,
            should_stop=stop.is_set,
        )
        try:
            summary = yield from _task_events(
                events, number, n_tasks, outputs, lazy, instances is not None, volume
            )
        except InferenceCancelled:
            return number
        finally:
            events.close()
        if stop.is_set():
            return number
        if lazy is None:
            yield SegmentResult(
                number,
                outputs.probabilities,
                outputs.maps,
                summary.diameter,
                summary.rescaled_frames,
            )
            if instances is not None:
                yield ObjectsResult(number, outputs.labels, summary.table)
    return n_tasks


# -------------------------------------------------------------------------- evaluation
@dataclass
class ObjectEvaluation:
    """Pixel evaluation plus nuclei matched one to one with the ground truth.

    Attributes
    ----------
    pixels : EvaluationResult
        The pixel scores, error map and curve.
    errors : numpy.ndarray
        uint8 object error map (codes of ``object_metrics.OBJECT_ERROR_CLASSES``).
    scores : dict
        Over all frames: ``object_precision``, ``object_recall``, ``object_f1`` (matches at
        IoU >= 0.5, counts pooled over frames), ``dsb_ap`` (Data Science Bowl 2018 AP over
        IoU 0.5:0.95, averaged over frames), counts (``tp``, ``fp``, ``fn``,
        ``n_true``, ``n_pred``, ``matched``, ``false_nuclei``, ``missed``, ``merges``,
        ``splits``).
    frame_scores : list of dict
        The same per frame (flattened leading axes).
    truth_was_mask, prediction_was_mask : bool
        A 0/1 mask was turned into its connected parts (touching nuclei are one object).
    """

    pixels: EvaluationResult
    errors: np.ndarray
    scores: dict[str, float]
    frame_scores: list[dict[str, float]]
    truth_was_mask: bool = False
    prediction_was_mask: bool = False


@guarded_job
def object_evaluation_job(
    truth: np.ndarray,
    *,
    prediction: np.ndarray | None = None,
    instances: Any = None,
    stop: threading.Event,
    **inputs: Any,
) -> Generator[Any, None, ObjectEvaluation | None]:
    """:func:`~._jobs.evaluation_job`, then nuclei matched one to one with the truth.

    Parameters
    ----------
    truth : numpy.ndarray
        Ground-truth instance labels (a 0/1 mask is split into its connected parts).
    prediction : numpy.ndarray, optional
        Labels to score as they are (a 0/1 mask is split into connected parts); when
        omitted, the model's mask is split into nuclei with the seeded watershed.
    instances : InstanceConfig, optional
        Instance settings for a model's prediction (its threshold is replaced by the
        evaluation threshold); by default the model's own (its object maps when it has
        them, see :func:`~napari_unet_nuclei.workflows.segmentation.default_instance_config`).
    stop : threading.Event
        Set to cancel.
    **inputs
        The other arguments of :func:`~._jobs.evaluation_job`.

    Returns
    -------
    ObjectEvaluation or None
        None when cancelled or failed.
    """
    from napari_unet_nuclei.prediction.inference import InferenceCancelled
    from napari_unet_nuclei.workflows.segmentation import default_instance_config

    model = inputs.get("model")
    if instances is None and model is not None:
        instances = default_instance_config(model)
    if prediction is None and model is not None and instances.seeds in model.object_maps:
        inputs["maps"] = (instances.seeds,)
        if inputs.get("image") is None:
            raise ValueError("nuclei from the model's object maps need the image to segment")
    pixels = yield from evaluation_job(truth, prediction=prediction, stop=stop, **inputs)
    if pixels is None or stop.is_set():
        return None
    truth_labels, truth_was_mask = to_labels(truth)
    prediction_was_mask = False
    if prediction is not None:
        predicted, prediction_was_mask = to_labels(prediction)
    else:
        config = replace(instances or InstanceConfig(), threshold=float(pixels.threshold))
        try:
            predicted = yield from iter_instances(
                pixels.probabilities, config, maps=pixels.maps, should_stop=stop.is_set
            )
        except InferenceCancelled:
            return None
    maps = np.zeros(truth_labels.shape, np.uint8)
    frame_scores = []
    for index in frame_indices(truth_labels.shape):
        if stop.is_set():
            return None
        maps[index], scores = object_frame_scores(predicted[index], truth_labels[index])
        frame_scores.append(scores)
    return ObjectEvaluation(
        pixels=pixels,
        errors=maps,
        scores=pool_object_scores(frame_scores),
        frame_scores=frame_scores,
        truth_was_mask=truth_was_mask,
        prediction_was_mask=prediction_was_mask,
    )
