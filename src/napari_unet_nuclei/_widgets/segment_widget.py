"""The *Segment* dock widget: apply a model to a frame, a stack or every image layer."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.qt.threading import thread_worker

from ._jobs import JobFailed, SegmentProgress, SegmentResult, SegmentTask, segmentation_job
from ._layers import (
    OWNER_KEY,
    current_frame_index,
    find_owned_layer,
    put_output_layer,
    worker_copy,
)
from ._notify import error_sentence, report_error, report_info
from ._warmup import warm_up_engine
from .model_picker import ModelPicker
from .model_registry import CachedProbabilities, registry_for, unwrap_viewer

__all__ = ["ALL_FRAMES", "ALL_LAYERS", "CURRENT_FRAME", "SegmentWidget"]

CURRENT_FRAME = "current frame"
ALL_FRAMES = "all frames"
ALL_LAYERS = "every image layer"
PROGRESS_STEPS = 1000


def _mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    from ..inference import threshold_mask

    return threshold_mask(probabilities, threshold)


class SegmentWidget(Container):
    """Segment nuclei with a session model; outputs ``<image> probabilities`` and ``<image> nuclei``.

    The outputs are replaced when the widget runs again; layers the plugin did not create
    are never modified (a new name is used if a user layer has the output's name). The
    threshold slider re-thresholds the cached probabilities at once, without running the
    network; it is shared with Evaluate's precision-recall plot through the registry.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        warm_up_engine()
        viewer = unwrap_viewer(viewer)
        self._viewer = viewer
        self.registry = registry_for(viewer)
        self.worker: Any = None
        self.runs_started = 0
        self._stop = threading.Event()
        self._busy = False
        self._closed = False
        self._tasks: list[SegmentTask] = []
        self._task_layers: list[Any] = []
        self._run_model: str | None = None
        self._outputs: dict[int, tuple[weakref.ref, str]] = {}

        self.model = ModelPicker(self.registry, label="model")
        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.scope = ComboBox(
            choices=[CURRENT_FRAME, ALL_FRAMES, ALL_LAYERS], value=ALL_FRAMES, label="scope"
        )
        self.tile_size = SpinBox(value=512, min=64, max=8192, step=64, label="tile size")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = Label(value="Pick a model and an image, then Segment.")
        self.threshold = FloatSlider(
            value=self.registry.threshold,
            min=0.01,
            max=0.99,
            step=0.01,
            label="threshold",
            tooltip="Probability above which a pixel is nucleus; updates the masks at once",
        )
        self.extend(
            [
                self.model,
                self.image_layer,
                self.scope,
                self.tile_size,
                Container(
                    widgets=[self.run_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
                self.threshold,
            ]
        )
        self.run_button.changed.connect(self._on_run_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self.threshold.changed.connect(self._on_threshold_changed)
        self.registry.threshold_changed.connect(self._on_shared_threshold_changed)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        self.native.destroyed.connect(self._on_destroyed)

    @property
    def running(self) -> bool:
        """Whether a segmentation is in progress."""
        return self._busy

    def _set_running(self, running: bool) -> None:
        self._busy = running
        if not self._closed:
            self.run_button.enabled = not running
            self.cancel_button.enabled = running

    # ---------------------------------------------------------------------- tasks
    def _target_layers(self) -> list[Any]:
        if self.scope.value == ALL_LAYERS:
            return [
                layer
                for layer in self._viewer.layers
                if isinstance(layer, napari.layers.Image)
                and OWNER_KEY not in layer.metadata
                and not layer.rgb
            ]
        layer = self.image_layer.value
        return [] if layer is None else [layer]

    def _make_tasks(self, layers: list[Any]) -> list[SegmentTask]:
        tasks = []
        for layer in layers:
            if layer.rgb:
                raise ValueError(f"'{layer.name}' is an RGB image; give a grey image")
            if self.scope.value == CURRENT_FRAME and layer.data.ndim > 2:
                index = current_frame_index(self._viewer, layer)
                tasks.append(SegmentTask(layer.name, np.array(layer.data[index]), index))
            else:
                tasks.append(SegmentTask(layer.name, worker_copy(layer.data)))
        return tasks

    def run(self) -> Any:
        """Start segmenting with the current settings; return the worker (None on error)."""
        if self._busy:
            return None
        try:
            name = self.model.model_name
            if name is None:
                raise ValueError("pick a model first (train one or load a .pt file)")
            model = self.registry.get(name)
            layers = self._target_layers()
            if not layers:
                raise ValueError("there is no image layer to segment")
            tasks = self._make_tasks(layers)
        except (ValueError, KeyError) as error:
            message = error_sentence(error, "Segmentation")
            self.status.value = message
            report_error(message)
            return None
        self._stop = threading.Event()
        self._tasks, self._task_layers, self._run_model = tasks, layers, name
        self.progress.value = 0
        self.status.value = f"Segmenting {len(tasks)} image(s) with {name}..."
        worker = thread_worker(segmentation_job, start_thread=False, ignore_errors=True)(
            model, tasks, tile_size=self.tile_size.value, stop=self._stop
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.runs_started += 1
        self._set_running(True)
        worker.start()
        return worker

    def cancel(self, message: str = "Segmentation cancelled.") -> None:
        """Stop between tiles; outputs of the images already done are kept."""
        if self.worker is not None and self._busy:
            self._stop.set()
            self.worker.quit()
            if not self._closed:
                self.status.value = message

    def _on_run_clicked(self, _value: Any = None) -> None:
        self.run()

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    # -------------------------------------------------------------------- results
    def _on_yielded(self, event: Any) -> None:
        if self._closed or self._stop.is_set():
            return
        if isinstance(event, JobFailed):
            self._on_errored(event.message)
        elif isinstance(event, SegmentProgress):
            self.progress.value = int(round(PROGRESS_STEPS * min(1.0, event.fraction)))
            layer = self._tasks[event.task].layer_name
            frames = f", frame {event.frame + 1}/{event.n_frames}" if event.n_frames > 1 else ""
            self.status.value = (
                f"Segmenting '{layer}' ({event.task + 1}/{event.n_tasks}){frames}..."
            )
        elif isinstance(event, SegmentResult):
            self._apply_result(
                self._tasks[event.task], self._task_layers[event.task], event.probabilities
            )

    def _apply_result(self, task: SegmentTask, layer: Any, probabilities: np.ndarray) -> None:
        if layer not in self._viewer.layers:
            return
        model_name = self._run_model
        shape = tuple(layer.data.shape)
        expected = shape if task.frame is None else shape[-2:]
        if tuple(probabilities.shape) != expected:
            self.status.value = f"'{layer.name}' changed shape while it was segmented; run again."
            return
        if task.frame is None:
            full = np.asarray(probabilities, np.float32)
            done = np.ones(shape[:-2], bool)
        else:
            cached = self.registry.cached_probabilities(model_name, layer)
            if cached is not None and cached.probabilities.shape == shape:
                full, done = cached.probabilities, cached.frames_done
            else:
                full, done = np.zeros(shape, np.float32), np.zeros(shape[:-2], bool)
            full[task.frame] = probabilities
            done[task.frame] = True
        self.registry.store_probabilities(model_name, layer, CachedProbabilities(full, done))
        self._outputs[id(layer)] = (weakref.ref(layer), model_name)
        extra = {"model": model_name}
        put_output_layer(
            self._viewer,
            "probabilities",
            layer.name,
            full,
            "image",
            name=f"{layer.name} probabilities",
            extra=extra,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            visible=False,
        )
        put_output_layer(
            self._viewer,
            "nuclei",
            layer.name,
            _mask(full, self.threshold.value),
            "labels",
            name=f"{layer.name} nuclei",
            extra=extra,
            opacity=0.5,
        )

    def _on_returned(self, n_done: int) -> None:
        if self._closed:
            return
        if n_done == len(self._tasks) and not self._stop.is_set():
            self.progress.value = PROGRESS_STEPS
            self.status.value = (
                f"Segmented {n_done} image(s) with {self._run_model}; move the threshold to "
                "adjust the masks."
            )

    def _on_errored(self, error: Exception | str) -> None:
        if self._closed:
            return
        message = error_sentence(error, "Segmentation")
        self.status.value = message
        report_error(message)

    def _on_finished(self) -> None:
        self._set_running(False)
        self._task_layers = []

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy and any(event.value is layer for layer in self._task_layers):
            message = f"Segmentation stopped: the layer '{event.value.name}' was removed."
            self.cancel(message)
            report_info(message)

    def _on_destroyed(self, *_args: Any) -> None:
        self._closed = True
        self.cancel()

    # ------------------------------------------------------------------ threshold
    def apply_threshold(self, threshold: float | None = None) -> int:
        """Re-threshold every output of this widget from the cached probabilities.

        The network does not run. Returns the number of masks updated.
        """
        threshold = self.threshold.value if threshold is None else float(threshold)
        updated = 0
        for key, (ref, model_name) in list(self._outputs.items()):
            layer = ref()
            if layer is None or layer not in self._viewer.layers:
                del self._outputs[key]
                continue
            cached = self.registry.cached_probabilities(model_name, layer)
            target = find_owned_layer(self._viewer, "nuclei", layer.name)
            if cached is None or target is None:
                continue
            target.data = _mask(cached.probabilities, threshold)
            updated += 1
        return updated

    def _on_threshold_changed(self, value: float) -> None:
        self.registry.set_threshold(value)
        self.apply_threshold(value)

    def _on_shared_threshold_changed(self, value: float) -> None:
        if self._closed:
            return
        if abs(self.threshold.value - value) > 1e-6:
            self.threshold.value = value
