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

import copy
import math
import platform
import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei import __version__
from napari_unet_nuclei.events import (
    BestModel,
    EpochEnd,
    TrainingFinished,
    TrainingStarted,
    TrainingStep,
    run_to_end,
)
from napari_unet_nuclei.nn.acceleration import autocast, resolve_precision
from napari_unet_nuclei.nn.devices import resolve_device
from napari_unet_nuclei.nn.model import NucleiModel, create_model
from napari_unet_nuclei.prediction.nucleus_size import diameter_of_masks, trained_diameter
from napari_unet_nuclei.train.augmentation import augment_batch
from napari_unet_nuclei.train.losses import LOSSES, OBJECTIVES, map_loss, probability_loss
from napari_unet_nuclei.train.nucleus_choice import NucleusScore, candidate_rules
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
from napari_unet_nuclei.train.training_validation import (
    finish_choice,
    recalibrate_batchnorm,
    validate_split,
    validation_nuclei,
)

__all__ = ["TrainingConfig", "iter_train", "train", "train_model"]

_SEED_LOCK = threading.Lock()

# With a time budget an epoch (the steps between validations) is at least this long.
MIN_STEPS_PER_EPOCH_TIMED = 30


TrainingEvent = TrainingStarted | TrainingStep | EpochEnd | BestModel | TrainingFinished


def _learning_rate(base: float, fraction: float, warmup: float) -> float:
    if fraction < warmup:
        return base * (0.1 + 0.9 * fraction / warmup)
    progress = min(1.0, (fraction - warmup) / max(1e-9, 1.0 - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


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
    config = config or TrainingConfig()
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} label images.")
    if len(images) == 0:
        raise ValueError("No training images: give at least one image with its labels.")
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(images))]
    from napari_unet_nuclei.io.datasets import check_training_labels
    from napari_unet_nuclei.nn.normalization import ImageWarning

    for label_message in check_training_labels(labels, names):  # DataError for bad values
        warnings.warn(label_message, ImageWarning, stacklevel=2)
    _check_config(config)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    # Not named `precision`: that is a validation score below.
    compute_precision = resolve_precision(config.precision, device, training=True)
    fine_tuning = init_model is not None
    model = _start_model(config, init_model)
    multiple = model.config.size_multiple
    map_names = model.object_maps
    separating = bool(map_names) and config.objective == "separating"
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
    by_time = bool(config.time_budget) and not config.steps
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
    augmenter = torch.Generator().manual_seed(config.seed)

    network = model.network.to(device)
    channels_last = device.type == "cpu"  # oneDNN convolutions are faster channels-last
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    pin_memory = device.type == "cuda"
    freeze_batchnorm = fine_tuning if config.freeze_batchnorm is None else config.freeze_batchnorm
    _set_train_mode(network, freeze_batchnorm)
    peak_rate = config.fine_tune_learning_rate if fine_tuning else config.learning_rate
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=peak_rate, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=compute_precision == "fp16")
    parameters = [p for p in network.parameters() if p.requires_grad]
    averaged = [p.detach().clone() for p in parameters] if config.ema_decay > 0 else None
    balanced = [i for i, name in enumerate(map_names) if name == "boundary"] if separating else []
    by_objects = config.choose_by == "objects" and bool(val_data.images)
    inherited_rule = _inherited_rule(init_model)
    rules = candidate_rules(
        model.config.channel_names,
        inherited_rule,
    )
    if not (map_names and config.choose_instance_rule):
        rules = rules[:1]
    yield TrainingStarted(
        n_train_images=len(train_data.images),
        n_val_images=len(val_data.images),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        time_budget=None if config.steps else config.time_budget,
        device=str(device),
        precision={"fp16": "fp16-mixed", "bf16": "bf16-mixed"}.get(compute_precision, "fp32"),
    )

    def nuclei_of(logits: list[np.ndarray]) -> NucleusScore:
        nuclei = validation_nuclei(val_data, logits, model.config.channel_names)
        return nuclei.best_rule_at(rules, float(model.threshold))[0]

    start = time.perf_counter()
    best_state = copy.deepcopy(network.state_dict())
    last_good_state = best_state
    best_f1, best_epoch = -math.inf, 0
    best_nuclei: NucleusScore | None = None
    best_logits: list[np.ndarray] = []
    start_nuclei: NucleusScore | None = None
    if fine_tuning and by_objects:
        # The start model is the one to beat: an epoch is kept only when its nuclei are better.
        *_, start_logits = validate_split(network, val_data, device)
        start_nuclei = best_nuclei = nuclei_of(start_logits)
        best_logits = start_logits
    history: list[dict[str, float]] = []
    global_step, epoch, reason, message = 0, 0, "completed", ""

    def fraction_done() -> float:
        if total_steps:
            return min(1.0, global_step / total_steps)
        return min(1.0, (time.perf_counter() - start) / config.time_budget)

    while reason == "completed":
        if epochs is not None and epoch >= epochs:
            break
        epoch += 1
        losses = []
        for step in range(1, steps_per_epoch + 1):
            if total_steps and global_step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(peak_rate, fraction_done(), config.warmup_fraction)
            x, y, w = (torch.from_numpy(a) for a in batches.sample(config.batch_size))
            if config.augmentation.enabled:
                x, y, w = augment_batch(x, y, w, config.augmentation, augmenter)
            if pin_memory:
                x, y, w = (t.pin_memory() for t in (x, y, w))
            x, y, w = (t.to(device, non_blocking=pin_memory) for t in (x, y, w))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, compute_precision):
                logits = network(x)
            logits = logits.float()
            gap_factor = 1.0 + config.gap_weight * y[:, -1:] if separating else None
            loss = probability_loss(
                logits[:, :1],
                y[:, :1],
                w,
                config.dice_weight,
                config.loss,
                bce_weight=gap_factor,
            )
            if map_names:
                n_maps = len(map_names)
                loss = loss + config.map_weight * map_loss(
                    logits[:, 1 : 1 + n_maps], y[:, 1 : 1 + n_maps], w, balanced
                )
            if not torch.isfinite(loss):
                reason = "diverged"
                message = (
                    f"Training stopped at epoch {epoch}, step {step}: the loss became {loss.item()}. "
                    "The last good weights were kept; lower the learning rate or check the "
                    "images for NaN/Inf pixels."
                )
                network.load_state_dict(last_good_state)
                break
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            if averaged is not None:
                # Short memory at first, so that the average does not hold on to the
                # initial weights (the usual EMA warm-up).
                decay = min(config.ema_decay, (1 + global_step) / (10 + global_step))
                with torch.no_grad():
                    torch._foreach_lerp_(averaged, [p.detach() for p in parameters], 1 - decay)
            loss_value = loss.item()
            losses.append(loss_value)
            elapsed = time.perf_counter() - start
            done = fraction_done()
            eta = elapsed * (1 - done) / done if done > 0 else None
            yield TrainingStep(
                epoch, step, global_step, total_steps, loss_value, elapsed, eta, done
            )
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            if by_time and elapsed >= config.time_budget:
                reason = "time_budget"
                break
        if reason == "diverged":
            break
        if not losses:
            break
        raw_state = None
        if averaged is not None:
            # Validate (and keep) the averaged weights; training goes on from the raw ones.
            raw_state = copy.deepcopy(network.state_dict())
            with torch.no_grad():
                torch._foreach_copy_(parameters, averaged)
        if not freeze_batchnorm:
            recalibrate_batchnorm(
                network,
                sampler,
                config.batch_size,
                config.batchnorm_batches,
                device,
                config.seed + epoch,
            )
        val_loss, precision, recall, f1, iou, val_logits = validate_split(
            network, val_data, device
        )
        last_good_state = copy.deepcopy(network.state_dict())
        if raw_state is not None:
            network.load_state_dict(raw_state)
        nuclei = replace(nuclei_of(val_logits), pixel_f1=f1) if by_objects else None
        elapsed = time.perf_counter() - start
        done = fraction_done()
        eta = elapsed * (1 - done) / done if done > 0 else None
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_precision": precision,
            "val_recall": recall,
            "val_f1": f1,
            "val_iou": iou,
            "elapsed": elapsed,
        }
        if nuclei is not None:
            record.update(
                val_object_f1=nuclei.object_f1,
                val_merges=nuclei.merges,
                val_splits=nuclei.splits,
            )
        history.append(record)
        yield EpochEnd(
            epoch,
            record["train_loss"],
            val_loss,
            precision,
            recall,
            f1,
            iou,
            elapsed,
            eta,
            object_f1=math.nan if nuclei is None else nuclei.object_f1,
            merges=-1 if nuclei is None else nuclei.merges,
        )
        if nuclei is not None:
            # Beating the start model takes a real gain; among epochs, any gain counts.
            margin = start_nuclei.min_gain if best_epoch == 0 and start_nuclei else 0.0
            improved = nuclei.better_than(best_nuclei, margin) or (
                best_epoch == 0 and start_nuclei is None
            )
        else:
            score = f1 if not math.isnan(f1) else -record["train_loss"]
            improved = score >= best_f1
            best_f1 = max(best_f1, score)
        if improved:
            best_epoch, best_state, best_logits = epoch, last_good_state, val_logits
            best_nuclei = nuclei if nuclei is not None else best_nuclei
            if not math.isnan(f1):
                yield BestModel(epoch, f1)
        if reason == "completed" and by_time and elapsed >= config.time_budget:
            reason = "time_budget"

    network.load_state_dict(best_state)
    network.eval()
    choice = finish_choice(
        model,
        config,
        val_data,
        best_logits,
        rules,
        by_objects,
        kept_any=best_epoch > 0 or start_nuclei is not None,
    )
    model.network = network.cpu().to(memory_format=torch.contiguous_format)
    elapsed = time.perf_counter() - start
    best_record = next((r for r in history if r["epoch"] == best_epoch), {})
    previous = init_model.summary.get("rounds", []) if init_model is not None else []
    model.summary = {
        "trained_with": f"napari-unet-nuclei {__version__}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "train_names": list(train_data.names),
        "val_names": list(val_data.names),
        "epochs": epoch,
        "steps": global_step,
        "seconds": round(elapsed, 2),
        "stop_reason": reason,
        "patch_size": patch,
        "best_epoch": best_epoch,
        "best_val_f1": best_record.get("val_f1", math.nan),
        "best_val_precision": best_record.get("val_precision", math.nan),
        "best_val_recall": best_record.get("val_recall", math.nan),
        "best_val_iou": best_record.get("val_iou", math.nan),
        "best_val_object_f1": best_nuclei.object_f1 if best_nuclei else math.nan,
        "best_val_merges": best_nuclei.merges if best_nuclei else None,
        "start_val_object_f1": start_nuclei.object_f1 if start_nuclei else None,
        "kept_start_weights": bool(fine_tuning and by_objects and best_epoch == 0),
        "nucleus_diameter": learned
        or diameter_of_masks(
            [m if w is None else m & w for m, w in zip(train_data.masks, train_data.weights)]
        ),
        "replayed_images": 0 if replay is None else len(replay_images),
        "replayed_per_batch": batches.replayed_per_batch(config.batch_size),
        "fine_tuned_from": init_model.name if init_model is not None else None,
        "threshold_calibration": choice.get("calibration"),
        "config": config.to_dict(),
        "history": history,
        "rounds": [*previous, {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": epoch}],
    }
    if choice.get("instance_config"):
        model.summary["instance_config"] = choice["instance_config"]
        if choice.get("instance_rule_choice"):
            model.summary["instance_rule_choice"] = choice["instance_rule_choice"]
    elif isinstance(inherited_rule, dict):
        # A fine-tuned model keeps the instance rule of the model it started from (with
        # its own threshold).
        model.summary["instance_config"] = {**inherited_rule, "threshold": float(model.threshold)}
    yield TrainingFinished(model, reason, epoch, global_step, elapsed, history, message)
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


def _set_train_mode(network: torch.nn.Module, freeze_batchnorm: bool) -> None:
    """Training mode, with the BatchNorm layers in eval mode (their statistics kept) when
    ``freeze_batchnorm``."""
    network.train()
    if freeze_batchnorm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


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
