"""The ledger of retraining rounds as a table: one row per round, selectable rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

__all__ = ["COLUMNS", "LedgerTable"]

COLUMNS = (
    "round",
    "date",
    "images",
    "annotated px",
    "held-out F1",
    "precision",
    "recall",
    "model file",
)
#: Background of a round that scores worse on the held-out set than an earlier one.
REGRESSION_COLOR = "#7a2e2e"


def _score(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.3f}"


class LedgerTable(QTableWidget):
    """Rounds of a :class:`~napari_unet_nuclei.project.ledger.Ledger`, newest at the bottom.

    Rows of rounds that score worse on the held-out set than the best earlier round are
    tinted red. Several rows can be selected (for *Compare*).
    """

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.setMinimumHeight(120)
        self._numbers: list[int] = []

    def set_rounds(self, rounds: Sequence[Any], regressions: Iterable[int] = ()) -> None:
        """Show ``rounds`` (``LedgerRound``); ``regressions``: numbers of worse rounds."""
        worse = set(regressions)
        selected = set(self.selected_rounds())
        self.clearSelection()
        self.setRowCount(len(rounds))
        self._numbers = [r.number for r in rounds]
        for row, item in enumerate(rounds):
            held = item.held_out
            values = (
                str(item.number),
                item.date.replace("T", " "),
                str(item.n_images),
                f"{item.annotated_pixels:,}",
                _score(held.scores.get("f1")) if held else "-",
                _score(held.scores.get("precision")) if held else "-",
                _score(held.scores.get("recall")) if held else "-",
                item.model_file,
            )
            for column, text in enumerate(values):
                cell = QTableWidgetItem(text)
                cell.setData(Qt.ItemDataRole.UserRole, item.number)
                if item.number in worse:
                    cell.setBackground(QBrush(QColor(REGRESSION_COLOR)))
                    cell.setToolTip("worse on the held-out set than an earlier round")
                self.setItem(row, column, cell)
        self.select_rounds(selected & set(self._numbers))

    def text(self, row: int, column: str) -> str:
        """Text of the cell in ``row`` under the heading ``column``."""
        return self.item(row, COLUMNS.index(column)).text()

    def selected_rounds(self) -> list[int]:
        """Round numbers of the selected rows, in table order."""
        rows = sorted({index.row() for index in self.selectedIndexes()})
        return [self._numbers[row] for row in rows if row < len(self._numbers)]

    def select_rounds(self, numbers: Iterable[int]) -> None:
        """Select the rows of these round numbers (and only those)."""
        wanted = set(numbers)
        self.clearSelection()
        mode = self.selectionMode()
        self.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row, number in enumerate(self._numbers):
            if number in wanted:
                self.selectRow(row)
        self.setSelectionMode(mode)
