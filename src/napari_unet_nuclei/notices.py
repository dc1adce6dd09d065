"""The engine's notices: sentences for the user about their input.

A notice says what the engine changed in the input or finds suspicious in it (an RGB
image made grey, NaN pixels, labels without nuclei...). :func:`warn_user` gives it to the
sink of the running job when one is set (:func:`notices_to`: napari's docks show notices as
notifications) and otherwise raises it as a Python warning (the command line prints it).
The sink lives in a context variable, so each thread has its own: unlike
``warnings.catch_warnings``, which swaps process-wide state and loses warnings when two
threads enter and leave it out of order, a notice always reaches its own job.

Every layer of the package may import this module; it imports none of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Notice", "notices_to", "warn_user"]


@dataclass(frozen=True)
class Notice:
    """A sentence for the user about their input, and its warning category."""

    message: str
    category: type[Warning] = UserWarning


_notice_sink: contextvars.ContextVar[Callable[[Notice], None] | None] = contextvars.ContextVar(
    "napari_unet_nuclei_notice_sink", default=None
)


def warn_user(message: str, category: type[Warning] = UserWarning, stacklevel: int = 1) -> None:
    """Tell the user ``message``: to the current job's sink, else as a Python warning.

    Parameters
    ----------
    message : str
        One sentence naming the problem (and the fix, where there is one).
    category : type of Warning
        The warning class (``ImageWarning``, ``PartialLabelsWarning``...).
    stacklevel : int
        As for :func:`warnings.warn`, counted from the caller of this function.
    """
    sink = _notice_sink.get()
    if sink is None:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
    else:
        sink(Notice(message, category))


@contextlib.contextmanager
def notices_to(sink: Callable[[Notice], None]) -> Iterator[None]:
    """Send :func:`warn_user`'s notices from this thread (this context) to ``sink``.

    Parameters
    ----------
    sink : callable
        Called with each :class:`Notice` while the block runs.
    """
    token = _notice_sink.set(sink)
    try:
        yield
    finally:
        _notice_sink.reset(token)
