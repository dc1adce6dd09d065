"""Docks that fit a laptop screen: a scrolling body, status text that wraps, compact combos.

napari puts a dock widget's ``native`` QWidget straight into the dock, so a magicgui
``Container(scrollable=True)`` loses its scroll area there. :func:`scroll_body` gives a dock
its own: the dock's content lives in a body container inside a ``QScrollArea`` whose
minimum height is small and whose minimum width is the content's, so a dock never asks the
window for more height than a 1366 x 768 screen has, and docks can be stacked.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QStyleOptionComboBox,
    QStylePainter,
    QWidget,
)

__all__ = [
    "DOCK_MIN_HEIGHT",
    "DockScrollArea",
    "ScrollingDock",
    "WrappingLabel",
    "compact_combo_boxes",
    "elided_middle",
    "scroll_body",
]

#: Minimum height of a dock's scroll area: a few rows stay visible, the rest scrolls.
DOCK_MIN_HEIGHT = 120
#: Preferred height at most: a dock asks for no more than this when it is added.
DOCK_PREFERRED_MAX_HEIGHT = 560
#: Characters a combo box shows before it elides (long layer names never widen a dock).
COMBO_MIN_CHARACTERS = 14


class DockScrollArea(QScrollArea):
    """A vertical scroll area as wide as its content needs, as short as :data:`DOCK_MIN_HEIGHT`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    def _content_width(self) -> int:
        body = self.widget()
        width = body.minimumSizeHint().width() if body is not None else 0
        return width + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        return QSize(self._content_width(), DOCK_MIN_HEIGHT)

    def sizeHint(self) -> QSize:
        body = self.widget()
        height = body.sizeHint().height() if body is not None else DOCK_MIN_HEIGHT
        return QSize(self._content_width(), min(DOCK_PREFERRED_MAX_HEIGHT, height))


class ScrollingDock:
    """Mixin for a dock ``Container`` whose widgets live in :func:`scroll_body`'s body.

    napari refreshes layer choices by calling the dock's ``reset_choices``; the body is not
    a magicgui child of the dock, so the call is passed on to it here.
    """

    body: Container

    def reset_choices(self, *args: Any) -> None:
        """Refresh the choices of the dock's widgets and of its body's."""
        super().reset_choices(*args)  # type: ignore[misc]
        body = getattr(self, "body", None)
        if body is not None:
            body.reset_choices(*args)


def scroll_body(dock: Container, labels: bool = True) -> Container:
    """Give ``dock`` a scrolling body and return it; the dock's widgets go into the body.

    Parameters
    ----------
    dock : magicgui.widgets.Container
        The dock widget (napari shows its ``native`` widget).
    labels : bool
        Whether the body shows magicgui's label column.

    Returns
    -------
    magicgui.widgets.Container
        The body: ``body.extend([...])`` and ``body.native.layout().addWidget(...)`` add to it.
    """
    body = Container(labels=labels)
    area = DockScrollArea()
    area.setWidget(body.native)
    layout = dock.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(area)
    dock.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    dock.scroll_area = area  # type: ignore[attr-defined]
    return body


class WrappingLabel(Label):
    """A magicgui ``Label`` whose text wraps and never widens its dock.

    The label ignores its text's width (a word longer than the dock is cut at the dock's
    edge), wraps at spaces, lets the user select and copy the text, and keeps the whole
    text in its tooltip.
    """

    def __init__(self, value: str = "", **kwargs: Any) -> None:
        super().__init__(value=value, **kwargs)
        native: QLabel = self.native
        native.setWordWrap(True)
        native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        native.setSizePolicy(policy)
        native.setMinimumWidth(1)
        native.setToolTip(str(value))

    @property
    def value(self) -> str:
        """The text shown."""
        return Label.value.fget(self)

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        self.native.setToolTip(str(text))


class _MiddleElision(QObject):
    """Paints a combo box's current text elided in the middle ("Ganglio…toma_3 labels"),
    where layer names differ, and keeps the full text in its tooltip."""

    def eventFilter(self, combo: QObject, event: QEvent) -> bool:
        if event.type() != QEvent.Type.Paint or not isinstance(combo, QComboBox):
            return False
        if combo.isEditable():
            return False
        painter = QStylePainter(combo)
        option = QStyleOptionComboBox()
        combo.initStyleOption(option)
        painter.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, option)
        field = combo.style().subControlRect(
            QStyle.ComplexControl.CC_ComboBox,
            option,
            QStyle.SubControl.SC_ComboBoxEditField,
            combo,
        )
        option.currentText = elided_middle(combo.fontMetrics(), option.currentText, field.width())
        painter.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, option)
        return True


def elided_middle(metrics: Any, text: str, width: int) -> str:
    """``text`` shortened in the middle to fit ``width`` pixels of ``metrics``' font."""
    return metrics.elidedText(text, Qt.TextElideMode.ElideMiddle, max(0, width))


_MIDDLE_ELISION = _MiddleElision()


def compact_combo_boxes(widget: QWidget) -> None:
    """Let every combo box under ``widget`` shrink to :data:`COMBO_MIN_CHARACTERS`
    characters, eliding long names in the middle, with the full name on hover."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
        combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)
        combo.installEventFilter(_MIDDLE_ELISION)
        combo.setToolTip(combo.currentText())
        combo.currentTextChanged.connect(combo.setToolTip)
