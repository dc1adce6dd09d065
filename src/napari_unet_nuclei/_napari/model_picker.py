"""A combo box of the session's models, with "load file..." and optionally "new network"."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox

from napari_unet_nuclei._napari._notify import error_sentence, report_error
from napari_unet_nuclei._napari.model_registry import ModelRegistry

__all__ = [
    "LOAD_FILE",
    "NEW_NETWORK",
    "NO_MODEL",
    "SAVE_FILTERS",
    "ModelPicker",
    "ask_model_path",
    "export_format_for",
]


class _Choice(str):
    """A special entry of the picker (a distinct object, so no model name can clash)."""


LOAD_FILE = _Choice("load file...")
NEW_NETWORK = _Choice("new network")
NO_MODEL = _Choice("(no model yet: train or load one)")


#: Save dialog filters and the file ending each one gives (see ``export_format_for``).
SAVE_FILTERS = {
    "napari-unet-nuclei model (*.pt)": ".pt",
    "bioimage.io model package (*.zip)": ".zip",
    "ONNX (*.onnx)": ".onnx",
    "TorchScript (*.torchscript)": ".torchscript",
}


def export_format_for(path: str | Path) -> str | None:
    """Export format a file ending asks for: None for our own ``.pt`` model file."""
    name = str(path).lower()
    for ending, format_name in (
        (".zip", "bioimageio"),
        (".onnx", "onnx"),
        (".torchscript", "torchscript"),
    ):
        if name.endswith(ending):
            return format_name
    return None


def ask_model_path(parent: Any = None, save: bool = False, suggested: str = "") -> str:
    """Ask for a ``.pt`` path with a Qt file dialog; ``""`` when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    if save:
        path, chosen = QFileDialog.getSaveFileName(
            parent, "Save model as", suggested, ";;".join(SAVE_FILTERS)
        )
        suffix = SAVE_FILTERS.get(chosen, ".pt")
        if path and not path.endswith(suffix):
            path += suffix
        return path
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", suggested, "Model (*.pt)")
    return path


class ModelPicker(ComboBox):
    """Pick a model of the :class:`ModelRegistry` by name.

    Parameters
    ----------
    registry : ModelRegistry
        The viewer's registry; the choices follow it.
    new_entry : bool
        Offer "new network" first (Train's "start from"); the built-in models follow it,
        then the session's models. Without it the built-in models come first and the
        first one is selected.
    follow_latest : bool
        Select a model as soon as it is added (Segment, Evaluate).
    ask_path : callable, optional
        Returns a path to load when "load file..." is chosen (a file dialog by default).
    **kwargs
        Passed to ``magicgui.widgets.ComboBox`` (``label``, ``tooltip``...).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        new_entry: bool = False,
        follow_latest: bool = True,
        ask_path: Callable[[], str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._registry = registry
        self._new_entry = new_entry
        self._follow_latest = follow_latest
        self._ask_path = ask_path
        self._known: list[str] = registry.names()
        self._previous: Any = None
        super().__init__(choices=self._choices, **kwargs)
        self._previous = self.value
        registry.models_changed.connect(self._on_models_changed)
        # The registry outlives a closed dock: stop following it with the combo box.
        self.native.destroyed.connect(self._stop_following)
        self.changed.connect(self._on_pick)

    def _stop_following(self, *_args: Any) -> None:
        self._registry.models_changed.disconnect(self._on_models_changed)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        entries: list[tuple[str, Any]] = [(NEW_NETWORK, NEW_NETWORK)] if self._new_entry else []
        entries += [
            (f"{name} (built-in)" if self._registry.is_builtin(name) else name, name)
            for name in self._registry.choices()
        ]
        if not entries:
            entries = [(NO_MODEL, NO_MODEL)]
        return [*entries, (LOAD_FILE, LOAD_FILE)]

    @property
    def model_name(self) -> str | None:
        """The selected model's name, or None for "new network" / nothing."""
        value = self.value
        return None if value is None or isinstance(value, _Choice) else str(value)

    def load(self, path: str | Path) -> str | None:
        """Load a model file into the registry and select it; None (and a notification) on failure."""
        try:
            name = self._registry.load_file(path)
        except (OSError, ValueError, KeyError) as error:
            report_error(error_sentence(error, f"Loading the model {Path(path).name}"))
            return None
        self.value = name
        return name

    def _on_models_changed(self) -> None:
        names = self._registry.names()
        added = [
            name for name in names if name not in self._known and self._registry.followed(name)
        ]
        self._known = names
        previous = self.value
        # magicgui appends new choices after the old ones; rebuilding the list keeps the
        # order of _choices (built-in, the session's models, then "load file...").
        with self.changed.blocked():
            self.native.clear()
            self.reset_choices()
            if previous in [value for _, value in self._choices()]:
                self.value = previous
        if self.value != previous:  # the previous model is gone: say what is selected now
            self.changed.emit(self.value)
        if added and (
            self._follow_latest or (isinstance(previous, _Choice) and previous is LOAD_FILE)
        ):
            self.value = added[-1]
        elif previous is not None and previous in [value for _, value in self._choices()]:
            self.value = previous

    def _on_pick(self, value: Any) -> None:
        if value is not LOAD_FILE:
            self._previous = value
            return
        path = self._ask_path() if self._ask_path is not None else ask_model_path(self.native)
        if not path or self.load(path) is None:
            previous = self._previous
            valid = [v for _, v in self._choices()]
            self.value = previous if previous in valid and previous is not LOAD_FILE else valid[0]
