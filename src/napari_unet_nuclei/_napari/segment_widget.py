"""The *Segment* dock widget: apply a model to a frame, a stack or every image layer.

Besides the mask, it can split touching nuclei into one label each (seeded watershed) with
a table of measurements as the labels layer's ``features`` (saved as CSV), and it segments
lazy (dask, zarr, multiscale) image layers frame by frame into a zarr store the plugin
owns, shown as dask-backed layers that fill in as frames finish.
"""

from __future__ import annotations

import weakref
from typing import Any

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from napari_unet_nuclei._napari._background_job import PROGRESS_STEPS, BackgroundJobMixin
from napari_unet_nuclei._napari._dock_layout import (
    ScrollingDock,
    WrappingLabel,
    compact_combo_boxes,
    scroll_body,
)
from napari_unet_nuclei._napari._jobs import SegmentProgress, SegmentTask, layer_stack_axis
from napari_unet_nuclei._napari._layers import (
    OWNER_KEY,
    current_frame_index,
    find_owned_layer,
    grey_layer_data,
    layer_pixel_size,
    read_only_view,
)
from napari_unet_nuclei._napari._notify import report_info
from napari_unet_nuclei._napari._object_jobs import is_lazy, segment_objects_job
from napari_unet_nuclei._napari.lazy_outputs import LazyOutputs
from napari_unet_nuclei._napari.model_picker import ModelPicker
from napari_unet_nuclei._napari.segment_outputs import OutputLayers, ask_csv_path, features_table
from napari_unet_nuclei._napari.segment_run import SegmentRun, ThresholdFollowers
from napari_unet_nuclei.io.pixel_size import spatial_pixel_size
from napari_unet_nuclei.prediction.measurements import write_measurements_csv
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE

__all__ = ["ALL_FRAMES", "ALL_LAYERS", "CURRENT_FRAME", "SegmentWidget", "full_resolution"]

CURRENT_FRAME = "current frame"
ALL_FRAMES = "all frames"
ALL_LAYERS = "every image layer"


def full_resolution(layer: Any) -> Any:
    """The layer's data at full resolution (level 0 of a multiscale image)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


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
        self.followers = ThresholdFollowers(viewer, self.registry)
        self.runs_started = 0
        self.last_run: SegmentRun | None = None
        self._last_instances: weakref.ref | None = None

        self.model = ModelPicker(self.registry, label="model")
        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.scope = ComboBox(
            choices=[CURRENT_FRAME, ALL_FRAMES, ALL_LAYERS], value=ALL_FRAMES, label="scope"
        )
        self.tile_size = SpinBox(
            value=DEFAULT_TILE_SIZE, min=64, max=8192, step=64, label="tile size"
        )
        self.instances = CheckBox(
            text="Instances (separate touching nuclei)",
            value=False,
            tooltip="One label per nucleus with measurements per nucleus, by the instance "
            "rule chosen for the model on its validation images (its centre or boundary map, "
            "or a seeded watershed of the mask)",
        )
        self.stack_axis = ComboBox(
            choices=[
                ("auto (z for a z-stack layer)", "auto"),
                ("frames (time, separate images)", "frames"),
                ("z (one volume)", "z"),
            ],
            value="auto",
            label="stack axis",
            tooltip="Instances of a 3-D stack: 'frames' labels every frame on its own; 'z' "
            "finds 3-D nuclei in the volume (measured in voxels); 'auto' takes a layer whose "
            "first axis is labelled z, or whose z-scale differs from its pixel size, as a "
            "z-stack",
        )
        self.min_size = SpinBox(
            value=30,
            min=0,
            max=1_000_000,
            label="smallest nucleus",
            tooltip="Instances: nuclei (and holes) smaller than this many pixels are dropped",
        )
        self.diameter = FloatSpinBox(
            value=0,
            min=0,
            max=5000,
            step=1,
            label="nucleus diameter",
            tooltip="The nuclei's diameter in pixels: images are resized so that their nuclei "
            "reach the size the model learned. 'auto' estimates it and resizes only nuclei "
            "over twice that size; the estimate is shown when the run ends",
        )
        self.diameter.native.setSpecialValueText("auto")
        self.diameter.native.setSuffix(" px")
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
        self.status = WrappingLabel("Pick a model and an image, then Segment.")
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
                self.diameter,
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
            size = layer_pixel_size(layer)
            flat = spatial_pixel_size(size, volume=False)
            if self.scope.value == CURRENT_FRAME and data.ndim > 2:
                index = current_frame_index(self._viewer, layer)
                tasks.append(
                    SegmentTask(layer.name, read_only_view(data[index]), index, pixel_size=flat)
                )
            elif is_lazy(data):
                lazy[len(tasks)] = data
                tasks.append(SegmentTask(layer.name, data, pixel_size=flat))
            else:
                # No copy: the engine reads one frame at a time (see benchmarks/speed.py).
                axis = layer_stack_axis(layer, self.stack_axis.value)
                spacing = tuple(float(v) for v in layer.scale[-3:]) if data.ndim == 3 else None
                volume = axis == "z" and data.ndim == 3
                tasks.append(
                    SegmentTask(
                        layer.name,
                        read_only_view(data),
                        stack_axis=axis,
                        spacing=spacing or (1.0, 1.0, 1.0),
                        pixel_size=spatial_pixel_size(size, volume=volume) if volume else flat,
                    )
                )
        return tasks, lazy

    def _results_folder(self) -> Any:
        value = self.results_folder.value
        return None if value is None or str(value) in ("", ".") else value

    def _instance_config(self, model: Any) -> Any:
        from dataclasses import replace

        from napari_unet_nuclei.workflows.segmentation import default_instance_config

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
        self.last_run = SegmentRun(
            self._viewer,
            self.outputs,
            self.registry,
            self.followers,
            name,
            tasks,
            layers,
            outputs,
            threshold=lambda: self.threshold.value,
            instances_shown=self._on_instances_shown,
        )
        self.progress.value = 0
        volumes = [t.layer_name for t in tasks if t.stack_axis == "z" and t.frame is None]
        as_volumes = (
            f" ({', '.join(volumes)}: z-stack, 3-D nuclei)" if volumes and instances else ""
        )
        self.status.value = f"Segmenting {len(tasks)} image(s) with {name}...{as_volumes}"
        self.runs_started += 1
        return self._start_worker(
            segment_objects_job,
            model,
            tasks,
            tile_size=self.tile_size.value,
            instances=instances,
            lazy_outputs=outputs,
            diameter=self.diameter.value or "auto",
        )

    def _stop_worker(self, worker: Any) -> None:
        """Outputs of the images already done are kept. A lazy run ends by itself within a
        batch of tiles, after erasing the frame it was writing: quitting could leave that
        frame half written."""
        if self.last_run is None or not self.last_run.lazy_outputs:
            worker.quit()

    def _on_run_clicked(self, _value: Any = None) -> None:
        self.run()

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    # -------------------------------------------------------------------- results
    def _ignores_events(self) -> bool:
        return self._closed or self.stop_requested  # after Cancel: see _on_finished

    def _on_event(self, event: Any) -> None:
        run = self.last_run
        if isinstance(event, SegmentProgress):
            self._show_progress(event.fraction)
            layer = run.tasks[event.task].layer_name
            frames = f", frame {event.frame + 1}/{event.n_frames}" if event.n_frames > 1 else ""
            self.status.value = (
                f"Segmenting '{layer}' ({event.task + 1}/{event.n_tasks}){frames}..."
            )
        else:
            message = run.apply(event)
            if message:
                self.status.value = message

    def _on_instances_shown(self, layer: Any) -> None:
        self._last_instances = weakref.ref(layer)
        self.save_csv_button.enabled = True

    def _on_returned(self, n_done: int) -> None:
        if self._closed:
            return
        if n_done == len(self.last_run.tasks) and not self.stop_requested:
            self.progress.value = PROGRESS_STEPS
            self.status.value = (
                f"Segmented {n_done} image(s) with {self.last_run.model_name}; move the "
                "threshold to adjust the masks."
                + self.last_run.size_note()
                + self.last_run.z_note()
            )

    def _on_finished(self) -> None:
        self._set_running(False)
        if not self._closed and self.last_run is not None:
            message = self.last_run.finish()
            if message:
                self.status.value = message

    def _on_layer_removed(self, event: Any) -> None:
        run_layers = self.last_run.layers if self.last_run is not None else []
        if self._busy and any(event.value is layer for layer in run_layers):
            message = f"Segmentation stopped: the layer '{event.value.name}' was removed."
            self.cancel(message)
            report_info(message)

    # ------------------------------------------------------------------ threshold
    def apply_threshold(self, threshold: float | None = None) -> int:
        """Re-threshold every output of this widget from the cached probabilities.

        The network does not run. Returns the number of masks updated.
        """
        return self.followers.apply(self.threshold.value if threshold is None else threshold)

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
