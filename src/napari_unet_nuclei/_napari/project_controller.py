"""The Train dock's project folder and ledger, apart from training itself.

A project keeps a training set on disk (images, labels and annotated regions, some of
them held out); the ledger records every training run as a round. This controller owns the
*Project folder and ledger* panel of the Train dock and what its buttons do; the Train dock
asks it which project to train on and hands it the rounds its jobs record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from superqt import QCollapsible

from napari_unet_nuclei._napari._layers import current_frame_index, grey_layer_data
from napari_unet_nuclei._napari._notify import error_sentence, report_error, report_warning
from napari_unet_nuclei._napari.annotated_regions import annotated_regions
from napari_unet_nuclei._napari.project_panel import (
    ADD_AS_HELD_OUT,
    ProjectPanel,
    ask_project_folder,
    confirm_removal,
)
from napari_unet_nuclei._napari.round_job import RoundRecorded
from napari_unet_nuclei.project.ledger import Ledger

if TYPE_CHECKING:
    from napari_unet_nuclei.project.folder import ProjectEntry, TrainingProject
    from napari_unet_nuclei.project.ledger import Ledger

__all__ = ["ProjectController"]

PLUGIN_NAME = "napari-unet-nuclei"


class ProjectController:
    """Open a project folder, store frames in it, list and compare the ledger's rounds.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer (its Evaluate dock shows compared rounds).
    registry : ModelRegistry
        The session's models (a rolled-back round joins them).
    status : WrappingLabel
        The Train dock's status line.
    data_layers : callable
        Returns the Train dock's ``(image, labels, annotated regions)`` layer choices.
    pick_model : callable
        Called with a model's session name to make it the Train dock's current model.
    report_failure : callable
        ``(error, doing)``: one sentence in the status line and a notification.
    """

    def __init__(
        self,
        viewer: Any,
        registry: Any,
        status: Any,
        data_layers: Callable[[], tuple[Any, Any, Any]],
        pick_model: Callable[[str], None],
        report_failure: Callable[[BaseException | str, str], None],
    ) -> None:
        self._viewer = viewer
        self._registry = registry
        self._status = status
        self._data_layers = data_layers
        self._pick_model = pick_model
        self._report_failure = report_failure
        self.project: TrainingProject | None = None
        self.ledger: Ledger | None = None
        self.last_round: Any = None
        self.last_warning: str | None = None
        self.compared_curves: list[str] = []
        self.panel = ProjectPanel()
        self.table = self.panel.table
        self.section = QCollapsible("Project folder and ledger")
        self.section.addWidget(self.panel.native)
        self.panel.open_button.changed.connect(self._on_open_project_clicked)
        self.panel.add_button.changed.connect(self._on_add_clicked)
        self.panel.remove_button.changed.connect(self._on_remove_clicked)
        self.panel.rollback_button.changed.connect(self._on_rollback_clicked)
        self.panel.compare_button.changed.connect(self._on_compare_clicked)

    @property
    def use_project(self) -> bool:
        """Whether a project is open and *train on the project set too* is ticked."""
        return self.project is not None and bool(self.panel.use_project.value)

    def start_round(self) -> None:
        """Forget the last round's outcome (a training run starts)."""
        self.last_round = None
        self.last_warning = None

    def open_project(self, folder: str | Path) -> TrainingProject | None:
        """Open the training project in ``folder``, or create one there if it is empty.

        Returns the project, or None (with an error notification) when the folder is
        neither a project nor empty, or the project is damaged.
        """
        from napari_unet_nuclei.project.folder import ProjectError, TrainingProject

        try:
            project = TrainingProject.open_or_create(folder)
            ledger = Ledger(project.folder)
        except (OSError, ProjectError) as error:
            report_error(error_sentence(error, "Opening the project"))
            return None
        self.project, self.ledger = project, ledger
        self.panel.set_project_open(True)
        self.panel.folder_label.value = f"Project: {project.folder}"
        self.section.expand(animate=False)
        self.refresh_project()
        self._status.value = (
            f"Opened the project {project.folder.name}: {project.describe()} "
            f"{len(ledger)} round(s) in the ledger."
        )
        return project

    def refresh_project(self) -> None:
        """Re-read the project index and the ledger and show them."""
        if self.project is None or self.ledger is None:
            return
        from napari_unet_nuclei.project.folder import ProjectError

        try:
            self.project.reload()
            self.ledger.reload()
        except ProjectError as error:
            report_error(error_sentence(error, "Reading the project"))
            return
        self.panel.summary.value = self.project.describe()
        self.panel.show_entries(self.project.entries)
        regressions = [r.number for r in self.ledger.rounds if self.ledger.is_regression(r.number)]
        self.table.set_rounds(self.ledger.rounds, regressions)

    def add_to_training_set(self, role: str | None = None) -> ProjectEntry | None:
        """Store the shown frame of the image with its labels (and annotated regions).

        Parameters
        ----------
        role : {"train", "held-out"}, optional
            By default the panel's *add as* choice.

        Returns
        -------
        ProjectEntry or None
            The stored entry; None (with an error notification) on failure.
        """
        from napari_unet_nuclei.project.folder import HELD_OUT, TRAIN, ProjectError

        image_layer, labels_layer, shapes_layer = self._data_layers()
        if role is None:
            role = HELD_OUT if self.panel.add_as.value == ADD_AS_HELD_OUT else TRAIN
        try:
            if self.project is None:
                raise ValueError("open or create a project folder first")
            if image_layer is None or labels_layer is None:
                raise ValueError("pick an image layer and a labels layer first")
            image_data, _ = grey_layer_data(image_layer)
            shape = tuple(np.shape(image_data))
            if shape != tuple(labels_layer.data.shape):
                raise ValueError(
                    f"the labels (shape {tuple(labels_layer.data.shape)}) do not match the "
                    f"image '{image_layer.name}' (shape {shape})"
                )
            frame = current_frame_index(self._viewer, labels_layer)
            image = np.array(image_data[frame], copy=True)
            labels = np.array(labels_layer.data[frame], copy=True)
            flat = int(np.ravel_multi_index(frame, shape[:-2])) if frame else 0
            name = f"{image_layer.name} [{flat}]" if frame else image_layer.name
            annotated = None
            if shapes_layer is not None:
                annotated = annotated_regions(shapes_layer, shape, image_layer).frame(flat)
                if not annotated.any():
                    raise ValueError(
                        f"the shapes layer '{shapes_layer.name}' has no region on this frame"
                    )
            entry = self.project.add(
                image,
                labels,
                name,
                annotated=annotated,
                role=role,
                crop_to_annotated=self.panel.crop.value,
            )
        except (ValueError, OSError, ProjectError) as error:
            self._report_failure(error, "Adding to the training set")
            return None
        self.refresh_project()
        self._status.value = (
            f"Stored '{entry.name}' as a {entry.role} image ({entry.annotated_pixels:,} "
            f"annotated px) in {self.project.folder.name}: {self.project.describe()}"
        )
        return entry

    def remove_from_project(self, name: str | None = None) -> bool:
        """Remove a stored image and its files from the project (no question asked).

        By default the panel's *stored image*. The ledger keeps the rounds trained with it;
        the next round is trained (and, for a held-out image, scored) without it. Returns
        True when it was removed.
        """
        from napari_unet_nuclei.project.folder import ProjectError

        try:
            if self.project is None:
                raise ValueError("open or create a project folder first")
            name = name if name is not None else self.panel.stored.value
            if not name:
                raise ValueError("pick a stored image first")
            self.project.remove(name)
        except (ValueError, KeyError, OSError, ProjectError) as error:
            self._report_failure(error, "Removing from the project")
            return False
        self.refresh_project()
        self._status.value = (
            f"Removed '{name}' from {self.project.folder.name}: {self.project.describe()}"
        )
        return True

    def rollback(self, number: int | None = None) -> str | None:
        """Register round ``number``'s exact model as the session's current model.

        The model is read back from the round's file (checked against its hashes), added
        to the session's models and picked as *start from*. Returns its session name, or
        None on failure. By default the round selected in the ledger table.
        """
        from napari_unet_nuclei.project.folder import ProjectError

        try:
            if self.ledger is None:
                raise ValueError("open a project folder first")
            if number is None:
                selected = self.table.selected_rounds()
                if len(selected) != 1:
                    raise ValueError("select one round in the ledger table")
                number = selected[0]
            model = self.ledger.rollback(number)
        except (ValueError, KeyError, ProjectError) as error:
            report_error(error_sentence(error, "Rolling back"))
            return None
        name = self._registry.add(model, f"{model.name} round {number}")
        self._pick_model(name)
        self._status.value = (
            f"Rolled back to round {number}: '{name}' (its exact weights) is the current model."
        )
        return name

    def compare_rounds(self, numbers: list[int] | None = None) -> list[str]:
        """Show the held-out precision-recall curves of rounds in the Evaluate plot.

        By default the rounds selected in the ledger table. The curves of an earlier
        comparison are replaced; model curves drawn by Evaluate stay. Returns the curve
        names (empty on failure).
        """
        try:
            if self.ledger is None:
                raise ValueError("open a project folder first")
            numbers = list(numbers) if numbers is not None else self.table.selected_rounds()
            if not numbers:
                raise ValueError("select rounds in the ledger table")
            curves = {}
            for number in numbers:
                curve = self.ledger.curve(number)
                if curve is None:
                    raise ValueError(
                        f"round {number} has no held-out scores: add held-out images to the "
                        "project before training"
                    )
                curves[f"round {number} (held-out)"] = curve
            plot = self._evaluate_plot()
        except (ValueError, KeyError) as error:
            report_error(error_sentence(error, "Comparing rounds"))
            return []
        for name in self.compared_curves:
            plot.remove_curve(name)
        for name, curve in curves.items():
            plot.set_curve(name, curve)
        self.compared_curves = list(curves)
        self._status.value = "Held-out precision-recall of " + ", ".join(
            f"round {n} (F1 {self.ledger.round(n).held_out.f1:.3f})" for n in numbers
        )
        return self.compared_curves

    def _evaluate_plot(self) -> Any:
        """The Evaluate widget's precision-recall plot (the widget is opened if needed)."""
        window = getattr(self._viewer, "window", None)
        if window is None:
            raise ValueError("the viewer has no window to show the Evaluate widget in")
        _, widget = window.add_plugin_dock_widget(PLUGIN_NAME, "Evaluate")
        return widget.pr_plot

    def record_round(self, event: RoundRecorded) -> str:
        """Show a round the training job recorded; return the sentence for the status line
        (a worse round's warning is also a notification)."""
        self.last_round = event.round
        self.refresh_project()
        held = event.round.held_out
        scored = f", held-out F1 {held.f1:.3f}" if held is not None else ""
        if event.warning:
            self.last_warning = event.warning
            report_warning(event.warning)
        return f"Round {event.round.number} recorded{scored}."

    def _on_open_project_clicked(self, _value: Any = None) -> None:
        folder = ask_project_folder(self.panel.native)
        if folder:
            self.open_project(folder)

    def _on_add_clicked(self, _value: Any = None) -> None:
        self.add_to_training_set()

    def _on_remove_clicked(self, _value: Any = None) -> None:
        name = self.panel.stored.value
        if not name:
            self.remove_from_project()  # explains what to pick
        elif confirm_removal(name, self.panel.native):
            self.remove_from_project(name)

    def _on_rollback_clicked(self, _value: Any = None) -> None:
        self.rollback()

    def _on_compare_clicked(self, _value: Any = None) -> None:
        self.compare_rounds()
