"""Do the labels cover every nucleus? Spot images where only some nuclei were painted.

Training treats every unpainted pixel as background. When a user paints 5 of 26 nuclei,
the other 21 teach the network that nuclei are background, and the validation F1 counts
the model's correct answers there as errors. :func:`label_coverage` finds the bright blobs
of an image (Otsu on the normalised frame) and counts those that no label touches;
:func:`partial_labels_note` turns many of them into one sentence with the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.notices import Notice, notices_to

__all__ = [
    "LabelCoverage",
    "PartialLabelsWarning",
    "frames_to_check",
    "label_coverage",
    "partial_labels_note",
]

#: At least this many bright blobs without labels...
MIN_UNLABELLED_BLOBS = 4
#: ...making up at least this fraction of the blobs, mean the labels are partial.
MIN_UNLABELLED_FRACTION = 0.3
#: Blobs smaller than this fraction of the median painted nucleus are noise, not nuclei.
MIN_BLOB_FRACTION = 0.25
#: Frames looked at in a long stack (evenly spread).
MAX_FRAMES_CHECKED = 16


class PartialLabelsWarning(UserWarning):
    """The labels leave many bright blobs of the image unpainted."""


@dataclass(frozen=True)
class LabelCoverage:
    """Bright blobs of the labelled frames, with and without a label on them.

    Attributes
    ----------
    labelled_blobs, unlabelled_blobs : int
        Blobs touched by a label, and blobs no label touches.
    frames : int
        Labelled frames looked at.
    """

    labelled_blobs: int
    unlabelled_blobs: int
    frames: int

    @property
    def unlabelled_fraction(self) -> float:
        """Fraction of the blobs that no label touches (0 without blobs)."""
        total = self.labelled_blobs + self.unlabelled_blobs
        return self.unlabelled_blobs / total if total else 0.0

    @property
    def looks_partial(self) -> bool:
        """Whether many nuclei-like blobs were left unpainted."""
        return (
            self.unlabelled_blobs >= MIN_UNLABELLED_BLOBS
            and self.unlabelled_fraction >= MIN_UNLABELLED_FRACTION
        )


def _drop(_notice: Notice) -> None:
    """A notice sink that keeps nothing."""


def _frame_blobs(image: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    painted = labels > 0
    # Constant or NaN frames are announced elsewhere. A notice sink, not
    # warnings.catch_warnings: this runs in a worker beside others (see notices.notices_to).
    with notices_to(_drop):
        values = normalize_frame(image)
    if values.max() <= values.min():
        return 0, 0
    foreground = values > threshold_otsu(values)
    blobs, count = ndi.label(foreground)
    if count == 0:
        return 0, 0
    areas = np.bincount(blobs.ravel(), minlength=count + 1)[1:]
    ids, sizes = np.unique(labels[painted], return_counts=True)
    typical = float(np.median(sizes[ids > 0])) if ids.size else 0.0
    big_enough = areas >= max(10.0, MIN_BLOB_FRACTION * typical)
    touched = np.bincount(blobs[painted], minlength=count + 1)[1:] > 0
    labelled = int(np.count_nonzero(big_enough & touched))
    return labelled, int(np.count_nonzero(big_enough & ~touched))


def frames_to_check(labelled: Sequence[bool]) -> list[int]:
    """The frames :func:`label_coverage` looks at: the labelled ones, at most
    :data:`MAX_FRAMES_CHECKED` of them evenly spread over the stack.

    Parameters
    ----------
    labelled : sequence of bool
        Per frame, whether it holds any label.

    Returns
    -------
    list of int
        Frame numbers, in order.
    """
    numbers = np.flatnonzero(np.asarray(labelled, bool))
    if len(numbers) > MAX_FRAMES_CHECKED:
        keep = np.linspace(0, len(numbers) - 1, MAX_FRAMES_CHECKED).round().astype(int)
        numbers = numbers[keep]
    return [int(n) for n in numbers]


def label_coverage(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> LabelCoverage:
    """Count the bright blobs of the labelled frames that labels touch and that they miss.

    Parameters
    ----------
    images, labels : sequence of numpy.ndarray
        2-D frames and their labels (any integer ids; 0 is unpainted). Frames without any
        label are skipped (they are not trained on as nuclei examples); of a long stack,
        :data:`MAX_FRAMES_CHECKED` frames evenly spread are looked at.

    Returns
    -------
    LabelCoverage
    """
    labelled = [np.asarray(m).any() for m in labels]
    pairs = [(images[k], labels[k]) for k in frames_to_check(labelled)]
    labelled = unlabelled = 0
    for image, mask in pairs:
        a, b = _frame_blobs(np.asarray(image), np.asarray(mask))
        labelled, unlabelled = labelled + a, unlabelled + b
    return LabelCoverage(labelled, unlabelled, len(pairs))


def partial_labels_note(coverage: LabelCoverage) -> str | None:
    """One sentence with the fix when ``coverage`` looks partial, else None."""
    if not coverage.looks_partial:
        return None
    total = coverage.labelled_blobs + coverage.unlabelled_blobs
    return (
        f"The labels seem to cover only part of the nuclei ({coverage.unlabelled_blobs} of "
        f"{total} bright blobs have no label): unpainted nuclei are learned as background "
        "and the validation F1 counts correct answers there as errors. Draw annotated "
        "regions (a Shapes layer of rectangles where every nucleus is painted) and pick it "
        "as 'annotated regions', or paint the remaining nuclei."
    )
