"""How many torch threads a background job may use while napari's GUI thread runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["gui_friendly_threads", "usable_cores"]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def gui_friendly_threads() -> Iterator[None]:
    """Let torch use all cores but one while a job runs, so the GUI thread keeps one.

    With every core busy in torch's OpenMP pool the GUI thread has to fight for CPU, and
    on a loaded machine the pool's threads spin waiting for each other (a step can take
    tens of times longer). Set in the worker thread; restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, usable_cores() - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
