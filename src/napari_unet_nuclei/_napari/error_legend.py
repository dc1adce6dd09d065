"""Colour legends of the error overlays: pixels (found, added, missed) and nuclei as objects
(matched, false, missed, merged, split)."""

from __future__ import annotations

from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from napari_unet_nuclei.evaluate.metrics import ERROR_COLORS

__all__ = ["ErrorLegend", "ObjectErrorLegend", "error_colormap", "object_error_colormap"]

#: Short legend texts for the error-map classes 1-3.
#: Legend entries per row (the legend wraps instead of widening the dock).
LEGEND_COLUMNS = 2
LEGEND_TEXT = {1: "correct (TP)", 2: "wrongly added (FP)", 3: "missed (FN)"}

#: Short legend texts for the object error-map classes 1-5 (``OBJECT_ERROR_CLASSES``).
OBJECT_LEGEND_TEXT = {
    1: "matched",
    2: "false nucleus",
    3: "missed nucleus",
    4: "merge",
    5: "split",
}


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def _direct_colormap(colors: dict) -> object:
    """A napari ``DirectLabelColormap`` of ``{value: RGBA}``, other values transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0)}
    color_dict.update({int(k): tuple(v) for k, v in colors.items()})
    return DirectLabelColormap(color_dict=color_dict)


def error_colormap() -> object:
    """The pixel error overlay's colormap: each class its ``metrics.ERROR_COLORS`` colour."""
    return _direct_colormap(ERROR_COLORS)


def object_error_colormap() -> object:
    """The object error overlay's colormap (``object_metrics.OBJECT_ERROR_COLORS``)."""
    from napari_unet_nuclei.evaluate.object_metrics import OBJECT_ERROR_COLORS

    return _direct_colormap(OBJECT_ERROR_COLORS)


class ErrorLegend(QWidget):
    """A row of coloured labels naming the classes of the error overlay."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)

        self._fill(LEGEND_TEXT, ERROR_COLORS, "error overlay")

    def _fill(self, texts: dict[int, str], colors: dict, overlay: str) -> None:
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        self.labels: dict[int, QLabel] = {}
        for index, (key, text) in enumerate(texts.items()):
            label = QLabel(f"\u25a0 {text}")
            label.setStyleSheet(f"color: {_hex(colors[key])}; font-weight: bold;")
            label.setToolTip(f"{overlay} value {key}")
            grid.addWidget(label, index // LEGEND_COLUMNS, index % LEGEND_COLUMNS)
            self.labels[key] = label
        grid.setColumnStretch(LEGEND_COLUMNS, 1)
        self.setLayout(grid)


class ObjectErrorLegend(ErrorLegend):
    """Legend of the object overlay: matched, false and missed nuclei, merges, splits."""

    def __init__(self, parent: QWidget | None = None) -> None:
        QWidget.__init__(self, parent)
        from napari_unet_nuclei.evaluate.object_metrics import (
            OBJECT_ERROR_CLASSES,
            OBJECT_ERROR_COLORS,
        )

        self._fill(OBJECT_LEGEND_TEXT, OBJECT_ERROR_COLORS, "object overlay")
        for key, label in self.labels.items():
            label.setToolTip(f"object overlay value {key}: {OBJECT_ERROR_CLASSES[key]}")
