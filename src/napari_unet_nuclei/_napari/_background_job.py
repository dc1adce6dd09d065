"""One background job at a time per dock: the job runner that Train, Segment, Evaluate and
Annotate next share.

The job is a plain generator of the engine (or of :mod:`._jobs`) taking a ``stop`` event;
it runs in a napari ``thread_worker`` so the GUI never blocks. The runner owns the job's
stop event, Cancel, failures, progress and what happens when the dock closes:

- its events come back on the GUI thread: a :class:`~._jobs.JobFailed` becomes one
  sentence in the status line and an error notification (never a traceback), a
  :class:`~napari_unet_nuclei.notices.Notice` a warning notification (and the dock's
  ``_on_notice``), any other event goes to the dock's ``_on_event``;
- its return value goes to ``_on_returned``, an exception to ``_on_errored``, other
  Python warnings (numpy's, torch's) to notifications; ``_on_finished`` re-enables the controls;
- :meth:`cancel` sets the stop event, stops the worker (:meth:`_stop_worker`) and says so;
- closing the dock cancels its job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

from napari.qt.threading import thread_worker

from napari_unet_nuclei._napari._jobs import JobFailed
from napari_unet_nuclei._napari._notify import (
    error_sentence,
    relay_warnings,
    report_error,
    report_warning,
)
from napari_unet_nuclei._napari._warmup import warm_up_engine_soon
from napari_unet_nuclei._napari.model_registry import registry_for, unwrap_viewer
from napari_unet_nuclei.notices import Notice

__all__ = ["PROGRESS_STEPS", "BackgroundJobMixin"]

#: Resolution of the docks' progress bars.
PROGRESS_STEPS = 1000


class BackgroundJobMixin:
    """Job runner for a magicgui ``Container`` dock.

    The dock calls :meth:`_attach_to_viewer` first thing after ``Container.__init__`` and
    provides ``status`` (a text widget), ``progress`` (a progress bar with maximum
    :data:`PROGRESS_STEPS`) and ``_enable_controls(running)``, which switches its Run and
    Cancel buttons. It overrides the ``_on_*`` hooks it needs.
    """

    job_title: ClassVar[str] = "The job"
    #: What the status line says after Cancel.
    cancel_message: ClassVar[str] = "Cancelled."
    worker: Any = None
    _busy: bool = False
    _closed: bool = False

    def _attach_to_viewer(self, viewer: Any) -> Any:
        """Start importing the engine in the background, take the viewer's shared model
        registry, set up the job state and stop the job when the widget is destroyed.

        Returns the viewer (unwrapped when napari hands over a proxy).
        """
        warm_up_engine_soon()
        viewer = unwrap_viewer(viewer)
        self._viewer = viewer
        self.registry = registry_for(viewer)
        self.worker = None
        self._stop = threading.Event()
        self._busy = False
        self._closed = False
        self.native.destroyed.connect(self._on_destroyed)  # type: ignore[attr-defined]
        return viewer

    # ------------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        """Whether a job is in progress."""
        return self._busy

    @property
    def stop_requested(self) -> bool:
        """Whether the running (or last) job was asked to stop."""
        return self._stop.is_set()

    # ---------------------------------------------------------------------- running
    def _start_worker(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start ``job(*args, stop=<a new stop event>, **kwargs)`` in a thread worker wired
        to this dock's hooks; return the worker."""
        self._stop = threading.Event()
        worker = thread_worker(job, start_thread=False, ignore_errors=True)(
            *args, stop=self._stop, **kwargs
        )
        worker.yielded.connect(self._on_job_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        relay_warnings(worker)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        worker.start()
        return worker

    def cancel(self, message: str | None = None) -> None:
        """Ask the running job to stop (it checks between tiles or steps) and say so in the
        status line (``message``, by default :attr:`cancel_message`)."""
        if self.worker is None or not self._busy:
            return
        self._stop.set()
        self._stop_worker(self.worker)
        if not self._closed:
            self.status.value = message or self.cancel_message  # type: ignore[attr-defined]

    def _stop_worker(self, worker: Any) -> None:
        """Stop the worker after the stop event was set (at its next yield by default)."""
        worker.quit()

    def _show_progress(self, fraction: float) -> None:
        """Set the progress bar to ``fraction`` (0-1) of the job."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self.progress.value = int(round(PROGRESS_STEPS * fraction))  # type: ignore[attr-defined]

    def _enable_controls(self, running: bool) -> None:
        """Enable the Run buttons when idle and Cancel while ``running``."""
        raise NotImplementedError(f"{type(self).__name__} must switch its buttons")

    def _set_running(self, running: bool) -> None:
        self._busy = running
        if not self._closed:
            self._enable_controls(running)

    # ------------------------------------------------------------------------ hooks
    def _ignores_events(self) -> bool:
        """Whether the job's events are dropped now (after closing, by default)."""
        return self._closed

    def _on_job_event(self, event: Any) -> None:
        if self._ignores_events():
            return
        if isinstance(event, JobFailed):
            self._on_errored(event.message)
        elif isinstance(event, Notice):
            report_warning(event.message)
            self._on_notice(event)
        else:
            self._on_event(event)

    def _on_notice(self, notice: Notice) -> None:
        """A notice of the engine about the input, already shown as a notification."""

    def _on_event(self, event: Any) -> None:
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
