"""Training data: images normalised, labels made into masks, nuclei and targets, and the
validation split; the warnings about labels and image sizes a user should see first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_unet_nuclei.nn.normalization import ImageWarning, NormalizationConfig, normalize_frame
from napari_unet_nuclei.nn.object_targets import (
    gap_band,
    instance_labels,
    object_maps,
    painted_with_one_value,
)
from napari_unet_nuclei.notices import warn_user
from napari_unet_nuclei.prediction.nucleus_size import estimate_diameter, rescale_factor, resize_to
from napari_unet_nuclei.train.label_coverage import (
    PartialLabelsWarning,
    label_coverage,
    partial_labels_note,
)

__all__ = [
    "MIN_TRAINING_SIDE",
    "TargetRecipe",
    "TrainingSplit",
    "as_mask",
    "check_pair",
    "choose_validation",
    "prepare_split",
    "split_validation",
    "warn_when_images_are_tiny",
    "warn_when_labels_are_partial",
    "warn_when_painted_with_one_value",
]


@dataclass
class TrainingSplit:
    """Normalised images with their masks, loss weights, names, object maps, nucleus ids
    and gap bands (the lists a model needs are filled)."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray | None]
    names: list[str]
    maps: list[np.ndarray] = field(default_factory=list)  # (K-1, H, W) object maps
    instances: list[np.ndarray] = field(default_factory=list)  # nucleus ids
    gaps: list[np.ndarray] = field(default_factory=list)  # (H, W) gap bands

    def pick(self, indices: Sequence[int]) -> TrainingSplit:
        """The images at ``indices``."""

        def some(values: list) -> list:
            return [values[i] for i in indices] if values else []

        return TrainingSplit(
            [self.images[i] for i in indices],
            [self.masks[i] for i in indices],
            [self.weights[i] for i in indices],
            [self.names[i] for i in indices],
            some(self.maps),
            some(self.instances),
            some(self.gaps),
        )

    def rows(self, part: slice, suffix: str) -> TrainingSplit:
        """A band of rows of the one image (a single image split for validation)."""

        def cut(values: list, leading: bool = False) -> list:
            if not values or values[0] is None:
                return list(values)
            return [values[0][:, part] if leading else values[0][part]]

        return TrainingSplit(
            cut(self.images),
            cut(self.masks),
            cut(self.weights),
            [f"{self.names[0]} ({suffix})"],
            cut(self.maps, leading=True),
            cut(self.instances),
            cut(self.gaps),
        )

    def targets(self) -> list[np.ndarray]:
        """Per image the nucleus mask, stacked with its object maps and its gap band
        (the last channel) when there are any."""
        if not self.maps and not self.gaps:
            return list(self.masks)
        out = []
        for index, mask in enumerate(self.masks):
            channels = [mask[None].astype(np.float32)]
            if self.maps:
                channels.append(self.maps[index])
            if self.gaps:
                channels.append(self.gaps[index][None])
            out.append(np.concatenate(channels))
        return out


@dataclass(frozen=True)
class TargetRecipe:
    """What a network learns from a label image: its normalisation, object maps, gaps,
    and the nucleus diameter it learned (a fine-tune's start model's): images whose nuclei
    are over twice that size are shrunk to it, as segmenting with ``diameter="auto"``
    shrinks them, so that a fine-tuned model sees its nuclei at the size it will be shown
    them."""

    normalization: NormalizationConfig
    map_names: tuple[str, ...] = ()
    gaps: bool = False
    diameter: float | None = None


def prepare_split(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str] | None,
    annotated: Sequence[np.ndarray | None] | None,
    recipe: TargetRecipe,
) -> TrainingSplit:
    """Images normalised, with their masks, loss weights, nuclei and targets.

    Nuclei, maps and gaps come from the annotated region alone: labels outside it change
    nothing (one value painted outside would otherwise turn a mask's parts into one
    "instance").
    """
    annotated = list(annotated) if annotated is not None else [None] * len(images)
    names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(images))]
    out = TrainingSplit([], [], [], [])
    for image, label, name, weight in zip(images, labels, names, annotated):
        image, label = np.asarray(image), np.asarray(label)
        check_pair(image, label, name)
        frame = normalize_frame(image, recipe.normalization)
        weight = None if weight is None else np.asarray(weight, bool)
        if recipe.diameter:
            frame, label, weight = _at_learned_size(frame, label, weight, recipe.diameter)
        out.images.append(frame)
        out.masks.append(as_mask(label))
        out.weights.append(weight)
        out.names.append(str(name))
        inside = label if weight is None else np.where(weight, label, 0)
        out.instances.append(instance_labels(inside))
        if recipe.map_names:
            out.maps.append(object_maps(inside, recipe.map_names))
        if recipe.gaps:
            out.gaps.append(gap_band(inside))
    return out


def _at_learned_size(
    frame: np.ndarray, label: np.ndarray, weight: np.ndarray | None, learned: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The frame, labels and loss weights shrunk by the rule of ``diameter="auto"``."""
    inside = label > 0 if weight is None else (label > 0) & weight
    factor = rescale_factor(estimate_diameter(inside), learned, automatic=True)
    if factor == 1.0:
        return frame, label, weight
    shape = tuple(max(1, round(side * factor)) for side in frame.shape)
    label = resize_to(label, shape, labels=True)
    weight = None if weight is None else resize_to(weight, shape, labels=True)
    return resize_to(frame, shape), label, weight


def choose_validation(
    data: TrainingSplit,
    recipe: TargetRecipe,
    validation_names: Sequence[str],
    fraction: float,
    rng: np.random.Generator,
    multiple: int,
    *,
    val_images: Sequence[np.ndarray] | None = None,
    val_labels: Sequence[np.ndarray] | None = None,
    val_names: Sequence[str] | None = None,
) -> tuple[TrainingSplit, TrainingSplit]:
    """The training and validation parts: an explicit validation set, the images named in
    ``validation_names``, or :func:`split_validation` of ``fraction``."""
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
        return data, prepare_split(val_images, val_labels, val_names, None, recipe)
    if validation_names:
        wanted = set(validation_names)
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
        return data.pick(train_idx), data.pick(val_idx)
    return split_validation(data, fraction, rng, multiple)


def as_mask(labels: np.ndarray) -> np.ndarray:
    """The nucleus mask of labels (``> 0``; NaN is background)."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        labels = np.nan_to_num(labels, nan=0.0)
    return labels > 0


def check_pair(image: np.ndarray, labels: np.ndarray, name: str) -> None:
    """Refuse an image that is not 2-D or whose labels differ in shape."""
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


#: With fewer training images than this, every image lends a band of its rows to the
#: validation set instead of whole images being held out: a fine-tune on two corrected
#: images is then judged on both, not on one (``benchmarks/fine_tune.py``).
BANDS_BELOW_IMAGES = 5
#: The share of each image's (annotated) rows such a band takes.
BAND_FRACTION = 0.25


def split_validation(
    data: TrainingSplit, fraction: float, rng: np.random.Generator, multiple: int
) -> tuple[TrainingSplit, TrainingSplit]:
    """Hold out ``fraction`` of the images; with fewer than :data:`BANDS_BELOW_IMAGES`
    images, a band of rows at the bottom of each (its annotated rows)."""
    n = len(data.images)
    if fraction <= 0:
        return data, TrainingSplit([], [], [], [])
    if n >= BANDS_BELOW_IMAGES:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        order = rng.permutation(n)
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        return data.pick(train_idx), data.pick(val_idx)
    share = max(fraction, 0.15) if n == 1 else max(fraction, BAND_FRACTION)
    parts = [_bottom_band(data.pick([i]), share, multiple) for i in range(n)]
    if not any(val is not None for _, val in parts):
        return data, TrainingSplit([], [], [], [])
    return (
        joined([train for train, _ in parts]),
        joined([val for _, val in parts if val is not None]),
    )


def _bottom_band(
    one: TrainingSplit, share: float, multiple: int
) -> tuple[TrainingSplit, TrainingSplit | None]:
    """One image split into its top rows (training) and a bottom band (validation), or
    kept whole (None) when it is too small to lend a band."""
    image, weight = one.images[0], one.weights[0]
    # With partial annotations the band is cut from the annotated rows, so that both
    # parts hold annotated pixels.
    top, bottom = 0, image.shape[0]
    if weight is not None and weight.any():
        annotated_rows = np.flatnonzero(weight.any(axis=1))
        top, bottom = int(annotated_rows[0]), int(annotated_rows[-1]) + 1
    band = max(multiple, int(round(share * (bottom - top))))
    if bottom - top - band < multiple:
        return one, None
    cut = bottom - band
    return one.rows(slice(None, cut), "top"), one.rows(slice(cut, None), "bottom")


def joined(parts: Sequence[TrainingSplit]) -> TrainingSplit:
    """The images of several splits, in order, as one."""
    out = TrainingSplit([], [], [], [])
    for part in parts:
        out.images += part.images
        out.masks += part.masks
        out.weights += part.weights
        out.names += part.names
        out.maps += part.maps
        out.instances += part.instances
        out.gaps += part.gaps
    return out


#: Training frames whose shorter side is below this hold too little to learn from.
MIN_TRAINING_SIDE = 32


def warn_when_images_are_tiny(images: Sequence[np.ndarray]) -> None:
    """Warn (:class:`ImageWarning`) when even the largest training frame is tiny."""
    if not images:
        return
    largest = max(images, key=lambda image: min(image.shape[-2:]))
    if min(largest.shape[-2:]) < MIN_TRAINING_SIDE:
        height, width = largest.shape[-2:]
        warn_user(
            f"The largest training image is {height} x {width} pixels: too small to learn "
            "what a nucleus looks like (nuclei are often 10-40 pixels across). Train on "
            f"images of at least {MIN_TRAINING_SIDE} x {MIN_TRAINING_SIDE} pixels, better "
            "256 x 256.",
            ImageWarning,
            stacklevel=3,
        )


def warn_when_labels_are_partial(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> None:
    """Warn (:class:`PartialLabelsWarning`) when many bright blobs carry no label."""
    note = partial_labels_note(label_coverage(images, labels))
    if note:
        warn_user(note, PartialLabelsWarning, stacklevel=3)


def warn_when_painted_with_one_value(labels: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Warn (:class:`ImageWarning`) when labels paint several nuclei with one value."""
    one_value = [str(n) for n, lab in zip(names, labels) if painted_with_one_value(lab)]
    if one_value:
        shown = ", ".join(repr(n) for n in one_value[:3])
        more = f" and {len(one_value) - 3} more" if len(one_value) > 3 else ""
        warn_user(
            f"The labels of {shown}{more} paint every nucleus with one value: they were "
            "split into connected parts, so touching nuclei painted with one value teach "
            "the model to merge them. Give each nucleus its own label id to teach it to "
            "separate them.",
            ImageWarning,
            stacklevel=3,
        )
