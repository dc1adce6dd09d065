"""A small line plot drawn with Qt's painter, styled like napari.

The docks' plots (training loss, precision-recall) need lines, points, two y-axes, a
legend and a click; matplotlib's Qt canvas costs about a second of imports and half a
second for its first draw, all on the GUI thread, when a dock opens. Painting the few
hundred points with ``QPainter`` costs milliseconds and imports nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QBoxLayout,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["Axis", "PlotArea", "PlotCanvas", "nice_ticks", "theme_colors"]

#: Height of a popped-out plot's window and its width.
POPPED_OUT_SIZE = (760, 560)
#: Margins of the axes inside the drawing area, in pixels: left, right, bottom, top.
MARGINS = (44, 44, 30, 18)


def theme_colors(viewer: Any = None) -> dict[str, str]:
    """Background, foreground, text and accent colours of the viewer's napari theme.

    Falls back to napari's dark theme colours when the theme cannot be read.
    """
    colors = {
        "background": "#262930",
        "foreground": "#414851",
        "text": "#f0f1f2",
        "accent": "#6ee7ff",
    }
    try:
        from napari.utils.theme import get_theme

        theme_id = getattr(viewer, "theme", "dark") or "dark"
        theme = get_theme(theme_id if theme_id != "system" else "dark")
        colors = {
            "background": theme.canvas.as_hex()
            if theme_id == "light"
            else theme.background.as_hex(),
            "foreground": theme.foreground.as_hex(),
            "text": theme.text.as_hex(),
            "accent": theme.current.as_hex(),
        }
    except Exception:  # a theme plugin with unexpected fields: keep the defaults
        pass
    return colors


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) in
    ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


class Axis:
    """A data range mapped onto a pixel range (y grows upwards in data, down on screen)."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = float(low), float(high)

    @property
    def limits(self) -> tuple[float, float]:
        """``(low, high)`` in data units."""
        return self.low, self.high

    def set(self, low: float, high: float) -> None:
        """Change the data range."""
        self.low, self.high = float(low), float(high)

    def fraction(self, value: float) -> float:
        """Where ``value`` lies in the range, 0 at ``low`` and 1 at ``high``."""
        span = self.high - self.low
        return (value - self.low) / span if span else 0.5


class PlotArea(QWidget):
    """The drawing surface: its owner paints axes and data in :meth:`paintEvent`."""

    def __init__(self, owner: PlotCanvas, minimum_height: int) -> None:
        super().__init__(owner)
        self.owner = owner
        self.setMinimumHeight(minimum_height)
        self.paint_count = 0

    def paintEvent(self, _event: Any) -> None:
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            self.owner.paint(painter)
        finally:
            painter.end()
        self.paint_count += 1

    def mousePressEvent(self, event: Any) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            point = event.position() if hasattr(event, "position") else event.pos()
            self.owner.clicked(float(point.x()), float(point.y()))


class PlotCanvas(QWidget):
    """A plot in a dock: a row of buttons (*Pop out*, *Save...*) above a painted area.

    Parameters
    ----------
    viewer : napari.Viewer, optional
        Its theme gives the colours.
    parent : QWidget, optional
    height : int
        Minimum height of the drawing area in the dock, in pixels.
    title : str
        Title of the window the plot moves to when popped out.

    Notes
    -----
    Subclasses set :attr:`x` and :attr:`y` (and optionally :attr:`y_right`), draw their
    data in :meth:`paint_data` with :meth:`to_screen`, and call :meth:`redraw` when data
    change (Qt coalesces the repaints). *Pop out* moves the plot to a window of its own
    that the user can make as large as the screen; closing that window puts it back.
    """

    def __init__(
        self,
        viewer: Any = None,
        parent: QWidget | None = None,
        height: int = 150,
        title: str = "Plot",
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.colors = theme_colors(viewer)
        self.window_: QDialog | None = None
        self._home: tuple[QBoxLayout, int, QLabel] | None = None
        self.x = Axis(0.0, 1.0)
        self.y = Axis(0.0, 1.0)
        self.y_right: Axis | None = None
        self.x_label = ""
        self.y_label = ""
        self.y_right_label = ""
        self.y_label_color = self.colors["text"]
        self.y_right_label_color = self.colors["text"]
        self.heading = ""
        self.canvas = PlotArea(self, height)
        self.pop_out_button = QPushButton("Pop out")
        self.pop_out_button.setToolTip("Show the plot in a window of its own (close it to dock)")
        self.pop_out_button.clicked.connect(self.pop_out)
        self.save_button = QPushButton("Save...")
        self.save_button.setToolTip("Save the plot as a PNG picture")
        self.save_button.clicked.connect(self._ask_save)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addStretch(1)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.pop_out_button)
        box = QVBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addLayout(buttons)
        box.addWidget(self.canvas)
        self.setLayout(box)

    # ------------------------------------------------------------------ geometry
    def plot_rect(self) -> QRectF:
        """The axes' rectangle inside the drawing area, in pixels."""
        left, right, bottom, top = MARGINS
        width, height = self.canvas.width(), self.canvas.height()
        return QRectF(left, top, max(1, width - left - right), max(1, height - top - bottom))

    def to_screen(self, x: float, y: float, right: bool = False) -> tuple[float, float]:
        """Pixel position in the drawing area of data point ``(x, y)`` (``right``: on the
        right y-axis)."""
        rect = self.plot_rect()
        y_axis = self.y_right if right and self.y_right is not None else self.y
        return (
            rect.left() + self.x.fraction(x) * rect.width(),
            rect.bottom() - y_axis.fraction(y) * rect.height(),
        )

    # ------------------------------------------------------------------ drawing
    def redraw(self) -> None:
        """Ask Qt to repaint the plot when it is idle."""
        self.canvas.update()

    def paint(self, painter: QPainter) -> None:
        """Paint background, grid, axes, labels, then the subclass's data."""
        colors = self.colors
        text = QColor(colors["text"])
        painter.fillRect(self.canvas.rect(), QColor(colors["background"]))
        rect = self.plot_rect()
        font = QFont(painter.font())
        font.setPointSizeF(7.5)
        painter.setFont(font)
        grid = QPen(QColor(colors["foreground"]), 1)
        for value in nice_ticks(*self.x.limits):
            sx, _ = self.to_screen(value, self.y.low)
            painter.setPen(grid)
            painter.drawLine(QPointF(sx, rect.top()), QPointF(sx, rect.bottom()))
            painter.setPen(text)
            painter.drawText(
                QRectF(sx - 25, rect.bottom() + 2, 50, 12),
                Qt.AlignmentFlag.AlignHCenter,
                f"{value:g}",
            )
        for value in nice_ticks(*self.y.limits):
            _, sy = self.to_screen(self.x.low, value)
            painter.setPen(grid)
            painter.drawLine(QPointF(rect.left(), sy), QPointF(rect.right(), sy))
            painter.setPen(text)
            painter.drawText(
                QRectF(0, sy - 6, rect.left() - 3, 12), Qt.AlignmentFlag.AlignRight, f"{value:g}"
            )
        if self.y_right is not None:
            for value in nice_ticks(*self.y_right.limits):
                _, sy = self.to_screen(self.x.low, value, right=True)
                painter.drawText(
                    QRectF(rect.right() + 3, sy - 6, 40, 12),
                    Qt.AlignmentFlag.AlignLeft,
                    f"{value:g}",
                )
        painter.setPen(QPen(text, 1))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRect(rect)
        painter.drawText(
            QRectF(rect.left(), rect.bottom() + 14, rect.width(), 14),
            Qt.AlignmentFlag.AlignHCenter,
            self.x_label,
        )
        if self.heading:
            painter.drawText(
                QRectF(rect.left(), 2, rect.width(), 14),
                Qt.AlignmentFlag.AlignHCenter,
                self.heading,
            )
        self._vertical_label(painter, self.y_label, self.y_label_color, 2, rect)
        if self.y_right is not None:
            x_right = self.canvas.width() - 14
            self._vertical_label(
                painter, self.y_right_label, self.y_right_label_color, x_right, rect
            )
        painter.save()
        painter.setClipRect(rect.adjusted(-4, -4, 4, 4))
        self.paint_data(painter)
        painter.restore()

    def _vertical_label(
        self, painter: QPainter, label: str, color: str, x: float, rect: QRectF
    ) -> None:
        if not label:
            return
        painter.save()
        painter.setPen(QColor(color))
        painter.translate(x, rect.center().y())
        painter.rotate(-90)
        span = self.canvas.height()  # a label longer than the axes may pass its ends
        painter.drawText(QRectF(-span / 2, 0, span, 12), Qt.AlignmentFlag.AlignHCenter, label)
        painter.restore()

    def paint_data(self, painter: QPainter) -> None:
        """Draw the data (subclasses)."""

    def draw_line(
        self,
        painter: QPainter,
        xs: Sequence[float],
        ys: Sequence[float],
        color: str,
        width: float = 1.5,
        alpha: float = 1.0,
        marker: str = "",
        marker_size: float = 3.0,
        right: bool = False,
        edge: str | None = None,
    ) -> int:
        """Draw a polyline through finite points, with ``marker`` ``"o"`` or ``"s"`` at
        each; return the number of points drawn."""
        points = [
            QPointF(*self.to_screen(x, y, right))
            for x, y in zip(xs, ys)
            if math.isfinite(x) and math.isfinite(y)
        ]
        pen_color = QColor(color)
        pen_color.setAlphaF(alpha)
        if len(points) > 1 and width > 0:
            path = QPainterPath(points[0])
            for point in points[1:]:
                path.lineTo(point)
            painter.setPen(QPen(pen_color, width))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)
        if marker:
            painter.setPen(QPen(QColor(edge or color), 1))
            painter.setBrush(pen_color)
            for point in points:
                box = QRectF(
                    point.x() - marker_size,
                    point.y() - marker_size,
                    2 * marker_size,
                    2 * marker_size,
                )
                if marker == "s":
                    painter.drawRect(box)
                else:
                    painter.drawEllipse(box)
        return len(points)

    def clicked(self, x: float, y: float) -> None:
        """A left click at pixel ``(x, y)`` of the drawing area (subclasses)."""

    # ------------------------------------------------------------------ saving
    def save_png(self, path: str) -> bool:
        """Save the plot as it is drawn to a PNG file; return whether it was written."""
        return bool(self.canvas.grab().save(str(path), "PNG"))

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, f"Save {self.title}", "", "PNG (*.png)")
        if path:
            self.save_png(path if path.lower().endswith(".png") else f"{path}.png")

    # ------------------------------------------------------------------ popping out
    def pop_out(self) -> QDialog | None:
        """Move the plot to a resizable window of its own; return that window.

        A label takes its place in the dock. Closing the window puts the plot back.
        Returns None when the plot is not in a box layout (nothing to pop out of).
        """
        if self.window_ is not None:
            self.window_.raise_()
            return self.window_
        parent = self.parentWidget()
        layout = parent.layout() if parent is not None else None
        if not isinstance(layout, QBoxLayout):
            return None
        index = layout.indexOf(self)
        placeholder = QLabel(f"{self.title}: in its own window (close it to bring it back).")
        placeholder.setWordWrap(True)
        layout.insertWidget(index, placeholder)
        layout.removeWidget(self)
        self._home = (layout, index, placeholder)
        window = QDialog(self.window())
        window.setWindowTitle(self.title)
        box = QVBoxLayout(window)
        box.addWidget(self)
        window.resize(POPPED_OUT_SIZE[0], POPPED_OUT_SIZE[1])
        window.finished.connect(self.dock_back)
        self.window_ = window
        self.pop_out_button.setEnabled(False)
        window.show()
        return window

    def dock_back(self, *_args: object) -> None:
        """Put a popped-out plot back in its place in the dock."""
        if self._home is None:
            return
        layout, index, placeholder = self._home
        self._home = None
        window, self.window_ = self.window_, None
        layout.removeWidget(placeholder)
        placeholder.deleteLater()
        layout.insertWidget(index, self)
        self.pop_out_button.setEnabled(True)
        self.show()
        if window is not None:
            window.deleteLater()
