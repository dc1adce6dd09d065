"""Worker jobs for nuclei as objects and for large (lazy) images: plain generators, no Qt.

* :func:`segment_objects_job` runs the engine's one segment path
  (:func:`~napari_unet_nuclei.workflows.segment.iter_segment`) for the Segment dock:
  in-memory images into new arrays, optionally split into nuclei (seeded watershed) and
  measured; lazy images (dask, zarr, multiscale levels) frame by frame into zarr arrays
  the plugin owns (:class:`LazyOutputs`), never holding a whole stack in memory.
* :func:`object_evaluation_job` adds object-level scores (matching at IoU >= 0.5, the Data
  Science Bowl 2018 average precision over IoU 0.5:0.95) and an object error map to
  :func:`~._jobs.evaluation_job`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
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
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.workflows.evaluate import object_frame_scores, pool_object_scores
from napari_unet_nuclei.workflows.segment import SegmentOutputs

__all__ = [
    "OBJECT_SCORE_KEYS",
    "LazyFrameDone",
    "LazyOutputs",
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
    from napari_unet_nuclei.nn.object_targets import instance_labels

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


# -------------------------------------------------------------------- lazy outputs
_TEMPORARY_ROOT: list[Path] = []


def temporary_root() -> Path:
    """The plugin's temporary folder for lazy results (removed when Python exits)."""
    if not _TEMPORARY_ROOT:
        root = Path(tempfile.mkdtemp(prefix="napari-unet-nuclei-"))
        atexit.register(shutil.rmtree, root, True)
        _TEMPORARY_ROOT.append(root)
    return _TEMPORARY_ROOT[0]


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or ``stem_2+suffix``... when taken (nothing is overwritten)."""
    path, number = folder / f"{stem}{suffix}", 1
    while path.exists():
        number += 1
        path = folder / f"{stem}_{number}{suffix}"
    return path


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return stem or "image"


class _GatedReader:
    """Array-like over a zarr array that reads only finished frames (others are zeros)."""

    def __init__(self, array: Any, done: np.ndarray, which: str, threshold: float | None):
        self.array = array
        self.done = done
        self.which = which
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.shape = tuple(int(n) for n in array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8 if which == "mask" else array.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        leading = self.ndim - 2
        ranges = [
            range(*k.indices(n)) if isinstance(k, slice) else range(int(k), int(k) + 1)
            for k, n in zip(key[:leading], self.shape[:leading])
        ]
        spatial = key[leading:]
        sizes = [len(range(*k.indices(n))) for k, n in zip(spatial, self.shape[leading:])]
        out = np.zeros([len(r) for r in ranges] + sizes, self.dtype)
        for position in np.ndindex(*[len(r) for r in ranges]):
            frame = tuple(r[i] for r, i in zip(ranges, position))
            if self.done[frame]:
                block = np.asarray(self.array[(*frame, *spatial)])
                out[position] = (block >= self.threshold) if self.which == "mask" else block
        squeeze = tuple(i for i, k in enumerate(key[:leading]) if not isinstance(k, slice))
        return out.squeeze(axis=squeeze) if squeeze else out


@dataclass
class LazyOutputs:
    """Zarr arrays (OME-Zarr folders) that a lazy segmentation writes frame by frame.

    ``frames_done`` is set by the worker once every output of a frame is written; views
    show the frames not done as zeros, so a cancelled frame never looks finished.
    """

    shape: tuple[int, ...]
    probabilities_path: Path
    probabilities: Any
    labels_path: Path | None = None
    labels: Any = None
    frames_done: np.ndarray = field(default_factory=lambda: np.zeros((), bool))
    tables: dict[tuple[int, ...], dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: str,
        shape: tuple[int, ...],
        folder: str | Path | None = None,
        *,
        instances: bool = False,
        attributes: dict[str, Any] | None = None,
    ) -> LazyOutputs:
        """New empty outputs for the image ``name`` of ``shape``.

        Parameters
        ----------
        name : str
            Image layer name (the output folders are ``<name>_prob.ome.zarr`` and
            ``<name>_nuclei.ome.zarr``).
        shape : tuple of int
            ``(..., H, W)`` of the image.
        folder : path-like, optional
            Where to write; a fresh folder in the plugin's temporary folder when omitted.
            Existing files are never replaced (a free name is used).
        instances : bool
            Also create an int32 array for the nuclei labels.
        attributes : dict, optional
            Stored in the OME-Zarr groups (model name, threshold...).
        """
        from napari_unet_nuclei.io.zarr_io import create_ome_zarr

        if folder is None:
            folder = temporary_root() / uuid.uuid4().hex[:12]
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = _safe_stem(name)
        shape = tuple(int(n) for n in shape)
        attributes = {**(attributes or {}), "frames_done": 0}
        probabilities_path = _free_name(folder, f"{stem}_prob", ".ome.zarr")
        probabilities = create_ome_zarr(
            probabilities_path,
            shape,
            np.float32,
            attributes={**attributes, "kind": "probabilities"},
        )
        labels_path = labels = None
        if instances:
            labels_path = _free_name(folder, f"{stem}_nuclei", ".ome.zarr")
            labels = create_ome_zarr(
                labels_path, shape, np.int32, attributes={**attributes, "kind": "labels"}
            )
        return cls(
            shape=shape,
            probabilities_path=probabilities_path,
            probabilities=probabilities,
            labels_path=labels_path,
            labels=labels,
            frames_done=np.zeros(shape[:-2], bool),
        )

    @property
    def n_done(self) -> int:
        """Frames finished."""
        return int(np.count_nonzero(self.frames_done))

    def mark_done(self, index: tuple[int, ...]) -> None:
        """Record frame ``index`` as finished (in memory and in the zarr attributes)."""
        from napari_unet_nuclei.io.zarr_io import ZARR_FORMAT_NAME

        self.frames_done[index] = True
        for path in (self.probabilities_path, self.labels_path):
            if path is not None:
                _set_attribute(path, ZARR_FORMAT_NAME, "frames_done", self.n_done)

    def view(self, which: str, threshold: float | None = None) -> Any:
        """A dask view of the ``"probabilities"``, the ``"mask"`` at ``threshold`` or the
        ``"labels"``.

        Frames not finished read as zeros without touching the store (the worker may be
        writing them). Each call gives new dask keys, so napari (and dask's cache) read
        the arrays again: call it to refresh a layer.
        """
        import dask.array as da

        array = self.labels if which == "labels" else self.probabilities
        reader = _GatedReader(array, self.frames_done.copy(), which, threshold)
        return da.from_array(
            reader,
            chunks=tuple(array.chunks),
            name=f"unet-nuclei-{which}-{uuid.uuid4().hex}",
            asarray=False,
            meta=np.empty((0,) * len(self.shape), reader.dtype),
        )

    def table(self) -> dict[str, np.ndarray] | None:
        """The measurements of the finished frames, in frame order (None without labels)."""
        if self.labels is None:
            return None
        from napari_unet_nuclei.prediction.measurements import concatenate_tables

        parts = [self.tables[index] for index in sorted(self.tables) if self.frames_done[index]]
        return concatenate_tables(parts, len(self.shape) - 2)


def _set_attribute(path: Path, key: str, name: str, value: Any) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    attributes = dict(group.attrs.get(key, {}))
    attributes[name] = value
    group.attrs[key] = attributes


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
    from napari_unet_nuclei.events import TileDone
    from napari_unet_nuclei.workflows.segment import FrameSegmented

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
    tile_size: int = 512,
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
    from napari_unet_nuclei.workflows.segment import iter_segment

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
            overlap=None,  # inference.default_overlap(tile_size), as on the command line
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
    from napari_unet_nuclei.prediction.instances import InstanceConfig, iter_instances
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
