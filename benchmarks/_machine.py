"""The machine a benchmark ran on, recorded the same way in every results file, and the
results file itself written the same way."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "write_results"]


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


def write_results(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON to ``path`` (folders created), say so, return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    print(f"wrote {target}")
    return target
