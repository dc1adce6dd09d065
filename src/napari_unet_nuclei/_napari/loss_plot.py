"""Live plot of the training loss (every step, and per epoch) and the validation F1 per
epoch."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtGui import QPainter

from napari_unet_nuclei._napari.plot_canvas import Axis, PlotCanvas

__all__ = ["LossPlot"]

LOSS_COLOR = "#4cc9f0"
F1_COLOR = "#f9c74f"
#: The engine's loss (BCE + soft Dice) starts below 2, so this y-range rarely changes.
INITIAL_LOSS_TOP = 2.0
F1_LABELS = {"nuclei": "validation F1 (nuclei)", "pixels": "validation F1"}


class LossPlot(PlotCanvas):
    """Train loss (left axis: every step as a thin line, each epoch's mean as points) and
    validation F1 (right axis, 0-1) against the epoch.

    Appending a step or an epoch only asks Qt for a repaint, which it coalesces; painting
    a few thousand points takes milliseconds, so the plot follows every step of a short
    fine-tune without slowing the GUI.
    """

    def __init__(self, viewer: Any = None, parent: Any = None) -> None:
        super().__init__(viewer, parent, height=140, title="Training loss and validation F1")
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_f1: list[float] = []
        #: Every step's loss at its position in epochs (epoch 1's steps lie in 0-1).
        self.step_positions: list[float] = []
        self.step_loss: list[float] = []
        #: Step points in the last painted picture (what the user saw).
        self.drawn_steps = 0
        self.x = Axis(0.0, 10.5)
        self.y = Axis(0.0, INITIAL_LOSS_TOP)
        self.y_right = Axis(0.0, 1.0)
        self.x_label = "epoch"
        self.y_label = "train loss"
        self.y_label_color = LOSS_COLOR
        self.f1_label = F1_LABELS["pixels"]
        self.y_right_label_color = F1_COLOR

    @property
    def f1_label(self) -> str:
        """The right axis' label: what the validation F1 scores."""
        return self.y_right_label

    @f1_label.setter
    def f1_label(self, label: str) -> None:
        self.y_right_label = label

    def reset(self, epochs: int | None = None) -> None:
        """Forget all epochs (at the start of a run).

        Parameters
        ----------
        epochs : int, optional
            The planned number of epochs, to fix the x-axis at once.
        """
        for values in (
            self.epochs,
            self.train_loss,
            self.val_f1,
            self.step_positions,
            self.step_loss,
        ):
            values.clear()
        self.x.set(0.0, max(1, epochs or 10) + 0.5)
        self.y.set(0.0, INITIAL_LOSS_TOP)
        self.redraw()

    def finish(self) -> None:
        """Fit the x-axis to the epochs that ran."""
        if self.epochs:
            self.x.set(0.0, max(self.epochs) + 0.5)
        self.redraw()

    def add_step(self, position: float, loss: float) -> None:
        """Append one training step's loss at ``position`` (in epochs: step ``k`` of ``n``
        in epoch ``e`` lies at ``e - 1 + k / n``)."""
        self.step_positions.append(float(position))
        self.step_loss.append(float(loss))
        self._fit_limits()
        self.redraw()

    def add_epoch(self, epoch: int, train_loss: float, val_f1: float, of: str = "pixels") -> None:
        """Append one epoch's numbers and update the plot; ``of`` says what the F1 scores,
        ``"nuclei"`` (object F1, what training chooses by) or ``"pixels"``."""
        self.f1_label = F1_LABELS["nuclei" if of == "nuclei" else "pixels"]
        self.epochs.append(int(epoch))
        self.train_loss.append(float(train_loss))
        self.val_f1.append(float(val_f1))
        self._fit_limits()
        self.redraw()

    def _fit_limits(self) -> None:
        """Grow the axes, with head-room, when the data leave them."""
        furthest = max([*self.epochs, *self.step_positions], default=0)
        if furthest > self.x.high - 0.5:
            self.x.set(0.0, 2 * math.ceil(furthest) + 0.5)
        finite = [v for v in (*self.train_loss, *self.step_loss) if math.isfinite(v)]
        if finite and (max(finite) > self.y.high or min(finite) < self.y.low):
            self.y.set(min(0.0, min(finite)), 1.25 * max(max(finite), self.y.high))

    def paint_data(self, painter: QPainter) -> None:
        """The step line, the epoch means and the validation F1."""
        self.drawn_steps = self.draw_line(
            painter, self.step_positions, self.step_loss, LOSS_COLOR, width=0.8, alpha=0.45
        )
        self.draw_line(painter, self.epochs, self.train_loss, LOSS_COLOR, marker="o")
        self.draw_line(painter, self.epochs, self.val_f1, F1_COLOR, marker="s", right=True)
