"""Nuclei in 3-D: one object per nucleus of a z-stack, from its stacked probabilities.

Linking the 2-D nuclei of each slice (:func:`~napari_unet_nuclei.prediction.stitching.stitch_slices`)
follows every slice's noise: a nucleus cut in two in one slice and whole in the next
becomes several objects, and the slices at a nucleus' top and bottom add fragments of their
own (224 objects for the 20 nuclei of the shared 60 x 256 x 256 stack). Here the stack is
one volume: the probabilities are thresholded in 3-D, the 3-D distance to the background
(in physical units when the voxel spacing is known) has one peak per nucleus, and a 3-D
watershed grows each nucleus from its peak. Objects that lie in a single slice, or are
much smaller than the stack's typical nucleus, are fragments and are dropped (23 objects,
object F1 0.93 on that stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet_nuclei.nn.object_targets import near_two_nuclei

__all__ = ["VOLUME_NECK_RATIO", "Z_SLICE_OVERLAP", "looks_like_z_slices", "nuclei_in_volume"]

#: Two touching nuclei are split when the neck between them is narrower than this fraction
#: of the smaller one's width (3-D distances: a stricter ratio than the 2-D 0.8, since a
#: nucleus' surface is rougher in z than in a slice).
VOLUME_NECK_RATIO = 0.4

#: Objects under this fraction of the median object volume are fragments.
FRAGMENT_FRACTION = 0.1


def nuclei_in_volume(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    neck_ratio: float = VOLUME_NECK_RATIO,
    sigma: float = 2.0,
    min_size: int = 30,
    slice_labels: np.ndarray | None = None,
) -> np.ndarray:
    """3-D instance labels of a ``(Z, H, W)`` probability stack.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Nucleus probabilities of every slice.
    threshold : float
        Probability at or above which a voxel is nucleus.
    spacing : sequence of float
        Voxel size along z, y, x (any unit; only ratios matter).
    neck_ratio : float
        See :data:`VOLUME_NECK_RATIO` (0-1; lower splits less).
    sigma : float
        Gaussian smoothing of the distance map, in units of the smallest voxel side.
    min_size : int
        Objects smaller than this many voxels are removed.
    slice_labels : numpy.ndarray, optional
        The 2-D nuclei of each slice (e.g. split by an object-aware network's maps). The
        lines where two of them touch are cut out of the volume first: a split the slices
        agree on becomes a wall between two 3-D nuclei, while one slice's stray split
        leaves a thin slit the distance map bridges from the slices above and below.

    Returns
    -------
    numpy.ndarray
        int32 labels 1..N, one per 3-D nucleus, of the stack's shape.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3:
        raise ValueError(f"Expected a (Z, H, W) stack, got shape {probabilities.shape}.")
    if not 0.0 < neck_ratio < 1.0:
        raise ValueError(f"neck_ratio must be between 0 and 1 (exclusive), got {neck_ratio}.")
    spacing = np.asarray(spacing, dtype=float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be three positive numbers (z, y, x), got {spacing}.")
    mask = ndi.binary_fill_holes(probabilities >= threshold)
    if slice_labels is not None:
        mask &= ~_touching_lines(np.asarray(slice_labels))
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndi.distance_transform_edt(mask, sampling=spacing).astype(np.float32)
    if sigma > 0:
        distance = ndi.gaussian_filter(distance, sigma * spacing.min() / spacing)
    landscape = np.log1p(distance)
    peaks = h_maxima(landscape, float(-np.log(neck_ratio)))
    markers, _ = ndi.label(peaks & mask, structure=np.ones((3, 3, 3), bool))
    labels = watershed(-landscape, markers, mask=mask)
    return relabel_sequential(_without_fragments(labels, min_size))[0].astype(np.int32)


def _touching_lines(labels: np.ndarray) -> np.ndarray:
    """Per slice, the nucleus pixels whose 3 x 3 neighbourhood holds two different nuclei."""
    return (labels > 0) & near_two_nuclei(labels, (1, 3, 3))


def _without_fragments(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without objects in a single slice or under :data:`FRAGMENT_FRACTION` of
    the median volume (or ``min_size`` voxels)."""
    from scipy import ndimage as ndi

    sizes = np.bincount(labels.ravel())
    boxes = ndi.find_objects(labels)
    present = [i for i, box in enumerate(boxes, start=1) if box is not None]
    if not present:
        return labels
    smallest = max(min_size, FRAGMENT_FRACTION * float(np.median(sizes[present])))
    drop = np.zeros(sizes.size, bool)
    for number in present:
        box = boxes[number - 1]
        drop[number] = box[0].stop - box[0].start < 2 or sizes[number] < smallest
    return np.where(drop[labels], 0, labels)


#: Neighbouring frames whose nucleus masks overlap this much (median IoU) are slices of
#: one volume rather than separate images or time points far apart.
Z_SLICE_OVERLAP = 0.5


def looks_like_z_slices(masks: Any) -> bool:
    """Whether a ``(N, H, W)`` stack of nucleus masks looks like z-slices of one volume.

    Slices a few hundred nanometres apart cut the same nuclei, so the masks of neighbouring
    frames overlap; separate images do not, and time points only where nothing moves. The
    rule: at least 3 frames, and a median IoU of neighbouring masks of at least
    :data:`Z_SLICE_OVERLAP`.

    Parameters
    ----------
    masks : array-like
        Boolean (or label) masks of the frames, ``> 0`` is nucleus.

    Returns
    -------
    bool
    """
    if len(masks) < 3:
        return False
    overlaps = []
    previous = np.asarray(masks[0]) > 0
    for index in range(1, len(masks)):
        current = np.asarray(masks[index]) > 0
        union = np.count_nonzero(previous | current)
        if union:
            overlaps.append(np.count_nonzero(previous & current) / union)
        previous = current
    return bool(overlaps) and float(np.median(overlaps)) >= Z_SLICE_OVERLAP
