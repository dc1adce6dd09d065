"""Nucleus size: estimate it in an image and bring nuclei to the size a model learned.

A U-Net learns nuclei of the sizes in its training images. Nuclei several times larger
(a 60x objective, a 1024 x 1280 tissue image whose nuclei span 100 px) exceed what its
filters saw and come apart into pieces; :func:`rescale_factor` says how much to shrink
such an image first, and :func:`resize_to` brings the result back to the image's pixels.

The size is measured as a *diameter* in pixels: six times the mean distance of a nucleus
pixel to the background, which is the diameter for round nuclei (a disc of radius ``r``
has a mean inner distance of ``r / 3``; 0.4 px is taken off each distance first, the
half pixel by which a pixel grid's distances overshoot, so that discs of 6 to 80 px come
out within 4 %). It is taken from the nucleus mask, not from the
nuclei, so touching nuclei that stay merged and large nuclei that fall apart do not bias
it. The same measure of a model's training masks is the diameter it learned
(:func:`diameter_of_masks`, stored as ``nucleus_diameter`` in a model's summary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "AUTO_SHRINK_BELOW",
    "BUILTIN_TRAINED_DIAMETER",
    "checked_diameter",
    "diameter_of_masks",
    "estimate_diameter",
    "rescale_factor",
    "resize_to",
    "trained_diameter",
]

#: The diameter (px) of the built-in model's training nuclei by :func:`diameter_of_masks`
#: (every fourth image of its training parts): the reference of a diameter given by hand
#: for models that do not store theirs.
BUILTIN_TRAINED_DIAMETER = 26.0
#: Nor when more of the frame than this is nucleus: the mask is then no measure of nuclei
#: (an untrained model, an image without background).
AUTO_MAX_FOREGROUND = 0.5
#: ``diameter="auto"`` rescales only images whose nuclei must shrink below this factor;
#: nearer sizes (and smaller nuclei) the network segments better as they are
#: (``benchmarks/nucleus_size.py``).
AUTO_SHRINK_BELOW = 0.5
_GRID_OFFSET = 0.4
#: Rescale factors are kept within these bounds.
SCALE_LIMITS = (0.1, 4.0)


def checked_diameter(value: float | str | None) -> float | str | None:
    """A ``diameter`` option as the engine takes it: a number of pixels above 0, ``"auto"``
    or None (never resize).

    Raises
    ------
    ValueError
        With one sentence, for anything else (0, negative, NaN, infinite, text).
    """
    if value is None or value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"The nucleus diameter must be a number of pixels above 0 or 'auto', got {value!r}."
        )
    return number


def estimate_diameter(mask: np.ndarray, max_pixels: int = 1 << 20) -> float | None:
    """The typical nucleus diameter (px) of a 2-D nucleus mask; None when it is empty.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D boolean nucleus mask (e.g. the probabilities at the model's threshold).
    max_pixels : int
        A larger mask is measured on every n-th row and column (n as small as keeps it
        under this), so that the estimate costs a fixed time: 0.07 s for 2048 x 2048.

    Returns
    -------
    float or None
        Six times the mean distance of the mask's pixels to the background.
    """
    mask = np.asarray(mask, bool)
    step = max(1, int(np.ceil(np.sqrt(mask.size / max_pixels))))
    mask = mask[::step, ::step]
    if not mask.any():
        return None
    inner = ndi.distance_transform_edt(mask)
    return float(step * 6.0 * max(0.5, inner[mask].mean() - _GRID_OFFSET))


def diameter_of_masks(masks: Sequence[np.ndarray]) -> float | None:
    """The median over images of :func:`estimate_diameter` (the size a model learns)."""
    sizes = [d for d in (estimate_diameter(np.asarray(m) > 0) for m in masks) if d is not None]
    return float(np.median(sizes)) if sizes else None


def trained_diameter(summary: dict) -> float | None:
    """The nucleus diameter a model learned (its summary's ``nucleus_diameter``); None for
    a model that does not say (``diameter="auto"`` then leaves images as they are)."""
    value = summary.get("nucleus_diameter") if isinstance(summary, dict) else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def rescale_factor(diameter: float | None, learned: float, *, automatic: bool) -> float:
    """The factor to resize an image by so that its nuclei reach the learned size.

    Parameters
    ----------
    diameter : float or None
        The image's nucleus diameter (px); None (no nuclei found): 1.
    learned : float
        The diameter the model learned (:func:`trained_diameter`).
    automatic : bool
        ``diameter`` is an estimate: rescale only when nuclei must shrink below
        :data:`AUTO_SHRINK_BELOW`. A diameter the user gave is always honoured.

    Returns
    -------
    float
        1.0 for no rescaling.
    """
    if diameter is None or not diameter > 0:
        return 1.0
    factor = float(np.clip(learned / diameter, *SCALE_LIMITS))
    if automatic and factor >= AUTO_SHRINK_BELOW:
        return 1.0
    return factor


def resize_to(array: np.ndarray, shape: tuple[int, int], *, labels: bool = False) -> np.ndarray:
    """Resize the last two axes of ``array`` to ``shape``.

    Parameters
    ----------
    array : numpy.ndarray
        ``(H, W)`` or ``(C, H, W)``.
    shape : tuple of int
        The new ``(H, W)``.
    labels : bool
        Nearest neighbour (ids stay ids) instead of linear interpolation, which smooths
        before shrinking so that fine texture does not alias.

    Returns
    -------
    numpy.ndarray
        Same dtype (float32 for interpolated floats).
    """
    height, width = array.shape[-2:]
    if (height, width) == tuple(shape):
        return array
    if labels:
        rows = np.minimum(
            ((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(int), height - 1
        )
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(int), width - 1)
        return array[..., rows[:, None], cols[None, :]]
    from skimage.transform import resize

    out_shape = (*array.shape[:-2], *shape)
    shrinking = shape[0] < height or shape[1] < width
    return resize(
        array.astype(np.float32, copy=False),
        out_shape,
        order=1,
        mode="reflect",
        anti_aliasing=shrinking,
        preserve_range=True,
    ).astype(np.float32, copy=False)
