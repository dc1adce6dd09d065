"""The *Save model...* and *Load model...* row of the Train dock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import Container, PushButton

from napari_unet_nuclei._napari._notify import error_sentence, report_error
from napari_unet_nuclei._napari.model_picker import ModelPicker, ask_model_path, save_session_model

__all__ = ["ModelFiles"]


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
        self.save_button = PushButton(text="Save model...")
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
        self.save_button.changed.connect(self._on_save_clicked)
        self.load_button.changed.connect(self._on_load_clicked)

    def save_to(self, path: str | Path) -> Path | None:
        """Save the current model to ``path``; None on failure (reported).

        The file ending picks the format (see :func:`.model_picker.save_session_model`).
        """
        try:
            if self.current_name is None:
                raise ValueError("there is no model yet; train or load one first")
            written = save_session_model(self.registry, self.current_name, path)
        except (OSError, ValueError, KeyError, ImportError) as error:
            report_error(error_sentence(error, "Saving the model"))
            return None
        self.status.value = f"Saved {self.current_name} to {written}."
        return written

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

    def _on_save_clicked(self, _value: Any = None) -> None:
        suggested = f"{self.current_name or 'unet'}.pt"
        path = ask_model_path(self.native, save=True, suggested=suggested)
        if path:
            self.save_to(path)

    def _on_load_clicked(self, _value: Any = None) -> None:
        path = ask_model_path(self.native)
        if path:
            self.load_from(path)
