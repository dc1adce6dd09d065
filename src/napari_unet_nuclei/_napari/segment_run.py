"""One run of the Segment dock: its tasks, and how its results reach the viewer's layers.

A :class:`SegmentRun` takes the events of ``segment_objects_job`` (finished frames of a
stack, whole images, nuclei with their measurements, frames of lazy images written to zarr)
and puts them into the dock's output layers as they come. A stack that already has
outputs is re-run into ``RUNNING`` layers that replace the earlier result only when the run
completes; when it stops early, its finished frames are kept apart (``UNFINISHED``) and
the earlier result stays as it was. :class:`ThresholdFollowers` keeps the finished masks in
step with the threshold slider.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei._napari._jobs import SegmentFrame, SegmentResult, SegmentTask
from napari_unet_nuclei._napari._layers import (
    OWNER_KEY,
    find_owned_layer,
    grey_shape,
    put_output_layer,
)
from napari_unet_nuclei._napari._object_jobs import LazyFrameDone, ObjectsResult
from napari_unet_nuclei._napari.lazy_outputs import LazyOutputs
from napari_unet_nuclei._napari.model_registry import CachedProbabilities
from napari_unet_nuclei._napari.segment_outputs import RUNNING, OutputLayers
from napari_unet_nuclei.prediction.measurements import to_layer_features
from napari_unet_nuclei.prediction.volumes import looks_like_z_slices

__all__ = ["FRAME_REFRESH_S", "SegmentRun", "ThresholdFollowers", "threshold_mask"]

#: Finished frames of a stack are drawn at most this often (seconds) while it runs.
FRAME_REFRESH_S = 0.5


def threshold_mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask (1 = nucleus) of probabilities at ``threshold``."""
    from napari_unet_nuclei.prediction.inference import threshold_mask as engine_mask

    return engine_mask(probabilities, threshold)


@dataclass
class _PartialStack:
    """Outputs of a stack being segmented: the frames finished so far."""

    probabilities: np.ndarray
    done: np.ndarray  # bool per frame
    mask: np.ndarray
    threshold: float  # of ``mask``


class ThresholdFollowers:
    """The finished nuclei masks that follow the threshold slider, by image layer.

    In-memory outputs are re-thresholded from the probabilities cached in the registry,
    lazy ones from their zarr store; the network never runs again.
    """

    def __init__(self, viewer: Any, registry: Any) -> None:
        self._viewer = viewer
        self._registry = registry
        self._cached: dict[int, tuple[weakref.ref, str]] = {}
        self._lazy: dict[int, tuple[weakref.ref, LazyOutputs]] = {}

    def follow_cached(self, layer: Any, model_name: str) -> None:
        """``layer``'s mask comes from the registry's cached probabilities of ``model_name``."""
        self._cached[id(layer)] = (weakref.ref(layer), model_name)
        self._lazy.pop(id(layer), None)

    def follow_lazy(self, layer: Any, outputs: LazyOutputs) -> None:
        """``layer``'s mask comes from the probabilities in ``outputs``' zarr store."""
        self._lazy[id(layer)] = (weakref.ref(layer), outputs)
        self._cached.pop(id(layer), None)

    def apply(self, threshold: float) -> int:
        """Re-threshold every followed mask; return how many were updated."""
        updated = 0
        for key, (ref, model_name) in list(self._cached.items()):
            layer = ref()
            if layer is None or layer not in self._viewer.layers:
                del self._cached[key]
                continue
            cached = self._registry.cached_probabilities(model_name, layer)
            target = find_owned_layer(self._viewer, "nuclei", layer.name)
            if cached is None or target is None:
                continue
            target.data = threshold_mask(cached.probabilities, threshold)
            updated += 1
        for key, (ref, outputs) in list(self._lazy.items()):
            layer = ref()
            target = (
                None if layer is None else find_owned_layer(self._viewer, "nuclei", layer.name)
            )
            if layer is None or layer not in self._viewer.layers or target is None:
                del self._lazy[key]
                continue
            target.data = outputs.view("mask", threshold)
            updated += 1
        return updated


class SegmentRun:
    """The state of one Segment run and the layer updates its events cause.

    Parameters
    ----------
    viewer : napari.Viewer
    outputs : OutputLayers
        The dock's output layers.
    registry : ModelRegistry
        Caches the run's probabilities for the threshold slider and Evaluate.
    followers : ThresholdFollowers
        The dock's masks that follow the threshold slider.
    model_name : str
        The model of the run.
    tasks, layers : list
        The run's tasks and the image layer of each.
    lazy_outputs : dict of int to LazyOutputs
        The zarr outputs of the lazy tasks, by task number.
    threshold : callable
        The slider's current threshold.
    instances_shown : callable
        Called with each finished instances layer (its measurements can be saved).
    """

    def __init__(
        self,
        viewer: Any,
        outputs: OutputLayers,
        registry: Any,
        followers: ThresholdFollowers,
        model_name: str,
        tasks: list[SegmentTask],
        layers: list[Any],
        lazy_outputs: dict[int, LazyOutputs],
        threshold: Callable[[], float],
        instances_shown: Callable[[Any], None],
    ) -> None:
        self._viewer = viewer
        self.outputs = outputs
        self._registry = registry
        self._followers = followers
        self.model_name = model_name
        self.tasks = tasks
        self.layers = layers
        self.lazy_outputs = lazy_outputs
        self._threshold = threshold
        self._instances_shown = instances_shown
        self.threshold_at_start = float(threshold())
        # Stacks that already have outputs: this run's go to RUNNING layers until done.
        self.staged = {
            number
            for number, task in enumerate(tasks)
            if task.frame is None
            and len(task.image.shape) > 2
            and find_owned_layer(viewer, "nuclei", task.layer_name) is not None
        }
        # Stack tasks running now: their probabilities and finished frames so far.
        self.partial: dict[int, _PartialStack] = {}
        # Per finished task: its nucleus diameter (px) and how many frames were resized.
        self.sizes: dict[int, tuple[float | None, int]] = {}
        self._last_frame_shown = 0.0

    # ----------------------------------------------------------------------- events
    def apply(self, event: Any) -> str | None:
        """Put a job event's results into the layers; return a status sentence or None."""
        if isinstance(event, SegmentFrame):
            self._apply_frame(event)
        elif isinstance(event, SegmentResult):
            self.partial.pop(event.task, None)
            self.sizes[event.task] = (event.diameter, event.resized_frames)
            problem = self._apply_result(event.task, event.probabilities)
            if problem:
                return problem
            if event.task in self.staged:
                self.staged.discard(event.task)
                self.outputs.remove_stage(self.tasks[event.task].layer_name, RUNNING)
        elif isinstance(event, ObjectsResult):
            self._apply_objects(event.task, event.labels, event.table)
        elif isinstance(event, LazyFrameDone):
            outputs = self.lazy_outputs[event.task]
            self._show_lazy(event.task)
            return (
                f"'{self.tasks[event.task].layer_name}': {outputs.n_done} of "
                f"{event.n_frames} frame(s) written to {outputs.probabilities_path.parent}"
            )
        return None

    def _apply_frame(self, event: SegmentFrame) -> None:
        """Show a finished frame of a stack while the others are computed.

        The outputs are redrawn at most every :data:`FRAME_REFRESH_S` seconds (and at the
        first frame), so that many small frames do not keep the GUI thread busy.
        """
        task, layer = self.tasks[event.task], self.layers[event.task]
        if task.frame is not None or layer not in self._viewer.layers:
            return
        shape = grey_shape(layer)
        if len(shape) < 3 or tuple(event.probabilities.shape) != shape[-2:]:
            return
        threshold = float(self._threshold())
        partial = self.partial.get(event.task)
        first = partial is None
        if first:
            partial = _PartialStack(
                np.zeros(shape, np.float32),
                np.zeros(shape[:-2], bool),
                np.zeros(shape, np.uint8),
                threshold,
            )
            self.partial[event.task] = partial
        flat = (-1, *shape[-2:])
        partial.probabilities.reshape(flat)[event.frame] = event.probabilities
        partial.done.reshape(-1)[event.frame] = True
        if partial.threshold != threshold:  # the slider moved during the run
            partial.mask[...] = threshold_mask(partial.probabilities, threshold)
            partial.threshold = threshold
        else:
            partial.mask.reshape(flat)[event.frame] = threshold_mask(
                event.probabilities, threshold
            )
        staged = event.task in self.staged
        if not staged:  # a re-run leaves the earlier result (and its cache) alone
            self._remember(layer, partial.probabilities, partial.done)
        now = time.perf_counter()
        if first or now - self._last_frame_shown >= FRAME_REFRESH_S:
            self._last_frame_shown = now
            self._show_partial(layer, partial, RUNNING if staged else None)

    def _show_partial(self, layer: Any, partial: _PartialStack, stage: str | None) -> None:
        self.outputs.put_probabilities_and_nuclei(
            layer,
            partial.probabilities,
            partial.mask,
            {"model": self.model_name},
            stage,
            suffix=f" ({stage})" if stage else "",
        )

    def _apply_result(self, number: int, probabilities: np.ndarray) -> str | None:
        """Put a whole image's (or one frame's) probabilities and mask into the layers;
        return a sentence when the image changed shape meanwhile."""
        task, layer = self.tasks[number], self.layers[number]
        if layer not in self._viewer.layers:
            return None
        shape = grey_shape(layer)
        expected = shape if task.frame is None else shape[-2:]
        if tuple(probabilities.shape) != expected:
            return f"'{layer.name}' changed shape while it was segmented; run again."
        if task.frame is None:
            full = np.asarray(probabilities, np.float32)
            done = np.ones(shape[:-2], bool)
        else:
            cached = self._registry.cached_probabilities(self.model_name, layer)
            if cached is not None and cached.probabilities.shape == shape:
                full, done = cached.probabilities, cached.frames_done
            else:
                full, done = np.zeros(shape, np.float32), np.zeros(shape[:-2], bool)
            full[task.frame] = probabilities
            done[task.frame] = True
        self._remember(layer, full, done)
        self.outputs.put_probabilities_and_nuclei(
            layer, full, threshold_mask(full, self._threshold()), {"model": self.model_name}
        )
        return None

    def _remember(self, layer: Any, full: np.ndarray, done: np.ndarray) -> None:
        """Cache the run's in-memory probabilities of ``layer`` for the threshold slider."""
        self._registry.store_probabilities(self.model_name, layer, CachedProbabilities(full, done))
        self._followers.follow_cached(layer, self.model_name)

    def _apply_objects(self, number: int, labels: np.ndarray, table: dict[str, Any]) -> None:
        """Show nuclei labels as ``<image> instances`` with the measurements as features."""
        task, layer = self.tasks[number], self.layers[number]
        if layer not in self._viewer.layers:
            return
        shape = grey_shape(layer)
        if task.frame is not None:
            labels, table = self.outputs.merge_frame(layer.name, shape, task.frame, labels, table)
        if tuple(labels.shape) != shape:
            return
        target = put_output_layer(
            self._viewer,
            "instances",
            layer.name,
            labels,
            "labels",
            name=f"{layer.name} instances",
            extra={"model": self.model_name, "threshold": self.threshold_at_start},
            opacity=0.6,
        )
        target.features = to_layer_features(table)
        self._instances_shown(target)

    def _show_lazy(self, number: int) -> None:
        """Add or refresh the dask-backed outputs of a lazy image (finished frames only).

        A re-run of an image that has outputs shows its frames in ``RUNNING`` layers until
        every frame is written; then they replace the earlier outputs.
        """
        layer, outputs = self.layers[number], self.lazy_outputs[number]
        if layer not in self._viewer.layers or outputs.n_done == 0:
            return
        extra = {"model": self.model_name, "store": str(outputs.probabilities_path)}
        complete = outputs.n_done == outputs.frames_done.size
        stage = RUNNING if number in self.staged and not complete else None
        suffix = " (running)" if stage else ""
        if stage is None:
            self._followers.follow_lazy(layer, outputs)
            if number in self.staged:
                self.staged.discard(number)
                self.outputs.remove_stage(layer.name, RUNNING)
        self.outputs.put_probabilities_and_nuclei(
            layer,
            outputs.view("probabilities"),
            outputs.view("mask", self._threshold()),
            extra,
            stage,
            suffix,
        )
        if outputs.labels is not None:
            target = put_output_layer(
                self._viewer,
                f"{stage} instances" if stage else "instances",
                layer.name,
                outputs.view("labels"),
                "labels",
                name=f"{layer.name} instances{suffix}",
                extra={**extra, "store": str(outputs.labels_path)},
                opacity=0.6,
            )
            target.metadata[OWNER_KEY]["threshold"] = self.threshold_at_start
            target.features = to_layer_features(outputs.table())
            if stage is None:
                self._instances_shown(target)

    # ------------------------------------------------------------------------- end
    def z_note(self) -> str:
        """A sentence when a stack segmented frame by frame looks like one volume's slices."""
        for task in self.tasks:
            if task.frame is not None or task.stack_axis != "frames" or task.image.ndim != 3:
                continue
            nuclei = find_owned_layer(self._viewer, "nuclei", task.layer_name)
            if nuclei is not None and looks_like_z_slices(np.asarray(nuclei.data)):
                return (
                    f" '{task.layer_name}' looks like a z-stack (its nuclei overlap from frame "
                    "to frame): set stack axis to z for 3-D nuclei."
                )
        return ""

    def size_note(self) -> str:
        """A sentence on the nuclei's size ('' when none was measured)."""
        sizes = [(d, r) for d, r in self.sizes.values() if d is not None]
        if not sizes:
            return ""
        low, high = min(d for d, _ in sizes), max(d for d, _ in sizes)
        size = f"{low:.0f} px" if round(low) == round(high) else f"{low:.0f}-{high:.0f} px"
        resized = sum(r > 0 for _, r in sizes)
        note = f" Nucleus diameter {size}"
        if resized:
            note += (
                f"; {resized} image(s) resized so that their nuclei reach the size the model "
                "learned"
            )
        return note + "."

    def finish(self) -> str | None:
        """Show what a finished (or stopped) run left; return a sentence for what stopped."""
        message = None
        for number, outputs in self.lazy_outputs.items():
            self._show_lazy(number)
            total = outputs.frames_done.size
            if outputs.n_done < total:
                source = self.tasks[number].layer_name
                where = f"in {outputs.probabilities_path.parent}"
                if number in self.staged:
                    kept = self.outputs.keep_unfinished(source, outputs.n_done, total)
                    shown = f"'{kept}' and " if kept else ""
                    where = f"in {shown}{outputs.probabilities_path.parent}; the "
                    where += f"earlier result of '{source}' is unchanged"
                message = (
                    f"Segmentation stopped: {outputs.n_done} of {total} frame(s) of "
                    f"'{source}' finished, kept {where}."
                )
        for number, partial in self.partial.items():
            layer = self.layers[number]
            if layer not in self._viewer.layers:
                continue
            done, total = int(partial.done.sum()), partial.done.size
            if number in self.staged:
                # A stopped re-run: the earlier complete result stays where it is.
                self._show_partial(layer, partial, RUNNING)
                kept = self.outputs.keep_unfinished(layer.name, done, total)
                message = (
                    f"Segmentation stopped: the earlier result of '{layer.name}' is "
                    f"unchanged; the {done} of {total} frame(s) this run finished are in "
                    f"'{kept}'."
                )
            else:
                # Stopped mid-stack: draw the frames finished since the last redraw.
                self._show_partial(layer, partial, None)
                message = (
                    f"Segmentation stopped: {done} of {total} frame(s) of "
                    f"'{layer.name}' finished and kept."
                )
        self.partial = {}
        self.staged = set()
        return message
