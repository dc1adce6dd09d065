"""Small typed progress events yielded by the engine's generators.

The command line prints them with a progress bar; the napari widgets turn them into a
progress bar and a live plot. They hold plain values only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

__all__ = [
    "BatchFinished",
    "BatchStarted",
    "BestModel",
    "EpochEnd",
    "FrameDone",
    "ImageDone",
    "TileDone",
    "TrainingFinished",
    "TrainingStarted",
    "TrainingStep",
    "run_to_end",
]


@dataclass(frozen=True)
class TrainingStarted:
    """Training is set up: sizes of the data and the plan."""

    n_train_images: int
    n_val_images: int
    steps_per_epoch: int
    total_steps: int | None
    time_budget: float | None
    device: str
    precision: str


@dataclass(frozen=True)
class TrainingStep:
    """One optimiser step is done."""

    epoch: int
    step: int
    global_step: int
    total_steps: int | None
    loss: float
    elapsed: float
    eta: float | None
    fraction_done: float


@dataclass(frozen=True)
class EpochEnd:
    """An epoch ended; validation metrics are NaN when there is no validation data.

    ``object_f1`` and ``merges`` score the validation nuclei (NaN and -1 when training
    chooses by pixels or has no validation images).
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_precision: float
    val_recall: float
    val_f1: float
    val_iou: float
    elapsed: float
    eta: float | None
    object_f1: float = math.nan
    merges: int = -1


@dataclass(frozen=True)
class BestModel:
    """The weights of this epoch are the best so far on validation and have been kept."""

    epoch: int
    val_f1: float


@dataclass(frozen=True)
class TrainingFinished:
    """Training ended; ``model`` holds the best-on-validation weights."""

    model: NucleiModel
    reason: str  # "completed", "time_budget", "cancelled", "diverged"
    epochs: int
    steps: int
    elapsed: float
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class TileDone:
    """Tiled inference finished one batch of tiles of one frame."""

    frame: int
    n_frames: int
    tiles_done: int
    n_tiles: int


@dataclass(frozen=True)
class FrameDone:
    """Inference finished one 2-D frame of a stack."""

    frame: int
    n_frames: int
    result: Any = None


@dataclass(frozen=True)
class BatchStarted:
    """A batch run is set up: images found, already done (skipped) and to segment."""

    n_images: int
    n_todo: int
    n_skipped: int
    workers: int  # 0: in this process
    scheduler: str  # "in-process", "local cluster" or the scheduler address


@dataclass(frozen=True)
class ImageDone:
    """One image of a batch is finished (or skipped because done, or failed)."""

    index: int
    n_images: int
    name: str
    status: str  # "done", "skipped", "failed"
    output: str
    nuclei: int
    foreground_fraction: float
    seconds: float
    error: str = ""
    diameter: float = float("nan")  # nucleus diameter (px), given or estimated
    resized_frames: int = 0  # frames resized to the size the model learned


@dataclass(frozen=True)
class BatchFinished:
    """The batch run ended; ``rows`` is the summary table (one dict per image)."""

    n_done: int
    n_skipped: int
    n_failed: int
    seconds: float
    images_per_second: float
    summary_path: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_to_end(
    generator: Generator[Any, None, Any], progress: Callable[[Any], None] | None
) -> Any:
    """Run an engine generator to its end, passing each event to ``progress``; return its
    return value (what ``train_model``, ``predict`` and ``predict_instances`` do with their
    generators).

    Parameters
    ----------
    generator : generator
        One of the engine's ``iter_*`` or ``train`` generators.
    progress : callable, optional
        Called with every yielded event.

    Returns
    -------
    Any
        The generator's return value.
    """
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)
