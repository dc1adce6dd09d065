"""One place that turns failures into one-sentence napari notifications."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "error_sentence",
    "format_seconds",
    "relay_warnings",
    "report_error",
    "report_info",
    "report_warning",
]


_QUOTED_FOLDERS = re.compile(r"(['\"])[^'\"]*[\\/]([^'\"\\/]+)\1")
_FOLDERS = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/]+[\\/])+(?=[^\s'\"\\/])")


def error_sentence(error: BaseException | str, doing: str) -> str:
    """``"<doing> failed: <first line of the error>"``, never a traceback.

    Folders are taken off the paths in the error (``'/home/me/data/bad.pt'`` becomes
    ``'bad.pt'``), so that the one line a notification shows is the sentence, not a path.
    """
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    first = text.splitlines()[0] if text else type(error).__name__
    first = _FOLDERS.sub("", _QUOTED_FOLDERS.sub(r"\1\2\1", first))
    return f"{doing} failed: {first}"


def report_error(message: str) -> None:
    """Show ``message`` as a napari error notification."""
    from napari.utils import notifications

    notifications.show_error(message)


def report_info(message: str) -> None:
    """Show ``message`` as a napari info notification."""
    from napari.utils import notifications

    notifications.show_info(message)


def report_warning(message: str) -> None:
    """Show ``message`` as a napari warning notification."""
    from napari.utils import notifications

    notifications.show_warning(message)


def relay_warnings(worker: Any) -> None:
    """Show the Python warnings raised inside ``worker`` as napari warning notifications.

    The engine announces input it changed or finds suspicious with warnings (an RGB image
    turned grey, NaN pixels, labels without nuclei...). superqt's worker catches them and
    emits ``warned``, but napari 0.9's worker never connects that signal (its notifying
    mixin is not initialised), so they would be lost.
    """

    def show(args: tuple) -> None:
        report_warning(str(args[0]))

    worker.warned.connect(show)


def format_seconds(seconds: float | None) -> str:
    """``"2 min 05 s"``, ``"42 s"`` or ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
