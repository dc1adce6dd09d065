"""The *Train* dock widget: train or fine-tune a U-Net on an image and its labels."""

from __future__ import annotations

import math
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    ProgressBar,
    PushButton,
    create_widget,
)
from qtpy.QtCore import QTimer

from napari_unet_nuclei._napari._background_job import PROGRESS_STEPS, BackgroundJobMixin
from napari_unet_nuclei._napari._dock_layout import (
    ScrollingDock,
    WrappingLabel,
    compact_combo_boxes,
    scroll_body,
)
from napari_unet_nuclei._napari._layers import (
    TrainingFrames,
    grey_layer_data,
    grey_shape,
    labelled_frames,
)
from napari_unet_nuclei._napari._notify import format_seconds, report_info, report_warning
from napari_unet_nuclei._napari.annotated_regions import annotated_regions
from napari_unet_nuclei._napari.loss_plot import LossPlot
from napari_unet_nuclei._napari.model_files import ModelFiles
from napari_unet_nuclei._napari.model_picker import ModelPicker
from napari_unet_nuclei._napari.project_controller import ProjectController
from napari_unet_nuclei._napari.round_job import (
    DataGathered,
    JobNotice,
    RoundRecorded,
    ScoringHeldOut,
    round_job,
)
from napari_unet_nuclei._napari.training_layers import layers_to_training_data
from napari_unet_nuclei._napari.training_settings import TrainingSettings
from napari_unet_nuclei.events import (
    EpochEnd,
    TrainingFinished,
    TrainingStarted,
    TrainingStep,
)
from napari_unet_nuclei.notices import Notice
from napari_unet_nuclei.train.label_coverage import (
    PartialLabelsWarning,
    frames_to_check,
    label_coverage,
    partial_labels_note,
)

__all__ = ["TrainWidget"]

PLUGIN_NAME = "napari-unet-nuclei"
#: After Cancel, the worker is asked to quit if it has not ended within this time.
QUIT_GRACE_MS = 10_000


class TrainWidget(ScrollingDock, BackgroundJobMixin, Container):
    """Train a new U-Net, or fine-tune a session model, on painted labels.

    Frame ``i`` of the labels layer goes with frame ``i`` of the image layer; only frames
    with at least one label are used unless *empty frames are background* is ticked. The
    data is copied when Start is pressed, so painting can go on during training. Training
    runs in a ``thread_worker`` (``self.worker``) over the engine's event generator; the
    model lands in the viewer's :class:`ModelRegistry` and in Segment's and Evaluate's
    pickers.

    An optional Shapes layer of *annotated regions* (rectangles, polygons, ellipses)
    marks where every nucleus has been annotated: training then samples patches there
    and computes the loss only inside them. The *Project folder and ledger* section keeps
    a training set on disk (*Add to training set*), trains on it together with the open
    layers, records every run as a round of the ledger (data, settings, scores on the
    project's held-out images, model file), rolls back to a round's exact model, compares
    rounds' precision-recall curves in the Evaluate plot, and warns when a round scores
    worse on the held-out set than the best earlier one.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Injected by napari.
    """

    job_title = "Training"
    cancel_message = "Cancelling after the current step..."

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        viewer = self._attach_to_viewer(viewer)
        self.body = scroll_body(self)
        self.last_result: TrainingFinished | None = None
        self._discard = False
        self._run_layers: tuple[Any, ...] = ()
        self._phase = "idle"
        # The sentence that ended the last training run (the ledger's steps add to it).
        self._finished_text = ""

        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.annotated_layer = create_widget(
            value=None,
            annotation=napari.layers.Shapes | None,
            label="annotated regions",
            options={
                "tooltip": "rectangles/polygons where every nucleus is annotated; "
                "none: the whole image"
            },
        )
        self.empty_frames_background = CheckBox(text="empty frames are background", value=False)
        self.frames_info = WrappingLabel("")
        self.start_from = ModelPicker(
            self.registry,
            new_entry=True,
            follow_latest=False,
            label="start from",
            tooltip="'new network' trains from scratch; a model fine-tunes a copy of it",
        )
        self.settings = TrainingSettings()
        self.start_button = PushButton(text="Start training")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=PROGRESS_STEPS, label="progress")
        self.status = WrappingLabel("Pick an image and its labels, then Start.")
        self.model_files = ModelFiles(self.registry, self.start_from, self.status)
        self.body.extend(
            [
                self.image_layer,
                self.labels_layer,
                self.annotated_layer,
                self.empty_frames_background,
                self.frames_info,
                self.start_from,
                Container(
                    widgets=[self.start_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
                self.model_files,
            ]
        )
        # The settings form has its own label column: not inside a labelled row of the body.
        self.body.native.layout().insertWidget(6, self.settings.native)
        self.projects = ProjectController(
            viewer,
            self.registry,
            self.status,
            lambda: (self.image_layer.value, self.labels_layer.value, self.annotated_layer.value),
            self.model_files.pick,
            self._report_failure,
        )
        self.body.native.layout().addWidget(self.projects.section)
        self.loss_plot = LossPlot(viewer)
        self._steps_per_epoch = 1  # from TrainingStarted: places each step in its epoch
        self.body.native.layout().addWidget(self.loss_plot)

        self.image_layer.changed.connect(self._on_data_choice_changed)
        self.labels_layer.changed.connect(self._on_data_choice_changed)
        self.annotated_layer.changed.connect(self._on_data_choice_changed)
        self.empty_frames_background.changed.connect(self._on_data_choice_changed)
        self.start_from.changed.connect(self._on_start_from_changed)
        self.start_button.changed.connect(self._on_start_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        compact_combo_boxes(self.body.native)

    # --------------------------------------------------------------------- state
    def _enable_controls(self, running: bool) -> None:
        self.start_button.enabled = not running
        self.cancel_button.enabled = running
        self.model_files.set_training(running)

    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer choices and the line saying which frames will be used."""
        super().reset_choices(*args)
        self._on_data_choice_changed()

    # ------------------------------------------------------------------- settings
    def _on_start_from_changed(self, _value: Any = None) -> None:
        self.settings.set_architecture_enabled(self.start_from.model_name is None)

    def _on_data_choice_changed(self, _value: Any = None) -> None:
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            self.frames_info.value = ""
            return
        if grey_shape(image) != tuple(labels.data.shape):
            self.frames_info.value = "labels and image shapes differ"
            return
        shapes = self.annotated_layer.value
        if shapes is not None:
            regions = annotated_regions(shapes, grey_shape(image), image)
            used = int(sum(mask.any() for mask in regions.masks))
            self.frames_info.value = (
                f"{used} of {len(regions.masks)} frame(s) with annotated regions "
                f"({int(regions.masks.sum()):,} px)"
            )
            return
        flags = labelled_frames(labels.data)
        used = len(flags) if self.empty_frames_background.value else int(flags.sum())
        self.frames_info.value = f"{used} of {len(flags)} frame(s) used"
        self._check_coverage(image, labels, flags)

    def _check_coverage(self, image: Any, labels: Any, flags: np.ndarray) -> None:
        """Say, as soon as the layers are chosen, when the labels miss many nuclei: the
        check (0.4 s a megapixel frame) runs off the GUI thread on a copy of the labelled
        frames ``label_coverage`` looks at (``frames_to_check``)."""
        from napari.qt.threading import thread_worker

        grey, _ = grey_layer_data(image)
        leading = tuple(grey.shape[:-2])
        indices = [np.unravel_index(n, leading) if leading else () for n in frames_to_check(flags)]
        frames = [np.array(grey[index]) for index in indices]
        masks = [np.array(labels.data[index]) for index in indices]
        choice = (image, labels)

        def show(note: str | None) -> None:
            if not note or self._closed or self._busy:
                return
            try:
                current = (self.image_layer.value, self.labels_layer.value)
            except RuntimeError:  # the dock was deleted while the check ran
                return
            if choice == current:
                self.frames_info.value = note

        worker = thread_worker(
            lambda: partial_labels_note(label_coverage(frames, masks)), start_thread=False
        )()
        worker.returned.connect(show)
        worker.start()

    # ------------------------------------------------------------------ training
    def start(self) -> Any:
        """Start training with the current settings; return the worker (None on error)."""
        if self._busy:
            return None
        image_layer, labels_layer = self.image_layer.value, self.labels_layer.value
        shapes_layer = self.annotated_layer.value
        project = self.projects.project
        use_project = self.projects.use_project
        try:
            if image_layer is None or labels_layer is None:
                if not (use_project and project.names("train")):
                    raise ValueError(
                        "pick an image layer and a labels layer first (or open a project "
                        "folder with training images)"
                    )
                layers, describe, notes = TrainingFrames(), "", []
            else:
                layers, describe, notes = layers_to_training_data(
                    image_layer,
                    labels_layer,
                    shapes_layer,
                    use_empty_frames=self.empty_frames_background.value,
                )
            init_name = self.start_from.model_name
            init_model = self.registry.get(init_name) if init_name is not None else None
            config = self.settings.config()
        except (ValueError, KeyError) as error:
            self._report_failure(error, "Training")
            return None
        self._discard = False
        self._phase = "training"
        self._run_layers = tuple(
            layer for layer in (image_layer, labels_layer, shapes_layer) if layer is not None
        )
        self.last_result = None
        self.projects.start_round()
        self._finished_text = ""
        if describe:
            self.frames_info.value = describe
        self.loss_plot.reset(config.epochs)
        self.progress.value = 0
        what = f"fine-tuning {init_name}" if init_name else "a new network"
        project_part = " and the project set" if use_project else ""
        self.status.value = f"Preparing {what} on {len(layers.images)} frame(s){project_part}..."
        for note in notes:
            report_info(note)
        worker = self._start_worker(
            round_job,
            layers,
            config,
            project_folder=str(project.folder) if project is not None else None,
            use_project=use_project,
            init_model=init_model,
            started_from=init_name,
        )
        return worker

    def _on_notice(self, notice: Notice) -> None:
        """Keep the engine's partial-labels sentence in view (it is also a notification)."""
        if not self._closed and issubclass(notice.category, PartialLabelsWarning):
            self.frames_info.value = notice.message

    def _stop_worker(self, worker: Any) -> None:
        """Cancel stops after the current step, keeping the best weights so far.

        The engine polls the stop flag after every step and then ends with a
        ``TrainingFinished(reason="cancelled")`` holding the best weights. ``worker.quit()``
        is only the fallback after :data:`QUIT_GRACE_MS`: quitting at once could drop that
        final event (the worker stops at its next yield). Only while training: once the
        model exists, the round is recorded and scored.
        """
        QTimer.singleShot(
            QUIT_GRACE_MS,
            lambda: worker.quit() if self._busy and self._phase == "training" else None,
        )

    def _hard_stop(self, message: str) -> None:
        """Stop the worker and drop its result (layer removed, viewer closed)."""
        if self.worker is None or not self._busy or self._discard:
            return
        self._discard = True
        self._stop.set()
        self.worker.quit()
        if not self._closed:
            self.status.value = message
            report_info(message)

    def _on_start_clicked(self, _value: Any = None) -> None:
        self.start()

    def _on_cancel_clicked(self, _value: Any = None) -> None:
        self.cancel()

    def _ignores_events(self) -> bool:
        return self._closed or self._discard

    def _on_event(self, event: Any) -> None:
        if isinstance(event, JobNotice):
            report_info(event.message)
        elif isinstance(event, DataGathered) and event.n_project:
            self.frames_info.value = (
                f"Training on {event.n_layer} frame(s) from the layers and "
                f"{event.n_project} from the project ({event.annotated_pixels:,} annotated px)."
            )
        elif isinstance(event, ScoringHeldOut):
            self.status.value = (
                f"{self._finished_text} Scoring on {event.n_images} held-out image(s)..."
            )
        elif isinstance(event, RoundRecorded):
            self.status.value = f"{self._finished_text} {self.projects.record_round(event)}"
        elif isinstance(event, TrainingStarted):
            self._steps_per_epoch = event.steps_per_epoch
            budget = (
                f"{format_seconds(event.time_budget)} budget"
                if event.time_budget
                else f"{event.total_steps} steps"
            )
            self.status.value = (
                f"Training on {event.n_train_images} image(s), validating on "
                f"{event.n_val_images}, {budget}, {event.device}."
            )
        elif isinstance(event, TrainingStep):
            self._show_progress(event.fraction_done)
            self.loss_plot.add_step(
                event.epoch - 1 + event.step / max(1, self._steps_per_epoch), event.loss
            )
            self.status.value = (
                f"epoch {event.epoch}, step {event.global_step}"
                f"{'/' + str(event.total_steps) if event.total_steps else ''}: loss "
                f"{event.loss:.4f}, ETA {format_seconds(event.eta)}"
            )
        elif isinstance(event, EpochEnd):
            by_nuclei = event.object_f1 == event.object_f1  # not NaN
            self.loss_plot.add_epoch(
                event.epoch,
                event.train_loss,
                event.object_f1 if by_nuclei else event.val_f1,
                of="nuclei" if by_nuclei else "pixels",
            )
        elif isinstance(event, TrainingFinished):
            self._on_training_finished(event)

    def _on_training_finished(self, event: TrainingFinished) -> None:
        self.last_result = event
        self._phase = "recording"
        if not event.history:
            self.status.value = "Training stopped before the first epoch ended: no model kept."
            if event.message:
                report_warning(event.message)
            return
        cancelled = event.reason == "cancelled"
        # A cancelled run is listed but never put in front of the model the user works with.
        name = self.registry.add(
            event.model, self.settings.model_name.value.strip() or None, follow=not cancelled
        )
        self.model_files.current_name = name
        summary = event.model.summary
        best = summary.get("best_val_object_f1", math.nan)
        best_text = (
            f", validation object F1 {best:.3f} ({summary.get('best_val_merges')} merged)"
            if isinstance(best, float) and best == best
            else ""
        )
        if summary.get("kept_start_weights"):
            best_text += ", no epoch beat the start model: its weights kept"
        if event.model.summary.get("threshold_calibration"):
            best_text += f", threshold {event.model.threshold:.2f}"
        reasons = {
            "completed": "done",
            "time_budget": "time budget reached",
            "cancelled": "cancelled (best weights kept)",
            "diverged": "stopped: loss diverged",
        }
        self.progress.value = (
            PROGRESS_STEPS if event.reason != "cancelled" else self.progress.value
        )
        self._finished_text = (
            f"{name}: {reasons.get(event.reason, event.reason)} after {event.epochs} epoch(s), "
            f"{format_seconds(event.elapsed)}{best_text}."
        )
        self.status.value = self._finished_text
        if event.message:
            (report_warning if event.reason == "diverged" else report_info)(event.message)

    def _on_errored(self, error: Exception | str) -> None:
        if not self._discard:
            super()._on_errored(error)

    def _on_finished(self) -> None:
        self._run_layers = ()
        self._phase = "idle"
        self._set_running(False)
        if not self._closed:
            self.loss_plot.finish()

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy and any(event.value is layer for layer in self._run_layers):
            self._hard_stop(f"Training stopped: the layer '{event.value.name}' was removed.")

    def _on_destroyed(self, *_args: Any) -> None:
        self._closed = True
        self._hard_stop("Training stopped: the window was closed.")
