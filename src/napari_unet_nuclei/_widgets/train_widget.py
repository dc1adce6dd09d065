"""The *Train* dock widget: train or fine-tune a U-Net on an image and its labels."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
from magicgui.widgets import (
    CheckBox,
    Container,
    Label,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.qt.threading import thread_worker
from qtpy.QtCore import QTimer

from ._jobs import JobFailed, training_job
from ._layers import labelled_frames, training_data
from ._notify import error_sentence, report_error, report_info, report_warning
from ._warmup import warm_up_engine
from .loss_plot import LossPlot
from .model_picker import ModelPicker, ask_model_path
from .model_registry import registry_for, unwrap_viewer
from .training_settings import TrainingSettings

if TYPE_CHECKING:
    from ..events import TrainingFinished

__all__ = ["TrainWidget", "format_seconds"]

PROGRESS_STEPS = 1000
#: After Cancel, the worker is asked to quit if it has not ended within this time.
QUIT_GRACE_MS = 10_000


def format_seconds(seconds: float | None) -> str:
    """``"2 min 05 s"``, ``"42 s"`` or ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class TrainWidget(Container):
    """Train a new U-Net, or fine-tune a session model, on painted labels.

    Frame ``i`` of the labels layer goes with frame ``i`` of the image layer; only frames
    with at least one label are used unless *empty frames are background* is ticked. The
    data is copied when Start is pressed, so painting can go on during training. Training
    runs in a ``thread_worker`` (``self.worker``) over the engine's event generator; the
    model lands in the viewer's :class:`ModelRegistry` and in Segment's and Evaluate's
    pickers.

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
        self.last_result: TrainingFinished | None = None
        self.current_model_name: str | None = None
        self._stop = threading.Event()
        self._busy = False
        self._discard = False
        self._closed = False
        self._run_layers: tuple[Any, ...] = ()

        self.image_layer = create_widget(annotation=napari.layers.Image, label="image")
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.empty_frames_background = CheckBox(text="empty frames are background", value=False)
        self.frames_info = Label(value="")
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
        self.status = Label(value="Pick an image and its labels, then Start.")
        self.save_button = PushButton(text="Save model...")
        self.load_button = PushButton(text="Load model...")
        self.extend(
            [
                self.image_layer,
                self.labels_layer,
                self.empty_frames_background,
                self.frames_info,
                self.start_from,
                self.settings,
                Container(
                    widgets=[self.start_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
                self.progress,
                self.status,
                Container(
                    widgets=[self.save_button, self.load_button],
                    layout="horizontal",
                    labels=False,
                    label="",
                ),
            ]
        )
        self.loss_plot = LossPlot(viewer)
        self.native.layout().addWidget(self.loss_plot)

        self.image_layer.changed.connect(self._on_data_choice_changed)
        self.labels_layer.changed.connect(self._on_data_choice_changed)
        self.empty_frames_background.changed.connect(self._on_data_choice_changed)
        self.start_from.changed.connect(self._on_start_from_changed)
        self.start_button.changed.connect(self._on_start_clicked)
        self.cancel_button.changed.connect(self._on_cancel_clicked)
        self.save_button.changed.connect(self._on_save_clicked)
        self.load_button.changed.connect(self._on_load_clicked)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        self.native.destroyed.connect(self._on_destroyed)

    # --------------------------------------------------------------------- state
    @property
    def running(self) -> bool:
        """Whether a training run is in progress."""
        return self._busy

    def _set_running(self, running: bool) -> None:
        self._busy = running
        if self._closed:
            return
        self.start_button.enabled = not running
        self.cancel_button.enabled = running
        self.load_button.enabled = not running

    # ------------------------------------------------------------------- settings
    def _on_start_from_changed(self, _value: Any = None) -> None:
        self.settings.set_architecture_enabled(self.start_from.model_name is None)

    def _on_data_choice_changed(self, _value: Any = None) -> None:
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            self.frames_info.value = ""
            return
        if image.data.shape != labels.data.shape:
            self.frames_info.value = "labels and image shapes differ"
            return
        flags = labelled_frames(labels.data)
        used = len(flags) if self.empty_frames_background.value else int(flags.sum())
        self.frames_info.value = f"{used} of {len(flags)} frame(s) used"

    # ------------------------------------------------------------------ training
    def start(self) -> Any:
        """Start training with the current settings; return the worker (None on error)."""
        if self._busy:
            return None
        image_layer, labels_layer = self.image_layer.value, self.labels_layer.value
        try:
            if image_layer is None or labels_layer is None:
                raise ValueError("pick an image layer and a labels layer first")
            if getattr(image_layer, "rgb", False):
                raise ValueError(f"'{image_layer.name}' is an RGB image; give a grey image")
            data = training_data(
                image_layer.data,
                labels_layer.data,
                use_empty_frames=self.empty_frames_background.value,
                name=image_layer.name,
            )
            init_name = self.start_from.model_name
            init_model = self.registry.get(init_name) if init_name is not None else None
            config = self.settings.config()
        except (ValueError, KeyError) as error:
            message = error_sentence(error, "Training")
            self.status.value = message
            report_error(message)
            return None
        self._stop = threading.Event()
        self._discard = False
        self._run_layers = (image_layer, labels_layer)
        self.last_result = None
        self.frames_info.value = data.describe()
        self.loss_plot.reset(config.epochs)
        self.progress.value = 0
        what = f"fine-tuning {init_name}" if init_name else "a new network"
        self.status.value = f"Preparing {what} on {data.n_used} frame(s)..."
        worker = thread_worker(training_job, start_thread=False, ignore_errors=True)(
            data.images,
            data.labels,
            config,
            names=data.names,
            init_model=init_model,
            stop=self._stop,
        )
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop after the current step, keeping the best weights so far.

        The engine polls the stop flag after every step and then ends with a
        ``TrainingFinished(reason="cancelled")`` holding the best weights. ``worker.quit()``
        is only the fallback after :data:`QUIT_GRACE_MS`: quitting at once could drop that
        final event (the worker stops at its next yield).
        """
        if self.worker is not None and self._busy:
            self._stop.set()
            worker = self.worker
            QTimer.singleShot(QUIT_GRACE_MS, lambda: worker.quit() if self._busy else None)
            if not self._closed:
                self.status.value = "Cancelling after the current step..."

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

    def _on_yielded(self, event: Any) -> None:
        if self._closed or self._discard:
            return
        kind = type(event).__name__
        if isinstance(event, JobFailed):
            self._on_errored(event.message)
        elif kind == "TrainingStarted":
            budget = (
                f"{format_seconds(event.time_budget)} budget"
                if event.time_budget
                else f"{event.total_steps} steps"
            )
            self.status.value = (
                f"Training on {event.n_train_images} image(s), validating on "
                f"{event.n_val_images}, {budget}, {event.device}."
            )
        elif kind == "TrainingStep":
            self.progress.value = int(round(PROGRESS_STEPS * min(1.0, event.fraction_done)))
            self.status.value = (
                f"epoch {event.epoch}, step {event.global_step}"
                f"{'/' + str(event.total_steps) if event.total_steps else ''}: loss "
                f"{event.loss:.4f}, ETA {format_seconds(event.eta)}"
            )
        elif kind == "EpochEnd":
            self.loss_plot.add_epoch(event.epoch, event.train_loss, event.val_f1)
        elif kind == "TrainingFinished":
            self._on_training_finished(event)

    def _on_training_finished(self, event: TrainingFinished) -> None:
        self.last_result = event
        if not event.history:
            self.status.value = "Training stopped before the first epoch ended: no model kept."
            return
        name = self.registry.add(event.model, self.settings.model_name.value.strip() or None)
        self.current_model_name = name
        best = event.model.summary.get("best_val_f1", math.nan)
        best_text = (
            f", best validation F1 {best:.3f}" if isinstance(best, float) and best == best else ""
        )
        reasons = {
            "completed": "done",
            "time_budget": "time budget reached",
            "cancelled": "cancelled (best weights kept)",
            "diverged": "stopped: loss diverged",
        }
        self.progress.value = (
            PROGRESS_STEPS if event.reason != "cancelled" else self.progress.value
        )
        self.status.value = (
            f"{name}: {reasons.get(event.reason, event.reason)} after {event.epochs} epoch(s), "
            f"{format_seconds(event.elapsed)}{best_text}."
        )
        if event.message:
            (report_warning if event.reason == "diverged" else report_info)(event.message)

    def _on_errored(self, error: Exception | str) -> None:
        if self._closed or self._discard:
            return
        message = error_sentence(error, "Training")
        self.status.value = message
        report_error(message)

    def _on_finished(self) -> None:
        self._run_layers = ()
        self._set_running(False)
        if not self._closed:
            self.loss_plot.finish()

    def _on_layer_removed(self, event: Any) -> None:
        if self._busy and any(event.value is layer for layer in self._run_layers):
            self._hard_stop(f"Training stopped: the layer '{event.value.name}' was removed.")

    def _on_destroyed(self, *_args: Any) -> None:
        self._closed = True
        self._hard_stop("Training stopped: the window was closed.")

    # ------------------------------------------------------------------ model files
    def save_model_to(self, path: str | Path) -> Path | None:
        """Save the last trained or loaded model to ``path``; None on failure.

        The file ending picks the format: ``.pt`` (this plugin's model file), ``.zip``
        (bioimage.io model package), ``.onnx`` or ``.torchscript``.
        """
        from ..export import export_model
        from ..model_io import save_model
        from .model_picker import export_format_for

        try:
            if self.current_model_name is None:
                raise ValueError("there is no model yet; train or load one first")
            model = self.registry.get(self.current_model_name)
            format_name = export_format_for(path)
            if format_name is None:
                written = save_model(model, path)
            else:
                written = export_model(model, path, format_name)
        except (OSError, ValueError, KeyError, ImportError) as error:
            report_error(error_sentence(error, "Saving the model"))
            return None
        self.status.value = f"Saved {self.current_model_name} to {written}."
        return written

    def load_model_from(self, path: str | Path) -> str | None:
        """Load a ``.pt`` model, register it and pick it as *start from*; its name or None."""
        name = self.start_from.load(path)
        if name is not None:
            self.current_model_name = name
            self.status.value = f"Loaded {name} from {Path(path).name}."
        return name

    def _on_save_clicked(self, _value: Any = None) -> None:
        suggested = f"{self.current_model_name or 'unet'}.pt"
        path = ask_model_path(self.native, save=True, suggested=suggested)
        if path:
            self.save_model_to(path)

    def _on_load_clicked(self, _value: Any = None) -> None:
        path = ask_model_path(self.native)
        if path:
            self.load_model_from(path)
