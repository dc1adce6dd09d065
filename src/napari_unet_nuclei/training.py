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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from . import __version__
from .acceleration import autocast, resolve_precision
from .augmentation import AugmentationConfig, augment_batch
from .devices import resolve_device
from .events import (
    BestModel,
    EpochEnd,
    TrainingFinished,
    TrainingStarted,
    TrainingStep,
    run_to_end,
)
from .inference import normalized_frame_logits
from .metrics import confusion_counts
from .model import NucleiModel, create_model
from .normalization import NormalizationConfig, normalize_frame
from .patches import PatchSampler, effective_patch_size

__all__ = ["TrainingConfig", "train", "train_model"]

_SEED_LOCK = threading.Lock()

# With a time budget an epoch (the steps between validations) is at least this long.
MIN_STEPS_PER_EPOCH_TIMED = 30

# Candidate default thresholds (probabilities) for the calibration on validation images.
CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.02 * i, 2) for i in range(21))

TrainingEvent = TrainingStarted | TrainingStep | EpochEnd | BestModel | TrainingFinished


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a training run.

    Parameters
    ----------
    features, depth : int
        Architecture of a new network (ignored when fine-tuning an existing model).
    epochs : int, optional
        Number of epochs. When neither ``epochs`` nor ``time_budget`` is given, 40.
    time_budget : float, optional
        Train for this many seconds instead (takes precedence over ``epochs``).
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate of AdamW.
    patch_size : int
        Side of the square training patches (smaller when all images are smaller).
    augmentation : AugmentationConfig
        Augmentation switches.
    validation_fraction : float
        Share of the images held out for validation when no validation set is given.
    validation_names : tuple of str
        Hold out the images with these names instead (takes precedence over the fraction).
    seed : int
        Seed of every random draw (weights, split, patches, augmentation).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``...
    precision : str
        ``"auto"`` (float16 mixed precision on CUDA, bfloat16 mixed precision on CPUs
        that compute it natively, float32 elsewhere), ``"fp32"``, ``"bf16"`` or
        ``"fp16"``. Validation always runs in float32.
    steps_per_epoch : int, optional
        Steps between validations; by default one pass over the training pixels, and at
        least 30 steps with a time budget (validating small data every few steps
        would spend a third of the budget on validation).
    batchnorm_batches : int
        Un-augmented batches used to recompute BatchNorm statistics before each
        validation (0 to skip).
    normalization : NormalizationConfig
        Intensity normalisation stored in the model.
    loss : str
        ``"bce+dice"`` (binary cross-entropy plus soft Dice over the batch),
        ``"bce+image-dice"`` (soft Dice per patch, averaged), ``"bce+lovasz"`` (plus the
        Lovasz hinge, a surrogate of the per-patch IoU) or ``"bce"``.
    dice_weight : float
        Weight of the second loss term (0 leaves binary cross-entropy alone).
    ema_decay : float
        When above 0, validate and keep an exponential moving average of the weights
        with this decay per step (e.g. 0.99) instead of the raw weights.
    calibrate_threshold : bool
        After training, set the model's default threshold to the probability in
        [0.3, 0.7] that gives the best mean F1 on the validation images (as StarDist
        optimises its thresholds); 0.5 when there is no validation set.
    object_maps : tuple of str
        Maps a new network learns beside the nucleus probability so that touching nuclei
        come apart as objects: ``"centre"`` and/or ``"boundary"`` (see
        :mod:`napari_unet_nuclei.object_targets`). Empty: the lab's probability-only
        U-Net. A fine-tuned model keeps the maps it has.
    map_weight : float
        Weight of each object map's binary cross-entropy in the loss.
    choose_instance_rule : bool
        With object maps and validation images: after training, store in the model the
        instance rule with the best validation object F1 among the distance watershed and
        the centre- and boundary-map seeds (the distance watershed unless a map gains at
        least 0.005), as the threshold is calibrated.
    """

    features: int = 8
    depth: int = 4
    epochs: int | None = None
    time_budget: float | None = None
    batch_size: int = 8
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    patch_size: int = 256
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    validation_fraction: float = 0.1
    validation_names: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    steps_per_epoch: int | None = None
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    warmup_fraction: float = 0.05
    loss: str = "bce+dice"
    dice_weight: float = 1.0
    ema_decay: float = 0.0
    calibrate_threshold: bool = True
    batchnorm_batches: int = 4
    name: str = "unet"
    object_maps: tuple[str, ...] = ()
    map_weight: float = 3.0
    choose_instance_rule: bool = True

    DEFAULT_EPOCHS = 40

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data (stored in the model summary)."""
        data = asdict(self)
        data["augmentation"] = self.augmentation.to_dict()
        data["normalization"] = self.normalization.to_dict()
        data["object_maps"] = list(self.object_maps)
        data["validation_names"] = list(self.validation_names)
        return data


@dataclass
class _Split:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray | None]
    names: list[str]
    maps: list[np.ndarray] = field(default_factory=list)  # (K-1, H, W) object maps
    instances: list[np.ndarray] = field(default_factory=list)  # ids, with object maps

    def pick(self, indices: Sequence[int]) -> _Split:
        """The images at ``indices``."""
        return _Split(
            [self.images[i] for i in indices],
            [self.masks[i] for i in indices],
            [self.weights[i] for i in indices],
            [self.names[i] for i in indices],
            [self.maps[i] for i in indices] if self.maps else [],
            [self.instances[i] for i in indices] if self.instances else [],
        )

    def targets(self) -> list[np.ndarray]:
        """Per image the nucleus mask, stacked with its object maps when there are any."""
        if not self.maps:
            return list(self.masks)
        return [
            np.concatenate([mask[None].astype(np.float32), maps])
            for mask, maps in zip(self.masks, self.maps)
        ]


def _as_mask(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        labels = np.nan_to_num(labels, nan=0.0)
    return labels > 0


def _check_pair(image: np.ndarray, labels: np.ndarray, name: str) -> None:
    if image.ndim != 2:
        raise ValueError(
            f"Training image '{name}' has shape {image.shape}; give 2-D frames "
            "(split stacks into frames, convert RGB to grey)."
        )
    if image.shape != labels.shape:
        raise ValueError(
            f"Training image '{name}' has shape {image.shape} but its labels have shape "
            f"{labels.shape}; each label image must match its image."
        )


def _split_validation(
    data: _Split, fraction: float, rng: np.random.Generator, multiple: int
) -> tuple[_Split, _Split]:
    n = len(data.images)
    if fraction <= 0:
        return data, _Split([], [], [], [])
    if n >= 2:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        order = rng.permutation(n)
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

        return data.pick(train_idx), data.pick(val_idx)
    # One image: hold out a band of rows at the bottom for validation.
    image, mask, weight, name = data.images[0], data.masks[0], data.weights[0], data.names[0]
    maps = data.maps[0] if data.maps else None
    # With partial annotations the band is cut from the annotated rows, so that both
    # parts hold annotated pixels.
    top, bottom = 0, image.shape[0]
    if weight is not None and weight.any():
        annotated_rows = np.flatnonzero(weight.any(axis=1))
        top, bottom = int(annotated_rows[0]), int(annotated_rows[-1]) + 1
    band = max(multiple, int(round(max(fraction, 0.15) * (bottom - top))))
    if bottom - top - band < multiple:
        return data, _Split([], [], [], [])
    cut = bottom - band

    def rows(array: np.ndarray | None, part: slice) -> np.ndarray | None:
        return None if array is None else array[part]

    train = _Split(
        [image[:cut]],
        [mask[:cut]],
        [rows(weight, slice(None, cut))],
        [f"{name} (top)"],
        [] if maps is None else [maps[:, :cut]],
    )
    val = _Split(
        [image[cut:]],
        [mask[cut:]],
        [rows(weight, slice(cut, None))],
        [f"{name} (bottom)"],
        [] if maps is None else [maps[:, cut:]],
    )
    return train, val


LOSSES = ("bce+dice", "bce+image-dice", "bce+lovasz", "bce")


def _lovasz_hinge(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over the patches of the Lovasz hinge (Berman et al. 2018) on the weighted pixels."""
    losses = []
    for sample_logits, sample_target, sample_weight in zip(logits, target, weight):
        valid = sample_weight.reshape(-1) > 0
        if not valid.any():
            continue
        scores = sample_logits.reshape(-1)[valid]
        labels = sample_target.reshape(-1)[valid]
        errors = 1.0 - scores * (2.0 * labels - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        labels_sorted = labels[order]
        positives = labels_sorted.sum()
        intersection = positives - labels_sorted.cumsum(0)
        union = positives + (1.0 - labels_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), jaccard))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def _loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    dice_weight: float,
    kind: str = "bce+dice",
) -> torch.Tensor:
    weight_sum = weight.sum().clamp(min=1.0)
    bce = (
        F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    ).sum() / weight_sum
    if dice_weight <= 0 or kind == "bce":
        return bce
    if kind == "bce+lovasz":
        return bce + dice_weight * _lovasz_hinge(logits, target, weight)
    probabilities = torch.sigmoid(logits) * weight
    target = target * weight
    dims = (1, 2, 3) if kind == "bce+image-dice" else (0, 1, 2, 3)
    intersection = (probabilities * target).sum(dims)
    dice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum(dims) + target.sum(dims) + 1.0)
    return bce + dice_weight * dice.mean()


def _map_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the object maps (channels 1...), on the weighted pixels."""
    weight_sum = (weight.sum() * logits.shape[1]).clamp(min=1.0)
    return (
        F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    ).sum() / weight_sum


def _learning_rate(base: float, fraction: float, warmup: float) -> float:
    if fraction < warmup:
        return base * (0.1 + 0.9 * fraction / warmup)
    progress = min(1.0, (fraction - warmup) / max(1e-9, 1.0 - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _recalibrate_batchnorm(
    network: torch.nn.Module,
    sampler: PatchSampler,
    batch_size: int,
    n_batches: int,
    device: torch.device,
    seed: int,
) -> None:
    """Recompute BatchNorm running statistics for the current weights ("precise BN").

    During training the running averages lag behind fast-changing weights, which shifts
    the logits at inference (early models then call everything nucleus). A few forward
    passes over un-augmented training patches with a cumulative average fix that.
    """
    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or n_batches <= 0:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the passes below
    rng_state = sampler.rng
    sampler.rng = np.random.default_rng(seed)
    network.train()
    try:
        with torch.no_grad():
            for _ in range(n_batches):
                images, _, _ = sampler.sample(batch_size)
                network(torch.from_numpy(images).to(device))
    finally:
        sampler.rng = rng_state
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _validate(
    network: torch.nn.Module, val: _Split, device: torch.device
) -> tuple[float, float, float, float, float, list[np.ndarray]]:
    """Per-image mean loss, precision, recall, F1 and IoU at threshold 0.5 (tiled, any size),
    and the logits of each validation image (kept for the threshold calibration)."""
    network.eval()
    losses, scores, all_logits = [], [], []
    with torch.inference_mode():
        for image, mask, weight in zip(val.images, val.masks, val.weights):
            logits = normalized_frame_logits(network, image, device)
            all_logits.append(logits)
            valid = np.ones(mask.shape, bool) if weight is None else weight
            losses.append(
                float(
                    _loss(
                        torch.from_numpy(logits)[None, None],
                        torch.from_numpy(mask.astype(np.float32))[None, None],
                        torch.from_numpy(valid.astype(np.float32))[None, None],
                        1.0,
                    )
                )
            )
            counts = confusion_counts((logits >= 0) & valid, mask & valid)
            scores.append((counts.precision, counts.recall, counts.f1, counts.iou))
    network.train()
    mean = np.mean(scores, axis=0) if scores else [math.nan] * 4
    return (float(np.mean(losses)) if losses else math.nan, *map(float, mean), all_logits)


def _calibrate_threshold(logits: list[np.ndarray], val: _Split) -> dict[str, float]:
    """The default threshold that maximises the per-image mean validation F1.

    ``logits`` are those of the validation images under the kept weights. Ties go to the
    threshold nearest 0.5, and 0.5 stays unless another one gains at least 0.0005 F1, so
    that a flat curve does not move it.
    """

    def mean_f1(probability: float) -> float:
        cut = math.log(probability / (1.0 - probability))
        scores = []
        for values, mask, weight in zip(logits, val.masks, val.weights):
            valid = np.ones(mask.shape, bool) if weight is None else weight
            scores.append(confusion_counts((values >= cut) & valid, mask & valid).f1)
        return float(np.mean(scores))

    at_half = mean_f1(0.5)
    best_threshold, best_f1 = 0.5, at_half
    for threshold in sorted(CALIBRATION_THRESHOLDS, key=lambda t: abs(t - 0.5)):
        f1 = mean_f1(threshold)
        if f1 > best_f1 and f1 >= at_half + 5e-4:
            best_threshold, best_f1 = threshold, f1
    return {"threshold": best_threshold, "val_f1": best_f1, "val_f1_at_0.5": at_half}


INSTANCE_RULES = (
    {"seeds": "distance"},
    {"seeds": "centre", "min_peak_height": 0.2},
    {"seeds": "boundary", "seed_threshold": 0.5},
)


def _choose_instance_rule(
    network: torch.nn.Module, val: _Split, threshold: float, device: torch.device
) -> dict[str, Any]:
    """The instance rule (distance watershed, centre- or boundary-map seeds) with the best
    mean object F1 on the validation images, as ``InstanceConfig`` data; the distance
    watershed unless a map's rule gains at least 0.005."""
    from .inference import sigmoid
    from .instances import InstanceConfig, instances_from_maps
    from .object_metrics import object_scores

    names = network.config.channel_names
    outputs = []
    with torch.inference_mode():
        for image, weight in zip(val.images, val.weights):
            if weight is not None:  # partial annotations: objects cannot be scored
                return {}
            outputs.append(
                sigmoid(normalized_frame_logits(network, image, device, all_channels=True))
            )
    scores = {}
    for number, rule in enumerate(INSTANCE_RULES):
        if rule["seeds"] != "distance" and rule["seeds"] not in names:
            continue
        config = InstanceConfig(threshold=threshold, **rule)
        f1 = [
            object_scores(
                instances_from_maps(out[0], dict(zip(names[1:], out[1:])), config), truth
            )["f1"]
            for out, truth in zip(outputs, val.instances)
        ]
        scores[number] = float(np.mean(f1))
    best = max(scores, key=lambda n: (scores[n] - (0.005 if n else 0.0), -n))
    chosen = InstanceConfig(threshold=threshold, **INSTANCE_RULES[best]).to_dict()
    return {
        **chosen,
        "val_object_f1": scores[best],
        "val_object_f1_by_rule": {
            INSTANCE_RULES[n]["seeds"]: value for n, value in scores.items()
        },
    }


#: Training frames whose shorter side is below this hold too little to learn from.
MIN_TRAINING_SIDE = 32


def _warn_when_images_are_tiny(images: Sequence[np.ndarray]) -> None:
    """Warn (:class:`ImageWarning`) when even the largest training frame is tiny."""
    from .normalization import ImageWarning

    if not images:
        return
    largest = max(images, key=lambda image: min(image.shape[-2:]))
    if min(largest.shape[-2:]) < MIN_TRAINING_SIDE:
        height, width = largest.shape[-2:]
        warnings.warn(
            f"The largest training image is {height} x {width} pixels: too small to learn "
            "what a nucleus looks like (nuclei are often 10-40 pixels across). Train on "
            f"images of at least {MIN_TRAINING_SIDE} x {MIN_TRAINING_SIDE} pixels, better "
            "256 x 256.",
            ImageWarning,
            stacklevel=3,
        )


def _warn_when_labels_are_partial(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> None:
    """Warn (:class:`PartialLabelsWarning`) when many bright blobs carry no label."""
    from .label_coverage import PartialLabelsWarning, label_coverage, partial_labels_note

    note = partial_labels_note(label_coverage(images, labels))
    if note:
        warnings.warn(note, PartialLabelsWarning, stacklevel=3)


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
    import warnings

    from .datasets import check_training_labels
    from .normalization import ImageWarning

    for label_message in check_training_labels(labels, names):  # DataError for bad values
        warnings.warn(label_message, ImageWarning, stacklevel=2)
    if config.loss not in LOSSES:
        raise ValueError(f"Unknown loss {config.loss!r}; choose one of {', '.join(LOSSES)}.")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}.")
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    # Not named `precision`: that is a validation score below.
    compute_precision = resolve_precision(config.precision, device, training=True)

    if init_model is not None:
        model = init_model.copy()
        normalization = model.normalization
    else:
        normalization = config.normalization
        # Seeded initial weights without disturbing (or racing on) the global RNG.
        with _SEED_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = create_model(
                config.features,
                config.depth,
                normalization,
                name=config.name,
                object_maps=tuple(config.object_maps),
            )
    multiple = model.config.size_multiple
    map_names = model.object_maps
    if map_names:
        from .object_targets import instance_labels, object_maps, painted_with_one_value

        one_value = [str(n) for n, lab in zip(names, labels) if painted_with_one_value(lab)]
        if one_value:
            shown = ", ".join(repr(n) for n in one_value[:3])
            more = f" and {len(one_value) - 3} more" if len(one_value) > 3 else ""
            warnings.warn(
                f"The labels of {shown}{more} paint every nucleus with one value: they were "
                "split into connected parts, so touching nuclei painted with one value teach "
                "the model to merge them. Give each nucleus its own label id to teach it to "
                "separate them.",
                ImageWarning,
                stacklevel=2,
            )

    def prepare(
        imgs: Sequence[np.ndarray], labs: Sequence[np.ndarray], nms: Sequence[str], ann: Any
    ) -> _Split:
        ann = list(ann) if ann is not None else [None] * len(imgs)
        out = _Split([], [], [], [])
        for image, label, name, weight in zip(imgs, labs, nms, ann):
            image, label = np.asarray(image), np.asarray(label)
            _check_pair(image, label, name)
            out.images.append(normalize_frame(image, normalization))
            out.masks.append(_as_mask(label))
            out.weights.append(None if weight is None else np.asarray(weight, bool))
            out.names.append(str(name))
            if map_names:
                out.maps.append(object_maps(label, map_names))
                out.instances.append(instance_labels(label))
        return out

    data = prepare(images, labels, names, annotated)
    if all(weight is None for weight in data.weights):
        _warn_when_labels_are_partial(images, labels)
    _warn_when_images_are_tiny(data.images)
    if val_images is not None:
        if val_labels is None or len(val_labels) != len(val_images):
            raise ValueError(
                "val_images and val_labels must be given together, one label image per image."
            )
        val_names = (
            list(val_names)
            if val_names is not None
            else [f"val_{i:03d}" for i in range(len(val_images))]
        )
        train_data, val_data = data, prepare(val_images, val_labels, val_names, None)
    elif config.validation_names:
        wanted = set(config.validation_names)
        missing = wanted - set(data.names)
        if missing:
            raise ValueError(
                f"Validation names not among the training images: {sorted(missing)[:5]}; "
                "give names passed in `names`."
            )
        train_idx = [i for i, n in enumerate(data.names) if n not in wanted]
        if not train_idx:
            raise ValueError("Every image is a validation image; leave some images for training.")
        val_idx = [i for i, n in enumerate(data.names) if n in wanted]

        train_data, val_data = data.pick(train_idx), data.pick(val_idx)
    else:
        train_data, val_data = _split_validation(data, config.validation_fraction, rng, multiple)

    patch = effective_patch_size(
        [im.shape for im in train_data.images], config.patch_size, multiple
    )
    sampler = PatchSampler(train_data.images, train_data.targets(), patch, train_data.weights, rng)
    steps_per_epoch = config.steps_per_epoch or max(
        MIN_STEPS_PER_EPOCH_TIMED if config.time_budget else 4,
        int(math.ceil(sampler.n_pixels / (config.batch_size * patch * patch))),
    )
    epochs = None if config.time_budget else (config.epochs or config.DEFAULT_EPOCHS)
    total_steps = None if epochs is None else epochs * steps_per_epoch
    augmenter = torch.Generator().manual_seed(config.seed)

    network = model.network.to(device)
    channels_last = device.type == "cpu"  # oneDNN convolutions are faster channels-last
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    pin_memory = device.type == "cuda"
    network.train()
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=compute_precision == "fp16")
    parameters = [p for p in network.parameters() if p.requires_grad]
    averaged = [p.detach().clone() for p in parameters] if config.ema_decay > 0 else None
    yield TrainingStarted(
        n_train_images=len(train_data.images),
        n_val_images=len(val_data.images),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        time_budget=config.time_budget,
        device=str(device),
        precision={"fp16": "fp16-mixed", "bf16": "bf16-mixed"}.get(compute_precision, "fp32"),
    )

    start = time.perf_counter()
    best_state = copy.deepcopy(network.state_dict())
    last_good_state = best_state
    best_f1, best_epoch = -math.inf, 0
    best_logits: list[np.ndarray] = []
    history: list[dict[str, float]] = []
    global_step, epoch, reason, message = 0, 0, "completed", ""

    def fraction_done() -> float:
        if config.time_budget:
            return min(1.0, (time.perf_counter() - start) / config.time_budget)
        return global_step / total_steps

    while reason == "completed":
        if epochs is not None and epoch >= epochs:
            break
        epoch += 1
        losses = []
        for step in range(1, steps_per_epoch + 1):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(
                    config.learning_rate, fraction_done(), config.warmup_fraction
                )
            x, y, w = (torch.from_numpy(a) for a in sampler.sample(config.batch_size))
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
            loss = _loss(logits[:, :1], y[:, :1], w, config.dice_weight, config.loss)
            if map_names:
                loss = loss + config.map_weight * _map_loss(logits[:, 1:], y[:, 1:], w)
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
            if config.time_budget and elapsed >= config.time_budget:
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
        _recalibrate_batchnorm(
            network,
            sampler,
            config.batch_size,
            config.batchnorm_batches,
            device,
            config.seed + epoch,
        )
        val_loss, precision, recall, f1, iou, val_logits = _validate(network, val_data, device)
        last_good_state = copy.deepcopy(network.state_dict())
        if raw_state is not None:
            network.load_state_dict(raw_state)
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
        history.append(record)
        yield EpochEnd(
            epoch, record["train_loss"], val_loss, precision, recall, f1, iou, elapsed, eta
        )
        score = f1 if not math.isnan(f1) else -record["train_loss"]
        if score >= best_f1:
            best_f1, best_epoch = score, epoch
            best_state = last_good_state
            best_logits = val_logits
            if not math.isnan(f1):
                yield BestModel(epoch, f1)
        if reason == "completed" and config.time_budget and elapsed >= config.time_budget:
            reason = "time_budget"

    network.load_state_dict(best_state)
    network.eval()
    calibration = None
    if config.calibrate_threshold and val_data.images and best_epoch > 0:
        calibration = _calibrate_threshold(best_logits, val_data)
        model.threshold = calibration["threshold"]
    instance_rule: dict[str, Any] = {}
    if map_names and config.choose_instance_rule and val_data.images and best_epoch > 0:
        instance_rule = _choose_instance_rule(network, val_data, model.threshold, device)
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
        "fine_tuned_from": init_model.name if init_model is not None else None,
        "threshold_calibration": calibration,
        "config": config.to_dict(),
        "history": history,
        "rounds": [*previous, {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": epoch}],
    }
    inherited = init_model.summary.get("instance_config") if init_model is not None else None
    if instance_rule:
        scores = {k: instance_rule.pop(k) for k in ("val_object_f1", "val_object_f1_by_rule")}
        model.summary["instance_config"] = instance_rule
        model.summary["instance_rule_choice"] = scores
    elif isinstance(inherited, dict):
        # A fine-tuned model keeps the instance rule chosen for the model it started from
        # (with its own, newly calibrated threshold).
        model.summary["instance_config"] = {**inherited, "threshold": float(model.threshold)}
    yield TrainingFinished(model, reason, epoch, global_step, elapsed, history, message)
    return model


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


def with_overrides(config: TrainingConfig, **changes: Any) -> TrainingConfig:
    """Return a copy of ``config`` with some settings changed."""
    return replace(config, **changes)
