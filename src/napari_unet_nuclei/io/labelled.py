"""Labelled nuclei images: the one container every dataset reader returns, the error its
readers raise, and the checks of label images before training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet_nuclei.io.safe_pickle import UnsafeFileError

__all__ = ["DataError", "LabelledImage", "RefusedFileError", "check_training_labels"]


class DataError(ValueError):
    """Input data that cannot be used; the message says what is wrong and how to fix it."""


class RefusedFileError(DataError, UnsafeFileError):
    """A data file was refused because loading it would need pickle (which can run code)."""


def _label_array(labels: np.ndarray, name: str) -> np.ndarray:
    """Return labels as a non-negative integer array, keeping every ``> 0`` pixel ``> 0``."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.integer):
        if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
            raise DataError(
                f"The labels of {name!r} contain negative values (min {labels.min()}). Labels "
                "must be 0 for background and positive ids (or 1) for nuclei."
            )
        return labels
    if np.issubdtype(labels.dtype, np.floating):
        finite = np.isfinite(labels)
        if not finite.all():
            raise DataError(
                f"The labels of {name!r} contain NaN or infinite values. Labels must be 0 for "
                "background and positive numbers for nuclei."
            )
        if labels.size and labels.min() < 0:
            raise DataError(
                f"The labels of {name!r} contain negative values (min {labels.min()}). Labels "
                "must be 0 for background and positive ids (or 1) for nuclei."
            )
        top = float(labels.max()) if labels.size else 0.0
        if np.array_equal(labels, np.round(labels)) and top < 2**31:
            for dtype in (np.uint8, np.uint16, np.int32):
                if top <= np.iinfo(dtype).max:
                    return labels.astype(dtype)
        # Soft or fractional masks: any positive value is a nucleus pixel.
        return (labels > 0).astype(np.uint8)
    raise DataError(
        f"The labels of {name!r} have dtype {labels.dtype}; expected integer ids, a boolean "
        "mask or a float mask."
    )


@dataclass
class LabelledImage:
    """One 2-D image with its labels.

    Parameters
    ----------
    name : str
        Identifier (a file stem, or ``image_000`` ... for unnamed arrays).
    image : numpy.ndarray
        2-D image in its original dtype.
    labels : numpy.ndarray
        2-D label image of the same shape: 0 is background, other values are nucleus ids
        (instance labels) or 1 (a binary mask). Integer ids are kept as they are; boolean
        masks become uint8; float masks become integers when all values are whole numbers,
        otherwise ``labels > 0`` as uint8.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 2:
            raise DataError(
                f"Image {self.name!r} has shape {self.image.shape}; a 2-D (H, W) image is "
                "expected. Convert colour images with to_grey and split stacks into frames."
            )
        labels = np.asarray(self.labels)
        if labels.shape != self.image.shape:
            raise DataError(
                f"Image {self.name!r} has shape {self.image.shape} but its labels have shape "
                f"{labels.shape}; the mask must have exactly the image's shape."
            )
        self.labels = _label_array(labels, self.name)

    @property
    def mask(self) -> np.ndarray:
        """Binary nucleus mask, ``labels > 0``."""
        return self.labels > 0


def check_training_labels(labels: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """Check label values before training; return warnings about suspicious labels.

    Parameters
    ----------
    labels : sequence of numpy.ndarray
        One label image per training image.
    names : sequence of str
        Image names, for the messages.

    Returns
    -------
    list of str
        Sentences for labels that are usable but suspicious: every image without any
        nucleus (the network learns background only), or an image whose pixels are all
        nucleus (nothing to tell nuclei from).

    Raises
    ------
    DataError
        For negative, NaN or infinite label values, or a non-numeric label dtype.
    """
    messages: list[str] = []
    n_empty = 0
    for label, name in zip(labels, names):
        array = _label_array(np.asarray(label), str(name))
        if not array.size or not np.any(array > 0):
            n_empty += 1
        elif bool(np.all(array > 0)):
            messages.append(
                f"Every pixel of the labels of {str(name)!r} is nucleus: there is no background "
                "to learn from in that image; check that the labels are not inverted."
            )
    if len(labels) and n_empty == len(labels):
        messages.append(
            f"None of the {len(labels)} label image(s) contains a nucleus: the network will "
            "learn that everything is background."
        )
    return messages
