"""Training as a generator of progress events.

``train`` yields :mod:`napari_unet_nuclei.events` while it runs and finally a
:class:`~napari_unet_nuclei.events.TrainingFinished` holding the model with the best
validation F1. Stopping is possible after any step: through ``should_stop`` or by closing
the generator. The command line and the napari widgets consume the same generator.

Defaults (loss = BCE + soft Dice, AdamW, warm-up then cosine decay over the run, which
works the same for an epoch count and for a time budget) are the ones the benchmark in
``benchmarks/quality.py`` measures.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei.events import (
    BestModel,
    EpochEnd,
    TrainingFinished,
    TrainingStarted,
    TrainingStep,
    run_to_end,
)
from napari_unet_nuclei.io.labelled import check_training_labels
from napari_unet_nuclei.nn.acceleration import resolve_precision
from napari_unet_nuclei.nn.devices import resolve_device
from napari_unet_nuclei.nn.model import NucleiModel, create_model
from napari_unet_nuclei.nn.normalization import ImageWarning
from napari_unet_nuclei.notices import warn_user
from napari_unet_nuclei.prediction.nucleus_size import trained_diameter
from napari_unet_nuclei.train.losses import LOSSES, OBJECTIVES
from napari_unet_nuclei.train.nucleus_choice import candidate_rules
from napari_unet_nuclei.train.patches import PatchSampler, ReplayMix, effective_patch_size
from napari_unet_nuclei.train.training_config import TrainingConfig
from napari_unet_nuclei.train.training_data import (
    TargetRecipe,
    choose_validation,
    prepare_split,
    warn_when_images_are_tiny,
    warn_when_labels_are_partial,
    warn_when_painted_with_one_value,
)
from napari_unet_nuclei.train.training_loop import RunPlan, TrainingRun

__all__ = ["TrainingConfig", "iter_train", "train", "train_model"]

_SEED_LOCK = threading.Lock()

# With a time budget an epoch (the steps between validations) is at least this long.
MIN_STEPS_PER_EPOCH_TIMED = 30


TrainingEvent = TrainingStarted | TrainingStep | EpochEnd | BestModel | TrainingFinished


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainingConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    annotated: Sequence[np.ndarray | None] | None = None,
    val_images: Sequence[np.ndarray] | None = None,
    val_labels: Sequence[np.ndarray] | None = None,
    val_names: Sequence[str] | None = None,
    init_model: NucleiModel | None = None,
    should_stop: Callable[[], bool] | None = None,
    replay_images: Sequence[np.ndarray] | None = None,
    replay_labels: Sequence[np.ndarray] | None = None,
) -> Generator[TrainingEvent, None, NucleiModel]:
    """Train a U-Net, yielding progress events.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        2-D training images of any size and real dtype.
    labels : sequence of numpy.ndarray
        Matching label images (binary or instance ids; ``> 0`` is nucleus).
    config : TrainingConfig, optional
        Settings; defaults when omitted.
    names : sequence of str, optional
        Image names, recorded in the model summary.
    annotated : sequence of (numpy.ndarray or None), optional
        Per image, a boolean map of the pixels whose labels are complete; the loss is
        computed there only (``None``: the whole image).
    val_images, val_labels, val_names : optional
        An explicit validation set; otherwise ``config.validation_fraction`` of the
        images is held out.
    init_model : NucleiModel, optional
        Start from this model's weights (fine-tuning); it is copied, never modified.
    should_stop : callable, optional
        Polled after every step; training stops (keeping the best weights) when it
        returns True.
    replay_images, replay_labels : sequence of numpy.ndarray, optional
        Images (with their nucleus labels) the start model learned from, replayed beside
        the training images (``config.replay_share`` of each batch) so that a fine-tune
        does not forget them; see :func:`napari_unet_nuclei.data.public_data.replay_sample`.
        They are never validated on.

    Yields
    ------
    TrainingStarted, TrainingStep, EpochEnd, BestModel, TrainingFinished

    Returns
    -------
    NucleiModel
        The trained model (also in the final ``TrainingFinished`` event).
    """
    # Phase 1: check the inputs, prepare the data, the model and the schedule.
    config = config or TrainingConfig()
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images.")
    if len(images) == 0:
        raise ValueError("No training images: give at least one image with its labels.")
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(images))]
    for label_message in check_training_labels(labels, names):  # DataError for bad values
        warn_user(label_message, ImageWarning, stacklevel=2)
    _check_config(config)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    # Not named `precision`: that is a validation score below.
    compute_precision = resolve_precision(config.precision, device, training=True)
    fine_tuning = init_model is not None
    model = _start_model(config, init_model)
    multiple = model.config.size_multiple
    map_names = model.object_maps
    separating = config.separates(map_names)
    if map_names:
        warn_when_painted_with_one_value(labels, names)

    # A fine-tune learns at the size its start model learned (see TargetRecipe).
    learned = trained_diameter(init_model.summary) if fine_tuning else None
    recipe = TargetRecipe(model.normalization, map_names, separating, learned)
    data = prepare_split(images, labels, names, annotated, recipe)
    if all(weight is None for weight in data.weights):
        warn_when_labels_are_partial(images, labels)
    warn_when_images_are_tiny(data.images)
    train_data, val_data = choose_validation(
        data,
        recipe,
        config.validation_names,
        config.validation_fraction,
        rng,
        multiple,
        val_images=val_images,
        val_labels=val_labels,
        val_names=val_names,
    )

    patch = effective_patch_size(
        [im.shape for im in train_data.images], config.patch_size, multiple
    )
    sampler = PatchSampler(train_data.images, train_data.targets(), patch, train_data.weights, rng)
    replay = None
    if replay_images is not None and len(replay_images) and config.replay_share > 0:
        replayed = prepare_split(
            replay_images, _paired(replay_images, replay_labels), None, None, recipe
        )
        replay = PatchSampler(replayed.images, replayed.targets(), patch, None, rng)
    batches = ReplayMix(sampler, replay, config.replay_share)
    by_time = config.stops_by_time
    steps_per_epoch = config.steps_per_epoch or max(
        MIN_STEPS_PER_EPOCH_TIMED if (by_time or config.steps) else 4,
        int(math.ceil(sampler.n_pixels / (config.batch_size * patch * patch))),
    )
    if config.steps:
        steps_per_epoch = min(steps_per_epoch, config.steps)
        total_steps: int | None = int(config.steps)
        epochs = int(math.ceil(config.steps / steps_per_epoch))
    elif by_time:
        total_steps, epochs = None, None
    else:
        epochs = config.epochs or config.DEFAULT_EPOCHS
        total_steps = epochs * steps_per_epoch
    inherited_rule = _inherited_rule(init_model)
    rules = candidate_rules(model.config.channel_names, inherited_rule)
    if not (map_names and config.choose_instance_rule):
        rules = rules[:1]
    plan = RunPlan(
        config=config,
        model=model,
        init_model=init_model,
        device=device,
        compute_precision=compute_precision,
        train_data=train_data,
        val_data=val_data,
        sampler=sampler,
        batches=batches,
        replayed_images=0 if replay is None else len(replay_images),
        patch=patch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=epochs,
        learned_diameter=learned,
        rules=rules,
        inherited_rule=inherited_rule,
    )

    # Phase 2: the epochs, each validated and chosen by nuclei.
    run = TrainingRun(plan, should_stop)
    yield run.started_event()
    run.begin()
    while run.more_epochs():
        losses = yield from run.run_epoch()
        if not run.epoch_ran(losses):
            break
        yield from run.end_epoch(losses)

    # Phase 3: the best epoch's weights, threshold, instance rule and summary.
    model = run.finish()
    yield TrainingFinished(
        model, run.reason, run.epoch, run.global_step, run.elapsed, run.history, run.message
    )
    return model


def _paired(images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None) -> Sequence:
    """The replayed images' labels, refused unless there is one per image."""
    if labels is None or len(labels) != len(images):
        raise ValueError(
            "replay_images and replay_labels must be given together, one label image per image."
        )
    return labels


def _check_config(config: TrainingConfig) -> None:
    """Refuse settings that cannot train, with a sentence naming the fix."""
    if config.loss not in LOSSES:
        raise ValueError(f"Unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}.")
    if config.objective not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {config.objective!r}; choose one of {', '.join(OBJECTIVES)}."
        )
    if config.choose_by not in ("objects", "pixels"):
        raise ValueError(f"choose_by must be 'objects' or 'pixels', got {config.choose_by!r}.")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}.")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"steps must be at least 1, got {config.steps}.")
    if not 0.0 <= config.replay_share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {config.replay_share}.")


def _start_model(config: TrainingConfig, init_model: NucleiModel | None) -> NucleiModel:
    """A copy of ``init_model`` (fine-tuning), or a new network seeded by ``config.seed``."""
    if init_model is not None:
        return init_model.copy()
    # Seeded initial weights without disturbing (or racing on) the global RNG.
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return create_model(
            config.features,
            config.depth,
            config.normalization,
            name=config.name,
            object_maps=tuple(config.object_maps),
        )


def _inherited_rule(init_model: NucleiModel | None) -> dict[str, Any] | None:
    rule = init_model.summary.get("instance_config") if init_model is not None else None
    return dict(rule) if isinstance(rule, dict) else None


def train_model(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainingConfig | None = None,
    *,
    progress: Callable[[TrainingEvent], None] | None = None,
    **options: Any,
) -> NucleiModel:
    """Run :func:`train` to the end and return the model.

    Parameters
    ----------
    images, labels, config
        As for :func:`train`.
    progress : callable, optional
        Called with every event.
    **options
        Other keyword arguments of :func:`train`.

    Returns
    -------
    NucleiModel
    """
    return run_to_end(train(images, labels, config, **options), progress)


#: :func:`train` under the name of the other streaming twins (``iter_predict``...).
iter_train = train


def with_overrides(config: TrainingConfig, **changes: Any) -> TrainingConfig:
    """Return a copy of ``config`` with some settings changed."""
    return replace(config, **changes)
