"""Which plane holds the nuclei: the nuclear channel of a colour or multi-channel image,
and what the first axis of a 3-D stack is.

A colour image made grey by luminance keeps 11 % of a blue channel, and a 2-channel TIFF
read as two frames segments the second channel too. Here the nuclear channel is the one
with the most nucleus-like contrast (bright, compact objects on a dark background: Otsu's
between-class share of the variance, lowered when most of the plane is "bright", as in an
inverted or cytoplasm channel), unless the user names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_UNNAMED_CHANNELS",
    "grey_from_colour",
    "nuclear_channel",
    "nucleus_contrast",
    "resolve_stack_axis",
]

#: A 3-D stack whose unnamed first axis is this short may hold channels, not frames.
MAX_UNNAMED_CHANNELS = 4

CHANNEL_NAMES = ("red", "green", "blue", "alpha")


def nucleus_contrast(plane: Any) -> float:
    """How nucleus-like a 2-D plane looks, in [0, 1] (0 for a flat plane).

    Parameters
    ----------
    plane : array-like
        2-D image (read with a stride of at most 1,000 pixels a side).

    Returns
    -------
    float
    """
    from skimage.filters import threshold_otsu

    plane = np.asarray(plane)
    stride = max(1, int(np.ceil(max(plane.shape) / 1000)))
    values = np.asarray(plane[::stride, ::stride], dtype=np.float32)
    values = values[np.isfinite(values)]
    if values.size < 16:
        return 0.0
    low, high = np.percentile(values, (1.0, 99.8))
    if not high > low:
        return 0.0
    values = np.clip((values - low) / (high - low), 0.0, 1.0)
    cut = threshold_otsu(values)
    bright = values > cut
    share = float(bright.mean())
    if share in (0.0, 1.0):
        return 0.0
    between = share * (1.0 - share) * (values[bright].mean() - values[~bright].mean()) ** 2
    score = float(between / max(values.var(), 1e-12))
    return score * (0.25 if share > 0.6 else 1.0)  # mostly bright: not nuclei on a dark field


def nuclear_channel(planes: Sequence[Any]) -> int:
    """The index of the plane with the highest :func:`nucleus_contrast`."""
    scores = [nucleus_contrast(plane) for plane in planes]
    return int(np.argmax(scores))


def grey_from_colour(colour: np.ndarray, name: str = "image") -> tuple[np.ndarray, str | None]:
    """The nuclear channel of a colour ``(..., H, W, 3 or 4)`` image, and a sentence saying
    which one was used (None when the colour channels are identical: a grey image stored as
    colour). Alpha is never a candidate; the dtype is kept.

    Parameters
    ----------
    colour : numpy.ndarray
        RGB or RGBA pixels, colour last.
    name : str
        How the sentence names the image.

    Returns
    -------
    numpy.ndarray
        ``colour[..., k]`` for the chosen channel ``k``.
    str or None
    """
    colour = np.asarray(colour)
    rgb = colour[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0]), None
    planes = [rgb[..., k].reshape(-1, *rgb.shape[-3:-1])[0] for k in range(3)]
    channel = nuclear_channel(planes)
    kind = "RGB" if colour.shape[-1] == 3 else "RGBA"
    note = (
        f"{name} is a colour ({kind}) image: its {CHANNEL_NAMES[channel]} channel was used, "
        "the one with the most nucleus-like contrast. To use another, save that channel "
        "alone (in napari: right-click the layer > Split RGB)."
    )
    return np.ascontiguousarray(rgb[..., channel]), note


def resolve_stack_axis(requested: str, shape: Sequence[int], axes: Sequence[str] | None) -> str:
    """``"z"`` or ``"frames"`` for an image of ``shape``: as requested, or under ``"auto"``
    z when the file names its first axis z (an OME or ImageJ z-stack), frames otherwise."""
    if len(shape) != 3:
        return "frames"
    if requested != "auto":
        return requested
    return "z" if axes is not None and len(axes) == 3 and axes[0] == "z" else "frames"
