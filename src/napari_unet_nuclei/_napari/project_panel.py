"""The Train widget's project section: folder, *Add to training set*, stored images,
ledger and rollback.

Only the controls live here; :class:`~napari_unet_nuclei._napari.train_widget.TrainWidget`
does the work (it knows the layers, the session's models and the training job).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, PushButton
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_unet_nuclei._napari._dock_layout import WrappingLabel
from napari_unet_nuclei._napari.ledger_table import LedgerTable

__all__ = [
    "ADD_AS_HELD_OUT",
    "ADD_AS_TRAIN",
    "ProjectPanel",
    "ask_project_folder",
    "confirm_removal",
]

ADD_AS_TRAIN, ADD_AS_HELD_OUT = "training image", "held-out image"


def ask_project_folder(parent: Any = None) -> str:
    """A folder picked in a dialog (an existing project, or an empty folder); '' if none."""
    return QFileDialog.getExistingDirectory(
        parent, "Open or create a training project (pick an empty folder to create one)"
    )


def confirm_removal(name: str, parent: Any = None) -> bool:
    """Ask before deleting a stored image's files from the project."""
    answer = QMessageBox.question(
        parent,
        "Remove from project",
        f"Remove '{name}' and its stored files from the project? The ledger keeps the "
        "rounds already trained with it.",
    )
    return answer == QMessageBox.StandardButton.Yes


class ProjectPanel(Container):
    """Project folder, *Add to training set*, *use project set* and the ledger table."""

    def __init__(self) -> None:
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self.folder_label = WrappingLabel("No project folder: the ledger needs one.")
        self.open_button = PushButton(text="Open / create project folder...")
        self.add_as = ComboBox(
            choices=[ADD_AS_TRAIN, ADD_AS_HELD_OUT],
            value=ADD_AS_TRAIN,
            label="add as",
            tooltip="held-out images are never trained on; every round is scored on them",
        )
        self.crop = CheckBox(text="store only the annotated regions", value=False)
        self.add_button = PushButton(text="Add to training set")
        self.use_project = CheckBox(text="train on the project set too", value=True)
        self.summary = WrappingLabel("")
        self.stored = ComboBox(
            choices=[],
            label="stored image",
            tooltip="the images in the project, with their role",
            nullable=True,
        )
        self.remove_button = PushButton(text="Remove from project...")
        self.rollback_button = PushButton(
            text="Roll back",
            tooltip="Make the model of the round selected in the table the current model again",
        )
        self.compare_button = PushButton(
            text="Compare rounds",
            tooltip="Draw the precision-recall curves of the selected rounds in Evaluate",
        )
        self.extend(
            [
                self.folder_label,
                self.open_button,
                self.add_as,
                self.crop,
                self.add_button,
                self.use_project,
                self.summary,
                self.stored,
                self.remove_button,
            ]
        )
        self.table = LedgerTable()
        self.native.layout().addWidget(self.table)
        self.buttons = Container(
            widgets=[self.rollback_button, self.compare_button],
            layout="horizontal",
            labels=False,
        )
        self.buttons.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(self.buttons.native)
        self.set_project_open(False)

    def show_entries(self, entries: list[Any]) -> None:
        """List the project's stored images (``ProjectEntry``) in the *stored image* box."""
        self.stored.choices = [(f"{e.name} ({e.role})", e.name) for e in entries]

    def set_project_open(self, is_open: bool) -> None:
        """Enable the controls that need a project."""
        for widget in (
            self.add_button,
            self.use_project,
            self.stored,
            self.remove_button,
            self.rollback_button,
            self.compare_button,
        ):
            widget.enabled = is_open
