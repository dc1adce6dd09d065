"""Progress on the terminal for the command line and the demo: tqdm bars and training.

On a terminal, progress is a tqdm bar. When stderr is not a terminal (a log file, a
cluster job's output), it is plain lines instead, one per epoch or per image, without the
carriage returns a bar redraws itself with.
"""

from __future__ import annotations

import sys
from typing import Any

from napari_unet_nuclei.events import EpochEnd, TrainingFinished, TrainingStarted, TrainingStep

__all__ = ["PlainProgress", "progress_bar", "train_with_progress"]


class PlainProgress:
    """The parts of tqdm's interface the command line uses, as plain lines.

    Nothing is written per step: the callers' own lines (one per epoch, one per image,
    through :meth:`write`, to stdout like ``tqdm.write``) are the progress, with a line on
    stderr when the work starts and when it ends.
    """

    def __init__(self, total: float | None, desc: str) -> None:
        self.total, self.desc, self.n, self.unit = total, desc, 0, "step"
        print(f"{desc}: started", file=sys.stderr, flush=True)

    def update(self, amount: float = 1) -> None:
        self.n += amount

    def refresh(self) -> None:
        """Nothing to redraw."""

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        """Per-step values are not written to a log."""

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """Per-frame values are not written to a log."""

    def write(self, text: str, file: Any = None) -> None:
        print(text, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        print(f"{self.desc}: done ({self.n:g} {self.unit})", file=sys.stderr, flush=True)


def progress_bar(total: float | None, desc: str) -> Any:
    """A tqdm bar on stderr counting ``total`` units (steps, seconds or images), or
    :class:`PlainProgress` when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return PlainProgress(total, desc)
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=True
    )


def train_with_progress(
    items: list[Any],
    val_items: list[Any] | None,
    config: Any,
    init_model: Any = None,
    quiet: bool = False,
    replay_items: list[Any] | None = None,
) -> Any:
    """Train on dataset items with a progress bar on stderr; return the model.

    Parameters
    ----------
    items : list of LabelledImage
        Training images with their labels.
    val_items : list of LabelledImage or None
        Validation images; None: the configured fraction of ``items`` is held out.
    config : TrainingConfig
        The recipe.
    init_model : NucleiModel, optional
        Fine-tune a copy of this model.
    quiet : bool
        No progress bar (the epoch lines and the final message still go to stderr).
    replay_items : list of LabelledImage, optional
        Images the start model learned from, replayed in each batch (see
        :func:`napari_unet_nuclei.data.public_data.replay_sample`).

    Returns
    -------
    NucleiModel or None
        The model (None when training stopped before the first epoch ended).
    """
    from napari_unet_nuclei.train.training import train

    options: dict[str, Any] = {"names": [item.name for item in items], "init_model": init_model}
    if replay_items:
        options.update(
            replay_images=[item.image for item in replay_items],
            replay_labels=[item.labels for item in replay_items],
        )
    if val_items is not None:
        options.update(
            val_images=[item.image for item in val_items],
            val_labels=[item.labels for item in val_items],
            val_names=[item.name for item in val_items],
        )
    bar = None
    model = None
    for event in train(
        [item.image for item in items], [item.labels for item in items], config, **options
    ):
        if isinstance(event, TrainingStarted) and not quiet:
            total = event.total_steps if event.total_steps else event.time_budget
            unit = "step" if event.total_steps else "s"
            bar = progress_bar(total, f"training on {event.device} ({event.precision})")
            bar.unit = unit
        elif isinstance(event, TrainingStep) and bar is not None:
            if bar.unit == "step":
                bar.update(1)
            else:
                bar.n = min(bar.total, round(event.elapsed, 1))
                bar.refresh()
            bar.set_postfix(loss=f"{event.loss:.3f}", epoch=event.epoch, refresh=False)
        elif isinstance(event, EpochEnd) and bar is not None:
            nuclei = (
                f"  nuclei: object F1 {event.object_f1:.4f}, {event.merges} merged"
                if event.object_f1 == event.object_f1
                else ""
            )
            bar.write(
                f"epoch {event.epoch:3d}  loss {event.train_loss:.4f}  val precision "
                f"{event.val_precision:.3f}  recall {event.val_recall:.3f}  F1 "
                f"{event.val_f1:.4f}{nuclei}"
            )
        elif isinstance(event, TrainingFinished):
            model = event.model
            if bar is not None:
                bar.close()
            if event.message:
                print(event.message, file=sys.stderr)
    return model
