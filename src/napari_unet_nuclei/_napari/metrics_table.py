"""Table of pixel scores for the current frame and for all frames."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
)

__all__ = ["OBJECT_ROWS", "SCORE_ROWS", "EvaluationTable", "MetricsTable"]

#: (key in the engine's score dicts, row title)
SCORE_ROWS = (
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1 (Dice)"),
    ("iou", "IoU"),
)
COLUMNS = ("current frame", "all frames")


class MetricsTable(QTableWidget):
    """Read-only table: one row per score, columns *current frame* and *all frames*."""

    def __init__(self, parent: object = None) -> None:
        super().__init__(len(SCORE_ROWS), len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setVerticalHeaderLabels([title for _, title in SCORE_ROWS])
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        height = self.horizontalHeader().sizeHint().height() + 2 * self.frameWidth() + 2
        self.setFixedHeight(height + self.verticalHeader().length())
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.scores: dict[str, dict[str, float] | None] = dict.fromkeys(COLUMNS)

    def show_scores(
        self, current: Mapping[str, float] | None, overall: Mapping[str, float] | None
    ) -> None:
        """Fill the table; ``None`` leaves a column empty."""
        for column, scores in enumerate((current, overall)):
            self.scores[COLUMNS[column]] = dict(scores) if scores is not None else None
            for row, (key, _) in enumerate(SCORE_ROWS):
                value = None if scores is None else scores.get(key)
                text = "" if value is None or math.isnan(value) else f"{value:.4f}"
                self.setItem(row, column, QTableWidgetItem(text))

    def value(self, key: str, column: str = "all frames") -> float | None:
        """The number shown for score ``key`` in ``column`` (for scripts and tests)."""
        scores = self.scores.get(column)
        return None if scores is None else scores.get(key)


#: Object rows of the metrics table: (key in ObjectEvaluation.scores, row title).
OBJECT_ROWS = (
    ("object_precision", "object precision"),
    ("object_recall", "object recall"),
    ("object_f1", "object F1 (IoU \u2265 0.5)"),
    ("dsb_ap", "AP IoU 0.5:0.95 (DSB)"),
)


class EvaluationTable(MetricsTable):
    """The pixel scores, then the object scores (empty until objects are evaluated)."""

    ROWS = (*SCORE_ROWS, *OBJECT_ROWS)

    def __init__(self, parent: object = None) -> None:
        super().__init__(parent)
        self.setRowCount(len(self.ROWS))
        self.setVerticalHeaderLabels([title for _, title in self.ROWS])
        height = self.horizontalHeader().sizeHint().height() + 2 * self.frameWidth() + 2
        self.setFixedHeight(height + self.verticalHeader().length())

    def show_scores(self, current: Any, overall: Any) -> None:
        """Fill the table from score dicts (pixel and object keys); None leaves a column empty."""
        from qtpy.QtWidgets import QTableWidgetItem

        for column, scores in enumerate((current, overall)):
            name = self.horizontalHeaderItem(column).text()
            self.scores[name] = dict(scores) if scores is not None else None
            for row, (key, _) in enumerate(self.ROWS):
                value = None if scores is None else scores.get(key)
                text = "" if value is None or value != value else f"{value:.4f}"
                self.setItem(row, column, QTableWidgetItem(text))
