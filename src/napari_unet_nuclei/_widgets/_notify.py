"""One place that turns failures into one-sentence napari notifications."""

from __future__ import annotations

__all__ = ["error_sentence", "report_error", "report_info", "report_warning"]


def error_sentence(error: BaseException | str, doing: str) -> str:
    """``"<doing> failed: <first line of the error>"``, never a traceback."""
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    first = text.splitlines()[0] if text else type(error).__name__
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
