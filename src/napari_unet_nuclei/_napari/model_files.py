"""The *Save model...* and *Load model...* row of the Train dock.

Saving runs in a background thread: a bioimage.io package takes seconds (TorchScript, ONNX,
test tensors, the zip), an ONNX file a second the first time. The formats whose export
imports ``onnx`` are written by a helper process
(:func:`~napari_unet_nuclei.workflows.export.export_in_helper_process`): that import holds
Python's lock for about a second, a freeze of the window even from a thread. While a save
runs the Save button reads *Cancel saving*; a cancelled save leaves the chosen file as it
was (the model is written to a temporary file beside it, which replaces it only when the
save completes).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, PushButton

from napari_unet_nuclei._napari._notify import (
    error_sentence,
    relay_warnings,
    report_error,
    report_info,
)
from napari_unet_nuclei._napari.model_picker import ModelPicker, ask_model_path, export_format_for

__all__ = ["ModelFiles", "SaveCancelled", "write_model_file"]

SAVE_TEXT = "Save model..."
CANCEL_TEXT = "Cancel saving"


class SaveCancelled(Exception):
    """Raised inside the save when Cancel was pressed: the target is left as it was."""


def write_model_file(model: Any, path: str | Path, stop: threading.Event | None = None) -> Path:
    """Write ``model`` to ``path``, the file ending choosing the format; return the path.

    Parameters
    ----------
    model : NucleiModel
        The model to write.
    path : str or path-like
        ``.pt`` (this plugin's model file; also any other ending), ``.zip`` (bioimage.io
        model package), ``.onnx`` or ``.torchscript``.
    stop : threading.Event, optional
        When set before the write completes, :class:`SaveCancelled` is raised and ``path``
        is left as it was.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    from napari_unet_nuclei.io.file_writing import atomic_path
    from napari_unet_nuclei.io.model_io import save_model
    from napari_unet_nuclei.workflows.export import (
        IMPORTS_ONNX,
        ExportCancelled,
        export_in_helper_process,
        export_model,
    )

    target = Path(path)
    format_name = export_format_for(target)
    # The temporary file keeps the ending: the exporters choose by it as well.
    with atomic_path(target, suffix=target.suffix or ".tmp") as temporary:
        if format_name is None:
            save_model(model, temporary)
        elif format_name in IMPORTS_ONNX and "onnx" not in sys.modules:
            try:
                export_in_helper_process(model, temporary, format_name, stop=stop)
            except ExportCancelled as error:
                raise SaveCancelled(f"Saving {target.name} was cancelled") from error
            except OSError:  # no Python executable to start (a frozen application)
                export_model(model, temporary, format_name)
        else:
            export_model(model, temporary, format_name)
        if stop is not None and stop.is_set():
            raise SaveCancelled(f"Saving {target.name} was cancelled")
    return target


class ModelFiles(Container):
    """Save the current session model to a file, or load one into the session.

    Parameters
    ----------
    registry : ModelRegistry
        The viewer's session models.
    start_from : ModelPicker
        Train's *start from* picker: a loaded model becomes its choice.
    status : magicgui widget
        The dock's status line (``.value`` is set to one sentence).
    """

    def __init__(self, registry: Any, start_from: ModelPicker, status: Any) -> None:
        self.save_button = PushButton(text=SAVE_TEXT)
        self.load_button = PushButton(text="Load model...")
        super().__init__(
            widgets=[self.save_button, self.load_button],
            layout="horizontal",
            labels=False,
            label="",
        )
        self.registry = registry
        self.start_from = start_from
        self.status = status
        #: The last trained or loaded model (what *Save model...* writes).
        self.current_name: str | None = None
        #: The file the last completed save wrote (None before one, or after a failure).
        self.last_saved: Path | None = None
        self.worker: Any = None
        self._stop = threading.Event()
        self._training = False
        self._closed = False
        self.save_button.changed.connect(self._on_save_clicked)
        self.load_button.changed.connect(self._on_load_clicked)
        self.native.destroyed.connect(self._on_destroyed)

    @property
    def saving(self) -> bool:
        """Whether a save is running."""
        return self.worker is not None

    def set_training(self, running: bool) -> None:
        """Load is off while the dock trains (the loaded model would become *start from*)."""
        self._training = running
        self._update_buttons()

    def save_to(self, path: str | Path) -> Any:
        """Start saving the current model to ``path`` in the background.

        The file ending picks the format (see :func:`write_model_file`). When the save
        ends, the status line says where it went and :attr:`last_saved` is the path.

        Returns
        -------
        worker or None
            The save's thread worker; None when there is nothing to save or a save is
            already running (said in the status line and a notification).
        """
        from napari.qt.threading import thread_worker

        if self.saving:
            return None
        if self.current_name is None:
            self._fail("there is no model yet; train or load one first")
            return None
        try:
            model = self.registry.get(self.current_name)
        except KeyError as error:
            self._fail(error)
            return None
        name, target = self.current_name, Path(path)
        self.last_saved = None
        self._stop = threading.Event()
        worker = thread_worker(write_model_file, start_thread=False, ignore_errors=True)(
            model, target, self._stop
        )
        worker.returned.connect(lambda written: self._on_saved(name, written))
        worker.errored.connect(self._on_save_failed)
        relay_warnings(worker)
        worker.finished.connect(self._on_save_finished)
        self.worker = worker
        self.status.value = f"Saving {name} to {target.name}..."
        self._update_buttons()
        worker.start()
        return worker

    def cancel_save(self) -> None:
        """Stop the running save: the file it was writing is left as it was."""
        if self.saving:
            self._stop.set()
            self.status.value = "Cancelling the save: the file will be left as it was..."

    def pick(self, name: str) -> None:
        """Make the session model ``name`` the current one and *start from*'s choice."""
        self.current_name = name
        self.start_from.reset_choices()
        self.start_from.value = name

    def load_from(self, path: str | Path) -> str | None:
        """Load a ``.pt`` model, register it and pick it as *start from*; its name or None."""
        name = self.start_from.load(path)
        if name is not None:
            self.current_name = name
            self.status.value = f"Loaded {name} from {Path(path).name}."
        return name

    # ------------------------------------------------------------------ callbacks
    def _fail(self, error: BaseException | str) -> None:
        message = error_sentence(error, "Saving the model")
        report_error(message)
        if not self._closed:
            self.status.value = message

    def _on_saved(self, name: str, written: Path) -> None:
        self.last_saved = written
        if not self._closed:
            self.status.value = f"Saved {name} to {written}."

    def _on_save_failed(self, error: BaseException) -> None:
        if isinstance(error, SaveCancelled):
            report_info(f"{error}: the file was left as it was.")
            if not self._closed:
                self.status.value = "Saving cancelled: the file was left as it was."
            return
        self._fail(error)

    def _on_save_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    def _update_buttons(self) -> None:
        if self._closed:
            return
        self.save_button.text = CANCEL_TEXT if self.saving else SAVE_TEXT
        self.load_button.enabled = not (self._training or self.saving)

    def _on_destroyed(self, *_args: Any) -> None:
        # A save the user asked for completes (the file is whole); only its messages stop.
        self._closed = True

    def _on_save_clicked(self, _value: Any = None) -> None:
        if self.saving:
            self.cancel_save()
            return
        suggested = f"{self.current_name or 'unet'}.pt"
        path = ask_model_path(self.native, save=True, suggested=suggested)
        if path:
            self.save_to(path)

    def _on_load_clicked(self, _value: Any = None) -> None:
        path = ask_model_path(self.native)
        if path:
            self.load_from(path)
