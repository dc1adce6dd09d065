"""Precision against recall as the threshold sweeps, one line per model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import Signal

from napari_unet_nuclei._napari.mpl_canvas import MplCanvasWidget

__all__ = ["PrecisionRecallPlot"]

#: Line colours, distinct on a dark background (Okabe-Ito plus two).
LINE_COLORS = (
    "#56b4e9",
    "#e69f00",
    "#009e73",
    "#f0e442",
    "#cc79a7",
    "#d55e00",
    "#ffffff",
    "#999999",
)
#: A click farther than this from every point (in screen pixels) picks nothing.
PICK_RADIUS_PX = 25.0


class PrecisionRecallPlot(MplCanvasWidget):
    """Precision-recall curves kept across evaluations, with the current threshold marked.

    Each name (the Evaluate dock uses model, image and frames) keeps its own line;
    setting a name again replaces its line, so models of different sizes can be compared; the legend gives the average precision. Clicking near
    a curve emits ``threshold_picked`` with the threshold of the nearest point.

    Signals
    -------
    threshold_picked(float)
        A probability threshold chosen by clicking on a curve.
    """

    threshold_picked = Signal(float)

    def __init__(self, viewer: Any = None, parent: Any = None) -> None:
        self.curves: dict[str, Any] = {}
        self.threshold = 0.5
        super().__init__(viewer, parent, height=3.0, title="Precision-recall")
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self.redraw()

    # ------------------------------------------------------------------------- data
    def set_curve(self, name: str, curve: Any) -> None:
        """Add or replace the curve of model ``name`` (a ``PrecisionRecallCurve``)."""
        self.curves[name] = curve
        self.redraw()

    def clear_curves(self) -> None:
        """Drop every line."""
        if self.curves:
            self.curves.clear()
            self.redraw()

    def remove_curve(self, name: str) -> None:
        """Drop a model's line."""
        if self.curves.pop(name, None) is not None:
            self.redraw()

    def set_threshold(self, threshold: float) -> None:
        """Mark the points of every curve at ``threshold`` (a probability)."""
        self.threshold = float(threshold)
        self.redraw()

    def nearest_point(self, x: float, y: float) -> tuple[str, int, float] | None:
        """The curve point nearest to screen position ``(x, y)`` (pixels).

        Returns
        -------
        tuple of (str, int, float) or None
            Model name, index on its curve and distance in pixels; None without curves.
        """
        best: tuple[str, int, float] | None = None
        for name, curve in self.curves.items():
            points = np.column_stack([curve.recall, curve.precision])
            screen = self.axes.transData.transform(points)
            distances = np.hypot(screen[:, 0] - x, screen[:, 1] - y)
            index = int(np.argmin(distances))
            if best is None or distances[index] < best[2]:
                best = (name, index, float(distances[index]))
        return best

    # ------------------------------------------------------------------------ events
    def _on_click(self, event: Any) -> None:
        if event.inaxes is not self.axes or getattr(self.toolbar, "mode", ""):
            return
        found = self.nearest_point(event.x, event.y)
        if found is None or found[2] > PICK_RADIUS_PX:
            return
        name, index, _ = found
        threshold = float(self.curves[name].thresholds[index])
        self.set_threshold(threshold)
        self.threshold_picked.emit(threshold)

    # ----------------------------------------------------------------------- drawing
    def redraw(self) -> None:
        """Draw all curves, their threshold markers and the legend."""
        self.clear()
        axes = self.axes
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("recall", fontsize=8)
        axes.set_ylabel("precision", fontsize=8)
        axes.set_title(f"threshold {self.threshold:.2f} (click a curve to change)", fontsize=8)
        for number, (name, curve) in enumerate(self.curves.items()):
            color = LINE_COLORS[number % len(LINE_COLORS)]
            ap = curve.average_precision
            label = f"{name} (AP {ap:.3f})" if not math.isnan(ap) else f"{name} (AP n/a)"
            axes.plot(curve.recall, curve.precision, "-", color=color, linewidth=1.5, label=label)
            precision, recall = curve.point_at(self.threshold)
            axes.plot(
                [recall],
                [precision],
                "o",
                color=color,
                markersize=7,
                markeredgecolor=self.colors["text"],
            )
        if self.curves:
            self.style_legend(axes.legend(loc="lower left", fontsize=7))
        self.draw()

    def line_count(self) -> int:
        """Number of model curves drawn."""
        return len(self.curves)
