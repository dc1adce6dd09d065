"""Run one blocking call in a background thread while the window keeps answering.

napari calls a sample-data function on the GUI thread and adds the layers it returns as
soon as it returns: there is no worker to hand the reading to. :func:`call_with_live_window`
runs the reading (and the warm-up of napari's first layers) in a thread and lets Qt process
events meanwhile, as a modal dialog does, so the window repaints and its timers run while
a sample is made; the caller still gets the return value (or the exception) as from a plain
call. Clicks and key presses wait in Qt's queue until the call returns, as they would behind a
blocking call: a second click on the sample's menu entry cannot start a second sample inside
the first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from qtpy.QtCore import QCoreApplication, QEventLoop, QThread

__all__ = ["call_with_live_window"]

T = TypeVar("T")

#: How often Qt's queued events are processed while the call runs (seconds).
EVENT_INTERVAL_S = 0.005


def call_with_live_window(work: Callable[[], T], name: str = "napari-unet-nuclei-call") -> T:
    """Return ``work()``, computed in a thread while the GUI thread keeps processing events.

    Parameters
    ----------
    work : callable
        The call, taking no arguments. It must not touch Qt widgets (it runs off the GUI
        thread).
    name : str
        The thread's name (seen in debuggers and profiles).

    Returns
    -------
    object
        What ``work`` returned. An exception it raised is raised here.

    Notes
    -----
    Off the GUI thread, or with no Qt application, ``work`` simply runs in the caller.
    """
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() != app.thread():
        return work()
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while not done.wait(EVENT_INTERVAL_S):
        app.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
