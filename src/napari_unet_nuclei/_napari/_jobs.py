"""The work the widgets hand to napari's ``thread_worker``: plain generators, no Qt.

Each job takes plain values (numpy arrays, a model, a config, a ``threading.Event``),
never a widget or a layer, and yields small dataclasses the widget turns into progress.

A job never raises: a failure is yielded as :class:`JobFailed` holding one sentence.
superqt's worker would otherwise swallow a ``RuntimeError`` (torch's usual error type: it
takes it for a deleted Qt object and emits neither ``errored`` nor ``finished``), and napari
would show other errors as a traceback notification.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet_nuclei._napari._threads import gui_friendly_threads
from napari_unet_nuclei._napari._warmup import wait_for_warm_up
from napari_unet_nuclei.evaluate.metrics import (
    error_map,
    per_frame_scores,
    precision_recall_curve,
    segmentation_scores,
)
from napari_unet_nuclei.events import (
    FrameDone,
    TileDone,
    TrainingFinished,
)
from napari_unet_nuclei.notices import Notice, notices_to
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE

__all__ = [
    "EvaluationResult",
    "JobFailed",
    "SegmentProgress",
    "SegmentResult",
    "SegmentTask",
    "evaluation_job",
    "layer_stack_axis",
    "ranking_job",
    "segmentation_job",
    "until_stopped",
]


@dataclass(frozen=True)
class JobFailed:
    """A job failed; ``message`` is the first line of the error, without a traceback."""

    message: str


def guarded_job(
    job: Callable[..., Generator[Any, None, Any]],
) -> Callable[..., Generator[Any, None, Any]]:
    """Turn any exception of a job generator into a final yielded :class:`JobFailed`, and
    the engine's notices (:func:`~napari_unet_nuclei.notices.warn_user`) into yielded
    :class:`~napari_unet_nuclei.notices.Notice` events, each before the event that followed
    it (they reach the dock even when other threads swap Python's warning state)."""

    @functools.wraps(job)
    def run(*args: Any, **kwargs: Any) -> Generator[Any, None, Any]:
        notices: list[Notice] = []
        try:
            wait_for_warm_up()
            with gui_friendly_threads(), notices_to(notices.append):
                events = job(*args, **kwargs)
                try:
                    while True:
                        try:
                            event = next(events)
                        except StopIteration as done:
                            yield from _taken(notices)
                            return done.value
                        yield from _taken(notices)
                        yield event
                finally:
                    events.close()
        except Exception as error:
            yield from _taken(notices)
            text = str(error).strip()
            yield JobFailed(text.splitlines()[0] if text else type(error).__name__)
            return None

    return run


def _taken(notices: list[Notice]) -> list[Notice]:
    """The notices gathered so far, in order; the list is emptied."""
    taken = notices[:]
    del notices[: len(taken)]
    return taken


# ------------------------------------------------------------------------------ training
def until_stopped(
    events: Generator[Any, None, Any], stop: threading.Event
) -> Generator[Any, None, None]:
    """Yield training ``events`` until ``stop`` is set; then consume the rest without
    yielding them, so that the final ``TrainingFinished`` (reason ``"cancelled"``, the best
    weights kept) is the next event, even when the worker was also asked to quit. The
    events are closed at the end.
    """
    try:
        for event in events:
            if stop.is_set() and not isinstance(event, TrainingFinished):
                final = None
                for later in events:
                    if isinstance(later, TrainingFinished):
                        final = later
                if final is not None:
                    yield final
                return
            yield event
    finally:
        events.close()


# -------------------------------------------------------------------------- segmentation
def layer_stack_axis(layer: Any, requested: str) -> str:
    """``"z"`` or ``"frames"`` for a layer: as requested, or under ``"auto"`` z for a 3-D
    layer whose first axis is labelled z or whose scale is anisotropic (a z-step that
    differs from the pixel size), frames otherwise."""
    if requested != "auto":
        return requested
    shape = tuple(getattr(layer.data, "shape", ()))
    if len(shape) - (1 if getattr(layer, "rgb", False) else 0) != 3:
        return "frames"
    labels = [str(name).lower() for name in getattr(layer, "axis_labels", ())][-3:]
    scale = [float(v) for v in getattr(layer, "scale", (1.0, 1.0, 1.0))][-3:]
    named_z = bool(labels) and labels[0] == "z"
    anisotropic = len(scale) == 3 and abs(scale[0] - scale[1]) > 1e-6 * max(scale[1], 1e-12)
    return "z" if named_z or anisotropic else "frames"


@dataclass(frozen=True)
class SegmentTask:
    """One image (or one frame of a stack) to segment.

    Parameters
    ----------
    layer_name : str
        Name of the image layer it comes from.
    image : array-like
        The pixels: the whole layer, or one 2-D frame.
    frame : tuple of int, optional
        Index of that frame in the layer, or None when ``image`` is the whole layer.
    stack_axis : {"frames", "z"}
        What the first axis of a 3-D ``image`` is.
    spacing : tuple of float
        The layer's scale along z, y, x (3-D distances of a z-stack).
    pixel_size : tuple of float, optional
        Micrometres along y, x (z, y, x for a z-stack) where the layer or its file says;
        the measurements gain micrometre columns.
    """

    layer_name: str
    image: Any
    frame: tuple[int, ...] | None = None
    stack_axis: str = "frames"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pixel_size: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SegmentProgress:
    """Progress over all tasks of a segmentation job."""

    task: int
    n_tasks: int
    frame: int
    n_frames: int
    fraction: float


def tile_progress(
    event: Any, number: int, n_tasks: int, network_share: float = 1.0, task_share: float = 1.0
) -> SegmentProgress:
    """Progress over all tasks after the engine's ``TileDone`` ``event`` in task ``number``.

    ``network_share`` is the part of a frame's time the network takes (the rest splits its
    nuclei), ``task_share`` the part of the task its frames take (a z-stack's 3-D nuclei
    come after its last frame), so that the bar reaches the end only when the work does.
    """
    tiles = network_share * event.tiles_done / max(1, event.n_tiles)
    inner = task_share * (event.frame + tiles) / event.n_frames
    return SegmentProgress(
        number, n_tasks, event.frame, event.n_frames, (number + inner) / n_tasks
    )


@dataclass(frozen=True)
class SegmentResult:
    """The probabilities of one task, yielded as soon as it is done."""

    task: int
    probabilities: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # object maps, if asked
    diameter: float | None = None  # nucleus diameter (px), given or estimated
    resized_frames: int = 0  # frames resized to the size the model learned


@dataclass(frozen=True)
class SegmentFrame:
    """One finished frame of a stack task, so the widget can show it before the rest."""

    task: int
    frame: int  # flat index over the leading axes
    n_frames: int
    probabilities: np.ndarray  # (H, W) float32, a copy


@guarded_job
def segmentation_job(
    model: Any,
    tasks: Sequence[SegmentTask],
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    device: str | None = None,
    maps: Sequence[str] = (),
    stop: threading.Event,
) -> Generator[SegmentProgress | SegmentFrame | SegmentResult, None, int]:
    """Segment each task with :func:`napari_unet_nuclei.prediction.inference.iter_predict`.

    Stacks yield each finished frame (:class:`SegmentFrame`) before the whole result.
    ``maps`` names object maps of the model to compute too (for its instances).

    Returns
    -------
    int
        The number of tasks done (fewer when ``stop`` was set).
    """
    from napari_unet_nuclei.prediction.inference import (
        InferenceCancelled,
        check_image,
        iter_predict,
    )

    n_tasks = len(tasks)
    overlap = None  # tiling.default_overlap(tile_size), as on the command line
    try:
        for number, task in enumerate(tasks):
            out = np.empty(check_image(task.image), np.float32)
            frames = out.reshape(-1, *out.shape[-2:])
            maps_out = {name: np.empty(out.shape, np.float32) for name in maps}
            events = iter_predict(
                model,
                task.image,
                tile_size=tile_size,
                overlap=overlap,
                device=device,
                out=out,
                maps_out=maps_out,
                should_stop=stop.is_set,
            )
            while True:
                try:
                    event = next(events)
                except StopIteration as done:
                    probabilities = done.value
                    break
                if stop.is_set():
                    events.close()
                    return number
                if isinstance(event, TileDone):
                    yield tile_progress(event, number, n_tasks)
                elif isinstance(event, FrameDone) and event.n_frames > 1:
                    yield SegmentFrame(
                        number, event.frame, event.n_frames, frames[event.frame].copy()
                    )
            yield SegmentResult(number, probabilities, maps_out)
    except InferenceCancelled:
        return number
    return n_tasks


# ---------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    """Everything the Evaluate widget shows for one comparison."""

    source: str
    threshold: float | None
    errors: np.ndarray
    scores: dict[str, float]
    frame_scores: list[dict[str, Any]]
    curve: Any = None
    probabilities: np.ndarray | None = field(default=None, repr=False)
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@guarded_job
def evaluation_job(
    truth: np.ndarray,
    *,
    source: str,
    prediction: np.ndarray | None = None,
    model: Any = None,
    image: Any = None,
    probabilities: np.ndarray | None = None,
    threshold: float = 0.5,
    tile_size: int = DEFAULT_TILE_SIZE,
    maps: Sequence[str] = (),
    stop: threading.Event,
) -> Generator[SegmentProgress, None, EvaluationResult | None]:
    """Compare a prediction with the ground truth.

    Give either ``prediction`` (a mask or labels; ``> 0`` is nucleus) or a ``model`` with
    the ``image`` to segment (``probabilities`` already computed for that image skip the
    network). With a model, the precision-recall curve over the logit sweep -5..+5 is
    computed too. ``maps`` names object maps of the model to compute as well (kept in
    the result for its nuclei; given probabilities are then ignored).

    Returns
    -------
    EvaluationResult or None
        None when ``stop`` was set before the end.
    """
    curve = None
    computed_maps: dict[str, np.ndarray] = {}
    if prediction is None:
        if probabilities is None or maps:
            job = segmentation_job(
                model, [SegmentTask(source, image)], tile_size=tile_size, maps=maps, stop=stop
            )
            for event in job:
                if isinstance(event, SegmentResult):
                    probabilities, computed_maps = event.probabilities, event.maps
                elif isinstance(event, JobFailed):
                    yield event
                    return None
                else:
                    yield event
        if stop.is_set() or probabilities is None:
            return None
        probabilities = np.asarray(probabilities, np.float32)
        prediction = probabilities >= threshold
        curve = precision_recall_curve(probabilities, truth)
    else:
        threshold = None
    mask = np.asarray(prediction) > 0
    if stop.is_set():
        return None
    return EvaluationResult(
        source=source,
        threshold=threshold,
        errors=error_map(mask, truth),
        scores=segmentation_scores(mask, truth),
        frame_scores=per_frame_scores(mask, truth) if mask.ndim >= 2 else [],
        curve=curve,
        probabilities=probabilities,
        maps=computed_maps,
    )


# ------------------------------------------------------------------------------- ranking
@guarded_job
def ranking_job(
    model: Any,
    data: Any,
    *,
    mode: str,
    tile: int = 256,
    diversity: float = 0.5,
    labelled: Sequence[int] = (),
    tile_size: int = DEFAULT_TILE_SIZE,
    stop: threading.Event,
) -> Generator[Any, None, Any]:
    """Rank frames (``mode="frames"``) or tiles (``"tiles"``) with the uncertainty engine.

    Returns
    -------
    FrameRanking, list of TileScore, or None
        None when ``stop`` was set before the end.
    """
    from napari_unet_nuclei.prediction.inference import InferenceCancelled
    from napari_unet_nuclei.prediction.ranking import iter_rank_frames, iter_rank_tiles

    overlap = None  # tiling.default_overlap(tile_size), as on the command line
    if mode == "frames":
        events = iter_rank_frames(
            model,
            data,
            diversity=diversity,
            labelled=labelled,
            tile_size=tile_size,
            overlap=overlap,
            should_stop=stop.is_set,
        )
    else:
        events = iter_rank_tiles(
            model, data, tile=tile, tile_size=tile_size, overlap=overlap, should_stop=stop.is_set
        )
    try:
        return (yield from events)
    except InferenceCancelled:
        return None
