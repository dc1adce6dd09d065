"""A matplotlib figure in a Qt widget, styled like napari (the napari-matplotlib way)."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from qtpy.QtWidgets import QBoxLayout, QDialog, QLabel, QVBoxLayout, QWidget

__all__ = ["MplCanvasWidget", "theme_colors"]

#: Minimum canvas height per inch of figure height in a dock (a compact plot).
COMPACT_PIXELS_PER_INCH = 60
#: Size of a popped-out plot's window.
POPPED_OUT_SIZE = (760, 560)


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
    title : str
        Title of the window the plot moves to when popped out.

    Notes
    -----
    In a dock the plot is compact; the toolbar's *Pop out* moves it to a window of its own
    that the user can make as large as the screen (:meth:`pop_out`); closing that window
    puts it back where it was.
    """

    def __init__(
        self,
        viewer: Any = None,
        parent: QWidget | None = None,
        height: float = 2.6,
        margins: tuple[float, float, float, float] = (0.16, 0.95, 0.17, 0.9),
        title: str = "Plot",
    ):
        super().__init__(parent)
        self.title = title
        self.window_: QDialog | None = None
        self._home: tuple[QBoxLayout, int, QLabel] | None = None
        self.colors = theme_colors(viewer)
        self.figure = Figure(figsize=(3.6, height), dpi=100)
        left, right, bottom, top = margins
        self.figure.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(int(height * COMPACT_PIXELS_PER_INCH))
        self.toolbar = NavigationToolbar2QT(self.canvas, self)
        self.pop_out_action = self.toolbar.addAction("Pop out")
        self.pop_out_action.setToolTip("Show the plot in a window of its own (close it to dock)")
        self.pop_out_action.triggered.connect(self.pop_out)
        box = QVBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.toolbar)
        box.addWidget(self.canvas)
        self.setLayout(box)
        self.axes = self.figure.add_subplot(111)
        self.clear()

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
        self.pop_out_action.setEnabled(False)
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
        self.pop_out_action.setEnabled(True)
        self.show()
        if window is not None:
            window.deleteLater()

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
