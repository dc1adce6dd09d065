"""The machine a benchmark ran on, recorded the same way in every results file."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["machine_info"]


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU count, processor, torch version and torch threads, then ``extra`` entries
    (e.g. ``load_average_at_end=os.getloadavg()``)."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **extra,
    }
