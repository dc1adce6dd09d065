"""The *Segment* dock widget: apply a model to a frame, a stack or every image layer.

Besides the mask, it can split touching nuclei into one label each (seeded watershed) with
a table of measurements as the labels layer's ``features`` (saved as CSV), and it segments
lazy (dask, zarr, multiscale) image layers frame by frame into a zarr store the plugin
owns, shown as dask-backed layers that fill in as frames finish.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from ._background_job import PROGRESS_STEPS, BackgroundJobMixin
from ._dock_layout import ScrollingDock, compact_combo_boxes, scroll_body, wrapping_label
from ._jobs import SegmentFrame, SegmentProgress, SegmentResult, SegmentTask
from ._layers import (
    OWNER_KEY,
    current_frame_index,
    find_owned_layer,
    grey_layer_data,
    grey_shape,
    put_output_layer,
    read_only_view,
)
from ._notify import report_info
from ._object_jobs import (
    LazyFrameDone,
    LazyOutputs,
    ObjectsResult,
    is_lazy,
    segment_objects_job,
)
from .model_picker import ModelPicker
from .model_registry import CachedProbabilities
from .segment_outputs import RUNNING, OutputLayers, features_table

__all__ = ["ALL_FRAMES", "ALL_LAYERS", "CURRENT_FRAME", "SegmentWidget", "full_resolution"]

CURRENT_FRAME = "current frame"
ALL_FRAMES = "all frames"
ALL_LAYERS = "every image layer"
#: Finished frames of a stack are drawn at most this often (seconds) while it runs.
FRAME_REFRESH_S = 0.5


@dataclass
class _PartialStack:
    """Outputs of a stack being segmented: the frames finished so far."""

    probabilities: np.ndarray
    done: np.ndarray  # bool per frame
    mask: np.ndarray
    threshold: float  # of ``mask``


def _mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    from ..inference import threshold_mask

    return threshold_mask(probabilities, threshold)


def full_resolution(layer: Any) -> Any:
    """The layer's data at full resolution (level 0 of a multiscale image)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def ask_csv_path(parent: Any = None, suggested: str = "") -> str:
    """Ask where to save a CSV file with a Qt dialog; ``""`` when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(
        parent, "Save measurements as", suggested, "CSV table (*.csv)"
    )
    if path and not path.lower().endswith(".csv"):
        path += ".csv"
    return path


class SegmentWidget(ScrollingDock, BackgroundJobMixin, Container):
    """Segment nuclei with a session model; outputs ``<image> probabilities`` and ``<image> nuclei``.

    The outputs are replaced when the widget runs again; layers the plugin did not create
    are never modified (a new name is used if a user layer has the output's name). The
    threshold slider re-thresholds the cached probabilities at once, without running the
    network; it is shared with Evaluate's precision-recall plot through the registry.

    With *instances* ticked, ``<image> instances`` holds one label per nucleus (touching
    nuclei separated by a seeded watershed) and its ``features`` hold one row of
    measurements per nucleus; *Save measurements as CSV...* writes them. Lazy image layers
    (dask or zarr data, multiscale pyramids at full resolution) are segmented frame by frame
    into OME-Zarr folders (in the chosen *results folder*, else a temporary folder): the
    outputs are dask-backed layers that show each frame as soon as it is finished.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.
    """

    job_title = "Segmentation"
    cancel_message = "Segmentation cancelled."

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        viewer = self._attach_to_viewer(viewer)
        self.body = scroll_body(self)
        self.outputs = OutputLayers(viewer)
        self.runs_started = 0
        self._tasks: list[SegmentTask] = []
        self._task_layers: list[Any] = []
        self._run_model: str | None = None
        self._outputs: dict[int, tuple[weakref.ref, str]] = {}
        self._lazy: dict[int, tuple[weakref.ref, LazyOutputs, str]] = {}
        # Stack tasks of the running job: probabilities and finished frames so far.
        self._partial: dict[int, _PartialStack] = {}
        # Tasks whose image already has outputs: this run's go to "running" layers until done.
        self._staged: set[int] = set()
        self._last_frame_shown = 0.0
        self._run_lazy: dict[int, LazyOutputs] = {}
        self._run_threshold = self.registry.threshold
        self._last_instances: weakref.ref | None = None

        self.model = ModelPicker(self.registry, label="model")
        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.scope = ComboBox(
            choices=[CURRENT_FRAME, ALL_FRAMES, ALL_LAYERS], value=ALL_FRAMES, label="scope"
        )
        self.tile_size = SpinBox(value=512, min=64, max=8192, step=64, label="tile size")
        self.instances = CheckBox(
            text="Instances (separate touching nuclei)",
            value=False,
            tooltip="One label per nucleus with measurements per nucleus, by the instance "
            "rule chosen for the model on its validation images (its centre or boundary map, "
            "or a seeded watershed of the mask)",
        )
        self.stack_axis = ComboBox(
            choices=[("frames (time, separate images)", "frames"), ("z (one volume)", "z")],
            value="frames",
            label="stack axis",
            tooltip="Instances of a 3-D stack: 'frames' labels every frame on its own; 'z' "
            "links nuclei across slices into 3-D objects (measured in voxels)",
        )
        self.min_size = SpinBox(
            value=30,
            min=0,
            max=1_000_000,
            label="smallest nucleus",
            tooltip="Instances: nuclei (and holes) smaller than this many pixels are dropped",
        )
        self.results_folder = FileEdit(
            mode="d",
            nullable=True,
            label="results folder",
            tooltip="Lazy (dask/zarr) images are written here as OME-Zarr frame by frame; "
            "empty: a temporary folder",
        )
        self.save_csv_button = PushButton(text="Save measurements as CSV...", enabled=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = wrapping_label("Pick a model and an image, then Segment.")
        self.threshold = FloatSlider(
            value=self.registry.threshold,
            min=0.01,
            max=0.99,
            step=0.01,
            label="threshold",
            tooltip="Probability above which a pixel is nucleus; updates the masks at once",
        )
        self.body.extend(
            [
                self.model,
                self.image_layer,
                self.scope,
                self.tile_size,
                self.instances,
                self.min_size,
                self.stack_axis,
                self.results_folder,
                Container(
                    widgets=[self.run_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
                self.threshold,
                self.save_csv_button,
            ]
        )
        self.run_button.changed.connect(self._on_run_clicked)
        self.save_csv_button.changed.connect(self._on_save_csv_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self.threshold.changed.connect(self._on_threshold_changed)
        self.registry.threshold_changed.connect(self._on_shared_threshold_changed)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        compact_combo_boxes(self.body.native)

    def _enable_controls(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    # ---------------------------------------------------------------------- tasks
    def _target_layers(self) -> list[Any]:
        if self.scope.value == ALL_LAYERS:
            return [
                layer
                for layer in self._viewer.layers
                if isinstance(layer, napari.layers.Image) and OWNER_KEY not in layer.metadata
            ]
        layer = self.image_layer.value
        return [] if layer is None else [layer]

    def _make_tasks(self, layers: list[Any]) -> tuple[list[SegmentTask], dict[int, Any]]:
        """Tasks for the layers, and the lazy ones (by task number) with their data."""
        tasks, lazy = [], {}
        for layer in layers:
            if getattr(layer, "multiscale", False) and not layer.rgb:
                data, rgb_note = full_resolution(layer), None
            else:
                data, rgb_note = grey_layer_data(layer)
            if rgb_note:
                report_info(rgb_note)
            if self.scope.value == CURRENT_FRAME and data.ndim > 2:
                index = current_frame_index(self._viewer, layer)
                tasks.append(SegmentTask(layer.name, read_only_view(data[index]), index))
            elif is_lazy(data):
                lazy[len(tasks)] = data
                tasks.append(SegmentTask(layer.name, data))
            else:
                # No copy: the engine reads one frame at a time (see benchmarks/speed.py).
                tasks.append(SegmentTask(layer.name, read_only_view(data)))
        return tasks, lazy

    def _results_folder(self) -> Any:
        value = self.results_folder.value
        return None if value is None or str(value) in ("", ".") else value

    def _instance_config(self, model: Any) -> Any:
        from dataclasses import replace

        from ..segmentation import default_instance_config

        config = default_instance_config(model, threshold=self.threshold.value)
        return replace(config, min_size=self.min_size.value)

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
            tasks, lazy = self._make_tasks(layers)
            instances = self._instance_config(model) if self.instances.value else None
            folder = self._results_folder()
            outputs = {
                number: LazyOutputs.create(
                    tasks[number].layer_name,
                    tuple(data.shape),
                    folder,
                    instances=instances is not None,
                    attributes={"model": name, "source": tasks[number].layer_name},
                )
                for number, data in lazy.items()
            }
        except (ValueError, KeyError, OSError) as error:
            self._report_failure(error, "Segmentation")
            return None
        self._tasks, self._task_layers, self._run_model = tasks, layers, name
        self._staged = {
            number
            for number, task in enumerate(tasks)
            if task.frame is None
            and len(task.image.shape) > 2
            and find_owned_layer(self._viewer, "nuclei", task.layer_name) is not None
        }
        self._partial, self._last_frame_shown = {}, 0.0
        self._run_lazy, self._run_threshold = outputs, self.threshold.value
        self.progress.value = 0
        self.status.value = f"Segmenting {len(tasks)} image(s) with {name}..."
        self.runs_started += 1
        return self._start_worker(
            segment_objects_job,
            model,
            tasks,
            tile_size=self.tile_size.value,
            instances=instances,
            stack_axis=self.stack_axis.value,
            lazy_outputs=outputs,
        )

    def _stop_worker(self, worker: Any) -> None:
        """Outputs of the images already done are kept. A lazy run ends by itself within a
        batch of tiles, after erasing the frame it was writing: quitting could leave that
        frame half written."""
        if not self._run_lazy:
            worker.quit()

    def _on_run_clicked(self, _value: Any = None) -> None:
        self.run()

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    # -------------------------------------------------------------------- results
    def _ignores_events(self) -> bool:
        return self._closed or self.stop_requested  # after Cancel: see _on_finished

    def _on_event(self, event: Any) -> None:
        if isinstance(event, SegmentProgress):
            self._show_progress(event.fraction)
            layer = self._tasks[event.task].layer_name
            frames = f", frame {event.frame + 1}/{event.n_frames}" if event.n_frames > 1 else ""
            self.status.value = (
                f"Segmenting '{layer}' ({event.task + 1}/{event.n_tasks}){frames}..."
            )
        elif isinstance(event, SegmentFrame):
            self._apply_frame(self._tasks[event.task], self._task_layers[event.task], event)
        elif isinstance(event, SegmentResult):
            self._partial.pop(event.task, None)
            self._apply_result(
                self._tasks[event.task], self._task_layers[event.task], event.probabilities
            )
            if event.task in self._staged:
                self._staged.discard(event.task)
                self.outputs.remove_stage(self._tasks[event.task].layer_name, RUNNING)
        elif isinstance(event, ObjectsResult):
            self._apply_objects(
                self._tasks[event.task], self._task_layers[event.task], event.labels, event.table
            )
        elif isinstance(event, LazyFrameDone):
            outputs = self._run_lazy[event.task]
            self._show_lazy(self._task_layers[event.task], outputs, event.task)
            self.status.value = (
                f"'{self._tasks[event.task].layer_name}': {outputs.n_done} of "
                f"{event.n_frames} frame(s) written to {outputs.probabilities_path.parent}"
            )

    def _apply_frame(self, task: SegmentTask, layer: Any, event: SegmentFrame) -> None:
        """Show a finished frame of a stack while the others are computed.

        The outputs are redrawn at most every :data:`FRAME_REFRESH_S` seconds (and at the
        first frame), so that many small frames do not keep the GUI thread busy.
        """
        if task.frame is not None or layer not in self._viewer.layers:
            return
        shape = grey_shape(layer)
        if len(shape) < 3 or tuple(event.probabilities.shape) != shape[-2:]:
            return
        threshold = float(self.threshold.value)
        partial = self._partial.get(event.task)
        first = partial is None
        if first:
            partial = _PartialStack(
                np.zeros(shape, np.float32),
                np.zeros(shape[:-2], bool),
                np.zeros(shape, np.uint8),
                threshold,
            )
            self._partial[event.task] = partial
        flat = (-1, *shape[-2:])
        partial.probabilities.reshape(flat)[event.frame] = event.probabilities
        partial.done.reshape(-1)[event.frame] = True
        if partial.threshold != threshold:  # the slider moved during the run
            partial.mask[...] = _mask(partial.probabilities, threshold)
            partial.threshold = threshold
        else:
            partial.mask.reshape(flat)[event.frame] = _mask(event.probabilities, threshold)
        staged = event.task in self._staged
        if not staged:  # a re-run leaves the earlier result (and its cache) alone
            self._remember_probabilities(layer, partial.probabilities, partial.done)
        now = time.perf_counter()
        if first or now - self._last_frame_shown >= FRAME_REFRESH_S:
            self._last_frame_shown = now
            self._show_partial(layer, partial, RUNNING if staged else None)

    def _show_partial(
        self, layer: Any, partial: _PartialStack, stage: str | None, suffix: str = ""
    ) -> None:
        self.outputs.put_probabilities_and_nuclei(
            layer, partial.probabilities, partial.mask, {"model": self._run_model}, stage, suffix
        )

    def _apply_result(self, task: SegmentTask, layer: Any, probabilities: np.ndarray) -> None:
        if layer not in self._viewer.layers:
            return
        model_name = self._run_model
        shape = grey_shape(layer)
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
        self._remember_probabilities(layer, full, done)
        self.outputs.put_probabilities_and_nuclei(
            layer, full, _mask(full, self.threshold.value), {"model": model_name}
        )

    def _remember_probabilities(self, layer: Any, full: np.ndarray, done: np.ndarray) -> None:
        """Cache the run's in-memory probabilities of ``layer`` for the threshold slider."""
        model_name = self._run_model
        self.registry.store_probabilities(model_name, layer, CachedProbabilities(full, done))
        self._outputs[id(layer)] = (weakref.ref(layer), model_name)
        self._lazy.pop(id(layer), None)

    def _apply_objects(
        self, task: SegmentTask, layer: Any, labels: np.ndarray, table: dict[str, np.ndarray]
    ) -> None:
        """Show nuclei labels as ``<image> instances`` with the measurements as features."""
        from ..measurements import to_layer_features

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
            extra={"model": self._run_model, "threshold": self._run_threshold},
            opacity=0.6,
        )
        target.features = to_layer_features(table)
        self._last_instances = weakref.ref(target)
        self.save_csv_button.enabled = True

    def _show_lazy(self, layer: Any, outputs: LazyOutputs, task: int) -> None:
        """Add or refresh the dask-backed outputs of a lazy image (finished frames only).

        A re-run of an image that has outputs shows its frames in ``RUNNING`` layers until
        every frame is written; then they replace the earlier outputs.
        """
        from ..measurements import to_layer_features

        if layer not in self._viewer.layers or outputs.n_done == 0:
            return
        model_name = self._run_model
        extra = {"model": model_name, "store": str(outputs.probabilities_path)}
        complete = outputs.n_done == outputs.frames_done.size
        stage = RUNNING if task in self._staged and not complete else None
        suffix = " (running)" if stage else ""
        if stage is None:
            self._lazy[id(layer)] = (weakref.ref(layer), outputs, model_name)
            self._outputs.pop(id(layer), None)
            if task in self._staged:
                self._staged.discard(task)
                self.outputs.remove_stage(layer.name, RUNNING)
        self.outputs.put_probabilities_and_nuclei(
            layer,
            outputs.view("probabilities"),
            outputs.view("mask", self.threshold.value),
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
            target.metadata[OWNER_KEY]["threshold"] = self._run_threshold
            target.features = to_layer_features(outputs.table())
            if stage is None:
                self._last_instances = weakref.ref(target)
                self.save_csv_button.enabled = True

    def _on_returned(self, n_done: int) -> None:
        if self._closed:
            return
        if n_done == len(self._tasks) and not self.stop_requested:
            self.progress.value = PROGRESS_STEPS
            self.status.value = (
                f"Segmented {n_done} image(s) with {self._run_model}; move the threshold to "
                "adjust the masks."
            )

    def _on_finished(self) -> None:
        self._set_running(False)
        if not self._closed:
            for number, outputs in self._run_lazy.items():
                self._show_lazy(self._task_layers[number], outputs, number)
                total = outputs.frames_done.size
                if outputs.n_done < total:
                    source = self._tasks[number].layer_name
                    where = f"in {outputs.probabilities_path.parent}"
                    if number in self._staged:
                        kept = self.outputs.keep_unfinished(source, outputs.n_done, total)
                        shown = f"'{kept}' and " if kept else ""
                        where = f"in {shown}{outputs.probabilities_path.parent}; the "
                        where += f"earlier result of '{source}' is unchanged"
                    self.status.value = (
                        f"Segmentation stopped: {outputs.n_done} of {total} frame(s) of "
                        f"'{source}' finished, kept {where}."
                    )
            for number, partial in self._partial.items():
                layer = self._task_layers[number]
                if layer not in self._viewer.layers:
                    continue
                done, total = int(partial.done.sum()), partial.done.size
                if number in self._staged:
                    # A stopped re-run: the earlier complete result stays where it is.
                    self._show_partial(layer, partial, RUNNING)
                    kept = self.outputs.keep_unfinished(layer.name, done, total)
                    self.status.value = (
                        f"Segmentation stopped: the earlier result of '{layer.name}' is "
                        f"unchanged; the {done} of {total} frame(s) this run finished are in "
                        f"'{kept}'."
                    )
                else:
                    # Stopped mid-stack: draw the frames finished since the last redraw.
                    self._show_partial(layer, partial, None)
                    self.status.value = (
                        f"Segmentation stopped: {done} of {total} frame(s) of "
                        f"'{layer.name}' finished and kept."
                    )
        self._partial = {}
        self._staged = set()
        self._task_layers = []

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy and any(event.value is layer for layer in self._task_layers):
            message = f"Segmentation stopped: the layer '{event.value.name}' was removed."
            self.cancel(message)
            report_info(message)

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
        for key, (ref, outputs, _model) in list(self._lazy.items()):
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

    def _on_threshold_changed(self, value: float) -> None:
        self.registry.set_threshold(value)
        self.apply_threshold(value)
        instances = self._last_instances() if self._last_instances is not None else None
        if instances is not None and instances in self._viewer.layers and not self._busy:
            made_at = instances.metadata[OWNER_KEY].get("threshold")
            if made_at is not None and abs(made_at - value) > 1e-6:
                self.status.value = (
                    f"Masks follow the threshold ({value:.2f}); the instances were split at "
                    f"{made_at:.2f}: press Segment to split them again."
                )

    # --------------------------------------------------------------- measurements
    def measured_layer(self) -> Any:
        """The instances layer whose measurements *Save measurements as CSV...* writes.

        The one of the selected image if it exists, else the latest one; None if none.
        """
        image = self.image_layer.value
        if image is not None:
            layer = find_owned_layer(self._viewer, "instances", image.name)
            if layer is not None:
                return layer
        layer = self._last_instances() if self._last_instances is not None else None
        return layer if layer is not None and layer in self._viewer.layers else None

    def save_measurements_to(self, path: str | Any) -> Any:
        """Write the measurements of :meth:`measured_layer` as CSV (atomically).

        Returns the path written, or None (with a notification) when there is nothing to
        save or writing failed.
        """
        from pathlib import Path

        from ..measurements import write_measurements_csv

        layer = self.measured_layer()
        try:
            if layer is None:
                raise ValueError("no measurements yet: tick 'Instances' and Segment first")
            written = write_measurements_csv(features_table(layer), Path(path))
        except (OSError, ValueError) as error:
            self._report_failure(error, "Saving the measurements")
            return None
        self.status.value = f"Saved {len(layer.features)} nuclei of '{layer.name}' to {written}."
        return written

    def _on_save_csv_clicked(self, _value: Any = None) -> None:
        layer = self.measured_layer()
        source = (layer.metadata.get(OWNER_KEY) or {}).get("source", "nuclei") if layer else ""
        path = ask_csv_path(self.native, f"{source}_nuclei.csv")
        if path:
            self.save_measurements_to(path)

    def _on_shared_threshold_changed(self, value: float) -> None:
        if self._closed:
            return
        if abs(self.threshold.value - value) > 1e-6:
            self.threshold.value = value
