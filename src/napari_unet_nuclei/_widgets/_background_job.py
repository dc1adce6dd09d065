"""One background job at a time per widget: the ``thread_worker`` wiring that Train,
Segment, Evaluate and Annotate next share.

The job is a plain generator of the engine (or of :mod:`._jobs`); it runs in a napari
``thread_worker`` so the GUI never blocks. Its events come back on the GUI thread through
``_on_yielded``, its return value through ``_on_returned``, an exception through
``_on_errored`` (a notification with one sentence, no traceback), Python warnings as
notifications, and ``_on_finished`` re-enables the controls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

from napari.qt.threading import thread_worker

from ._notify import error_sentence, relay_warnings, report_error
from ._warmup import warm_up_engine
from .model_registry import registry_for, unwrap_viewer


class BackgroundJobMixin:
    """Mixin for a magicgui ``Container`` that runs long jobs off the GUI thread.

    The widget calls :meth:`_attach_to_viewer` first thing after ``Container.__init__``
    and provides ``status`` (a text widget), ``_enable_controls(running)``, which switches
    its Run/Cancel buttons, and ``cancel()``, which sets the job's stop flag. Subclasses
    override the ``_on_*`` hooks they need.
    """

    job_title: ClassVar[str] = "The job"
    worker: Any = None
    _busy: bool = False
    _closed: bool = False

    def _attach_to_viewer(self, viewer: Any) -> Any:
        """Start importing the engine in the background, take the viewer's shared model
        registry, set up the job state and stop the job when the widget is destroyed.

        Returns the viewer (unwrapped when napari hands over a proxy).
        """
        warm_up_engine()
        viewer = unwrap_viewer(viewer)
        self._viewer = viewer
        self.registry = registry_for(viewer)
        self.worker = None
        self._stop = threading.Event()
        self._busy = False
        self._closed = False
        self.native.destroyed.connect(self._on_destroyed)  # type: ignore[attr-defined]
        return viewer

    def _start_worker(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start ``job(*args, **kwargs)`` in a thread worker wired to this widget's hooks."""
        worker = thread_worker(job, start_thread=False, ignore_errors=True)(*args, **kwargs)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        relay_warnings(worker)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        worker.start()
        return worker

    def _enable_controls(self, running: bool) -> None:
        """Enable the Run buttons when idle and Cancel while ``running``."""
        raise NotImplementedError(f"{type(self).__name__} must switch its buttons")

    def _set_running(self, running: bool) -> None:
        self._busy = running
        if not self._closed:
            self._enable_controls(running)

    def _on_yielded(self, event: Any) -> None:
        """Progress event of the job (GUI thread)."""

    def _on_returned(self, result: Any) -> None:
        """Return value of the job (GUI thread)."""

    def _report_failure(self, error: BaseException | str, doing: str) -> None:
        """Say in the status line and in an error notification, in one sentence, why
        ``doing`` (e.g. "Segmentation") failed."""
        message = error_sentence(error, doing)
        self.status.value = message  # type: ignore[attr-defined]
        report_error(message)

    def _on_errored(self, error: BaseException | str) -> None:
        if not self._closed:
            self._report_failure(error, self.job_title)

    def _on_finished(self) -> None:
        self._set_running(False)

    def _on_destroyed(self, *_args: Any) -> None:
        self._closed = True
        self.cancel()
