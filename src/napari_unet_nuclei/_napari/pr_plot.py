"""Precision against recall as the threshold sweeps, one line per model."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPen

from napari_unet_nuclei._napari.plot_canvas import Axis, PlotCanvas

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


class PrecisionRecallPlot(PlotCanvas):
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
        super().__init__(viewer, parent, height=180, title="Precision-recall")
        self.x = Axis(-0.02, 1.02)
        self.y = Axis(-0.02, 1.02)
        self.x_label = "recall"
        self.y_label = "precision"
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
        """The curve point nearest to position ``(x, y)`` of the drawing area (pixels).

        Returns
        -------
        tuple of (str, int, float) or None
            Model name, index on its curve and distance in pixels; None without curves.
        """
        best: tuple[str, int, float] | None = None
        for name, curve in self.curves.items():
            screen = np.array(
                [self.to_screen(r, p) for r, p in zip(curve.recall, curve.precision)]
            )
            distances = np.hypot(screen[:, 0] - x, screen[:, 1] - y)
            index = int(np.argmin(distances))
            if best is None or distances[index] < best[2]:
                best = (name, index, float(distances[index]))
        return best

    # ------------------------------------------------------------------------ events
    def clicked(self, x: float, y: float) -> None:
        """Pick the threshold of the curve point nearest to the click, if one is near."""
        found = self.nearest_point(x, y)
        if found is None or found[2] > PICK_RADIUS_PX:
            return
        name, index, _ = found
        threshold = float(self.curves[name].thresholds[index])
        self.set_threshold(threshold)
        self.threshold_picked.emit(threshold)

    # ----------------------------------------------------------------------- drawing
    def redraw(self) -> None:
        """Repaint all curves, their threshold markers and the legend."""
        self.heading = f"threshold {self.threshold:.2f} (click a curve to change)"
        super().redraw()

    def legend_labels(self) -> list[str]:
        """The legend's lines: each model's name and average precision."""
        labels = []
        for name, curve in self.curves.items():
            ap = curve.average_precision
            labels.append(f"{name} (AP {ap:.3f})" if not math.isnan(ap) else f"{name} (AP n/a)")
        return labels

    def paint_data(self, painter: QPainter) -> None:
        """Each curve, its point at the threshold, and the legend (lower left)."""
        for number, curve in enumerate(self.curves.values()):
            color = LINE_COLORS[number % len(LINE_COLORS)]
            self.draw_line(painter, curve.recall, curve.precision, color)
            precision, recall = curve.point_at(self.threshold)
            self.draw_line(
                painter,
                [recall],
                [precision],
                color,
                marker="o",
                marker_size=4.0,
                edge=self.colors["text"],
            )
        labels = self.legend_labels()
        if not labels:
            return
        rect = self.plot_rect()
        metrics = painter.fontMetrics()
        width = max(metrics.horizontalAdvance(label) for label in labels) + 26
        height = len(labels) * 13 + 6
        box = QRectF(
            rect.left() + 6, rect.bottom() - height - 6, min(width, rect.width() - 12), height
        )
        painter.setPen(QPen(QColor(self.colors["foreground"]), 1))
        painter.setBrush(QColor(self.colors["background"]))
        painter.drawRect(box)
        for number, label in enumerate(labels):
            y = box.top() + 3 + 13 * number
            color = QColor(LINE_COLORS[number % len(LINE_COLORS)])
            painter.setPen(QPen(color, 2))
            painter.drawLine(int(box.left() + 4), int(y + 7), int(box.left() + 18), int(y + 7))
            painter.setPen(QColor(self.colors["text"]))
            painter.drawText(
                QRectF(box.left() + 22, y, box.width() - 24, 13),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                metrics.elidedText(label, Qt.TextElideMode.ElideMiddle, int(box.width() - 24)),
            )

    def line_count(self) -> int:
        """Number of model curves drawn."""
        return len(self.curves)
