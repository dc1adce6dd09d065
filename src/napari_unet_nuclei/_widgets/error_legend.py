"""Colour legend of the error overlay: true positive, wrongly added, missed."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QWidget

__all__ = ["ErrorLegend", "error_colormap"]

#: Short legend texts for the error-map classes 1-3.
LEGEND_TEXT = {1: "correct (TP)", 2: "wrongly added (FP)", 3: "missed (FN)"}


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def error_colormap() -> object:
    """A napari ``DirectLabelColormap`` giving each error class its ``ERROR_COLORS`` colour."""
    from napari.utils.colormaps import DirectLabelColormap

    from ..metrics import ERROR_COLORS

    color_dict: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0)}
    color_dict.update({int(k): tuple(v) for k, v in ERROR_COLORS.items()})
    return DirectLabelColormap(color_dict=color_dict)


class ErrorLegend(QWidget):
    """A row of coloured labels naming the classes of the error overlay."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ..metrics import ERROR_COLORS

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.labels: dict[int, QLabel] = {}
        for key, text in LEGEND_TEXT.items():
            label = QLabel(f"\u25a0 {text}")
            label.setStyleSheet(f"color: {_hex(ERROR_COLORS[key])}; font-weight: bold;")
            label.setToolTip(f"error overlay value {key}")
            row.addWidget(label)
            self.labels[key] = label
        row.addStretch(1)
        self.setLayout(row)
