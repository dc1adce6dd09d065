"""The Train widget's job: one retraining round, off the GUI thread. Plain values, no Qt.

It gathers the training data (frames copied from the open layers, with their annotated
maps, plus the project's training images), keeps the project's held-out images out of
it, trains with :func:`napari_unet_nuclei.train.training.train`, and with a project open
records the round in the ledger and scores it on the held-out set.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei._napari._jobs import guarded_job, until_stopped
from napari_unet_nuclei._napari._layers import TrainingFrames
from napari_unet_nuclei.events import TrainingFinished
from napari_unet_nuclei.project.folder import HELD_OUT, TRAIN, TrainingProject, array_sha256
from napari_unet_nuclei.project.ledger import Ledger, data_item, score_held_out

__all__ = ["JobNotice", "RoundRecorded", "ScoringHeldOut", "round_job"]


@dataclass(frozen=True)
class JobNotice:
    """Something the user should know about the data (shown as a notification)."""

    message: str


@dataclass(frozen=True)
class DataGathered:
    """How many images the round trains on, from where."""

    n_layer: int
    n_project: int
    annotated_pixels: int


@dataclass(frozen=True)
class ScoringHeldOut:
    """The round's model is being scored on ``n_images`` held-out images."""

    n_images: int


@dataclass(frozen=True)
class RoundRecorded:
    """A round was written to the ledger (``scored``: with its held-out scores)."""

    round: Any
    warning: str | None = None
    scored: bool = False


def _gather(
    layers: TrainingFrames, project: Any, use_project: bool
) -> tuple[list[np.ndarray], list[np.ndarray], list[Any], list[str], list[dict], list[str]]:

    held = project.held_out_image_hashes() if project is not None else set()
    images, labels, annotated, names, items, dropped = [], [], [], [], [], []
    layer_hashes = set()
    for image, label, ann, name in zip(
        layers.images, layers.labels, layers.annotated, layers.names
    ):
        digest = array_sha256(image)
        if digest in held:
            dropped.append(name)
            continue
        layer_hashes.add(digest)
        images.append(image)
        labels.append(label)
        annotated.append(ann)
        names.append(name)
        items.append(data_item(name, image, label, ann, "layer"))
    if use_project and project is not None:
        for sample in project.samples(TRAIN):
            if sample.entry.image_sha256 in layer_hashes:
                continue  # the open layer holds the newest labels of this image
            name = sample.entry.name
            if name in names:
                name = f"{name} (project)"
            images.append(sample.image)
            labels.append(sample.labels)
            annotated.append(sample.annotated)
            names.append(name)
            items.append(data_item(name, sample.image, sample.labels, sample.annotated, "project"))
    return images, labels, annotated, names, items, dropped


@guarded_job
def round_job(
    layers: TrainingFrames,
    config: Any,
    *,
    project_folder: str | None = None,
    use_project: bool = True,
    init_model: Any = None,
    started_from: str | None = None,
    stop: threading.Event,
) -> Generator[Any, None, None]:
    """Train one round; with a project, record it in the ledger and score it.

    Parameters
    ----------
    layers : TrainingFrames
        Frames from the open layers (may be empty when the project has images).
    config : TrainingConfig
        Training settings.
    project_folder : str, optional
        The open project folder.
    use_project : bool
        Also train on the project's training images.
    init_model : NucleiModel, optional
        Fine-tune a copy of this model.
    started_from : str, optional
        Session name of ``init_model``, recorded in the ledger.
    stop : threading.Event
        Set to stop training after the current step (the best weights are kept and the
        round is still recorded).

    Yields
    ------
    JobNotice, DataGathered, training events, RoundRecorded, ScoringHeldOut
    """
    from napari_unet_nuclei.train.training import train

    project = TrainingProject.open(project_folder) if project_folder else None
    images, labels, annotated, names, items, dropped = _gather(layers, project, use_project)
    if dropped:
        yield JobNotice(
            f"{len(dropped)} frame(s) left out of training because they are held-out images "
            f"of the project: {', '.join(dropped[:3])}{'...' if len(dropped) > 3 else ''}."
        )
    if not images:
        raise ValueError(
            "no training images: pick an image and its labels, or add images to the project"
        )
    yield DataGathered(
        n_layer=sum(1 for item in items if item["source"] == "layer"),
        n_project=sum(1 for item in items if item["source"] == "project"),
        annotated_pixels=int(sum(item["annotated_pixels"] for item in items)),
    )
    events = train(
        images,
        labels,
        config,
        names=names,
        annotated=annotated,
        init_model=init_model,
        should_stop=stop.is_set,
    )
    final = None
    # Pool threads are reused: a generator abandoned inside ``torch.inference_mode()`` by
    # an earlier job would leave this thread without autograd.
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        for event in until_stopped(events, stop):
            if isinstance(event, TrainingFinished):
                final = event
            yield event
    if final is None or not final.history or project is None:
        return
    summary = final.model.summary
    ledger = Ledger(project.folder)
    recorded = ledger.record(
        final.model,
        data=items,
        settings=config.to_dict(),
        training={
            "stop_reason": final.reason,
            "epochs": final.epochs,
            "steps": final.steps,
            "seconds": round(final.elapsed, 2),
            "best_epoch": summary.get("best_epoch"),
            "best_val_f1": summary.get("best_val_f1"),
            "val_names": summary.get("val_names", []),
        },
        started_from=started_from,
    )
    yield RoundRecorded(recorded)
    held = project.samples(HELD_OUT)
    if not held:
        return
    yield ScoringHeldOut(len(held))
    scores = score_held_out(
        final.model,
        [s.image for s in held],
        [s.labels for s in held],
        [s.annotated for s in held],
        [s.entry.name for s in held],
        device=config.device,
    )
    recorded = ledger.set_held_out(recorded.number, scores)
    yield RoundRecorded(recorded, ledger.regression_warning(recorded.number), scored=True)
