"""Live plot of the training loss (every step, and per epoch) and the validation F1 per
epoch."""

from __future__ import annotations

import math
import time
from typing import Any

from napari_unet_nuclei._napari.mpl_canvas import MplCanvasWidget

__all__ = ["LossPlot"]

LOSS_COLOR = "#4cc9f0"
F1_COLOR = "#f9c74f"
#: The engine's loss (BCE + soft Dice) starts below 2, so this y-range rarely changes.
INITIAL_LOSS_TOP = 2.0
#: Steps are drawn at most this often (a blit costs a few milliseconds of the GUI thread).
STEP_REDRAW_S = 0.25


class LossPlot(MplCanvasWidget):
    """Train loss (left axis: every step as a thin line, each epoch's mean as points) and
    validation F1 (right axis, 0-1) against the epoch.

    A full matplotlib draw takes 50 ms or more and several times longer while the worker
    competes for the GIL, so an epoch normally costs only a blit of the two lines over a
    saved background; the axes are redrawn only when the data leave the current limits
    (limits grow with head-room, so that is rare).
    """

    def __init__(self, viewer: Any = None, parent: Any = None) -> None:
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_f1: list[float] = []
        #: Every step's loss at its position in epochs (epoch 1's steps lie in 0-1).
        self.step_positions: list[float] = []
        self.step_loss: list[float] = []
        self._last_step_draw = 0.0
        self.full_draws = 0
        self._background: Any = None
        super().__init__(
            viewer,
            parent,
            height=2.4,
            margins=(0.16, 0.84, 0.2, 0.95),
            title="Training loss and validation F1",
        )
        axes = self.axes
        axes.set_xlabel("epoch", fontsize=8)
        axes.set_ylabel("train loss", color=LOSS_COLOR, fontsize=8)
        self.f1_axes = axes.twinx()
        self.f1_axes.set_ylim(0, 1)
        self.f1_axes.set_ylabel("validation F1", color=F1_COLOR, fontsize=8)
        self.f1_axes.tick_params(colors=self.colors["text"], labelsize=8)
        for spine in self.f1_axes.spines.values():
            spine.set_color(self.colors["text"])
        (self.step_line,) = axes.plot(
            [], [], "-", color=LOSS_COLOR, linewidth=0.8, alpha=0.45, animated=True
        )
        (self.loss_line,) = axes.plot([], [], "o-", color=LOSS_COLOR, markersize=3, animated=True)
        (self.f1_line,) = self.f1_axes.plot(
            [], [], "s-", color=F1_COLOR, markersize=3, animated=True
        )
        axes.set_xlim(0.5, 10.5)
        axes.set_ylim(0.0, INITIAL_LOSS_TOP)
        self._background_size: tuple[int, int] | None = None
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self.canvas.draw()  # saves the background now, while nothing else runs

    def reset(self, epochs: int | None = None) -> None:
        """Forget all epochs (at the start of a run, before the worker starts).

        Parameters
        ----------
        epochs : int, optional
            The planned number of epochs, to fix the x-axis at once.

        Notes
        -----
        When something changed, the empty plot is drawn at once, while no worker
        competes for the GIL.
        """
        pristine = not self.epochs and not self.step_loss and self.loss_line.get_animated()
        self.epochs.clear()
        self.train_loss.clear()
        self.val_f1.clear()
        self.step_positions.clear()
        self.step_loss.clear()
        self._set_animated(True)
        limits = ((0.0, max(1, epochs or 10) + 0.5), (0.0, INITIAL_LOSS_TOP))
        unchanged = (self.axes.get_xlim(), self.axes.get_ylim()) == limits
        if pristine and unchanged and self._background_is_valid():
            return  # nothing to redraw: the saved background is still right
        self.axes.set_xlim(*limits[0])
        self.axes.set_ylim(*limits[1])
        self._set_line_data()
        self.full_draws += 1
        self.canvas.draw()

    def finish(self) -> None:
        """Fit the x-axis to the epochs that ran and draw the lines as ordinary artists
        again (so the toolbar's *save* includes them)."""
        if self.epochs:
            self.axes.set_xlim(0.0, max(self.epochs) + 0.5)
        self._set_animated(False)
        self._full_draw()

    def add_step(self, position: float, loss: float) -> None:
        """Append one training step's loss at ``position`` (in epochs: step ``k`` of ``n``
        in epoch ``e`` lies at ``e - 1 + k / n``); drawn at most every
        :data:`STEP_REDRAW_S` seconds, so a short fine-tune shows its curve as it goes."""
        self.step_positions.append(float(position))
        self.step_loss.append(float(loss))
        now = time.perf_counter()
        if now - self._last_step_draw < STEP_REDRAW_S:
            return
        self._last_step_draw = now
        self._set_line_data()
        if self._limits_fit():
            self._blit()
        else:
            self._full_draw()

    def add_epoch(self, epoch: int, train_loss: float, val_f1: float, of: str = "pixels") -> None:
        """Append one epoch's numbers and update the plot; ``of`` says what the F1 scores,
        ``"nuclei"`` (object F1, what training chooses by) or ``"pixels"``."""
        label = "validation F1 (nuclei)" if of == "nuclei" else "validation F1"
        if self.f1_axes.get_ylabel() != label:
            self.f1_axes.set_ylabel(label, color=F1_COLOR, fontsize=8)
            self._background = None  # the label is part of the saved background
        self.epochs.append(int(epoch))
        self.train_loss.append(float(train_loss))
        self.val_f1.append(float(val_f1))
        self._set_line_data()
        if self._limits_fit():
            self._blit()
        else:
            self._full_draw()

    # ----------------------------------------------------------------------- drawing
    def _set_animated(self, animated: bool) -> None:
        self.step_line.set_animated(animated)
        self.loss_line.set_animated(animated)
        self.f1_line.set_animated(animated)

    def _set_line_data(self) -> None:
        self.step_line.set_data(self.step_positions, self.step_loss)
        self.loss_line.set_data(self.epochs, self.train_loss)
        shown = [(e, f) for e, f in zip(self.epochs, self.val_f1) if not math.isnan(f)]
        self.f1_line.set_data([e for e, _ in shown], [f for _, f in shown])

    def _limits_fit(self) -> bool:
        """Keep the data inside the axes; return False when the limits had to change."""
        fits = True
        x_high = self.axes.get_xlim()[1]
        furthest = max([*self.epochs, *self.step_positions], default=0)
        if furthest > x_high - 0.5:
            self.axes.set_xlim(0.0, 2 * math.ceil(furthest) + 0.5)
            fits = False
        finite = [v for v in (*self.train_loss, *self.step_loss) if math.isfinite(v)]
        if finite:
            low, high = self.axes.get_ylim()
            if max(finite) > high or min(finite) < low:
                self.axes.set_ylim(min(0.0, min(finite)), 1.25 * max(max(finite), high))
                fits = False
        return fits

    def _full_draw(self) -> None:
        self.full_draws += 1
        self.draw()

    def _on_draw(self, _event: Any = None) -> None:
        if self.loss_line.get_animated():
            self._background = self.canvas.copy_from_bbox(self.figure.bbox)
            self._background_size = self.canvas.get_width_height()
            self._draw_lines()

    def _draw_lines(self) -> None:
        self.axes.draw_artist(self.step_line)
        self.axes.draw_artist(self.loss_line)
        self.f1_axes.draw_artist(self.f1_line)

    def _background_is_valid(self) -> bool:
        return (
            self._background is not None
            and self.loss_line.get_animated()
            and self._background_size == self.canvas.get_width_height()
        )

    def _blit(self) -> None:
        if not self._background_is_valid():
            self._full_draw()
            return
        self.canvas.restore_region(self._background)
        self._draw_lines()
        self.canvas.blit(self.figure.bbox)
