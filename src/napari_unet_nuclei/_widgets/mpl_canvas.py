"""A matplotlib figure in a Qt widget, styled like napari (the napari-matplotlib way)."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["MplCanvasWidget", "theme_colors"]


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


class MplCanvasWidget(QWidget):
    """A QWidget owning a ``FigureCanvasQTAgg``, its toolbar and one styled axes.

    Parameters
    ----------
    viewer : napari.Viewer, optional
        Its theme gives the colours.
    parent : QWidget, optional
    height : float
        Figure height in inches (width follows the dock).
    margins : tuple of float
        ``(left, right, bottom, top)`` of the axes as fractions of the figure. Fixed
        margins draw about three times faster than matplotlib's constrained layout, which
        matters while a worker competes for the CPU.
    """

    def __init__(
        self,
        viewer: Any = None,
        parent: QWidget | None = None,
        height: float = 2.6,
        margins: tuple[float, float, float, float] = (0.16, 0.95, 0.17, 0.9),
    ):
        super().__init__(parent)
        self.colors = theme_colors(viewer)
        self.figure = Figure(figsize=(3.6, height), dpi=100)
        left, right, bottom, top = margins
        self.figure.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(int(height * 80))
        self.toolbar = NavigationToolbar2QT(self.canvas, self)
        box = QVBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.toolbar)
        box.addWidget(self.canvas)
        self.setLayout(box)
        self.axes = self.figure.add_subplot(111)
        self.clear()

    def style_axes(self) -> None:
        """Apply the napari theme to the figure and the axes."""
        colors = self.colors
        self.figure.patch.set_facecolor(colors["background"])
        axes = self.axes
        axes.set_facecolor(colors["background"])
        for spine in axes.spines.values():
            spine.set_color(colors["text"])
        axes.tick_params(colors=colors["text"], labelsize=8)
        axes.xaxis.label.set_color(colors["text"])
        axes.yaxis.label.set_color(colors["text"])
        axes.title.set_color(colors["text"])
        axes.grid(True, color=colors["foreground"], linewidth=0.5, alpha=0.6)

    def style_legend(self, legend: Any) -> None:
        """Give a legend the theme's colours."""
        if legend is None:
            return
        legend.get_frame().set_facecolor(self.colors["background"])
        legend.get_frame().set_edgecolor(self.colors["foreground"])
        for text in legend.get_texts():
            text.set_color(self.colors["text"])

    def clear(self) -> None:
        """Empty the axes and restyle them."""
        self.axes.clear()
        self.style_axes()

    def draw(self) -> None:
        """Redraw the canvas when Qt is idle (never blocks the event loop for long)."""
        self.canvas.draw_idle()
