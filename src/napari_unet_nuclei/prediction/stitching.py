"""Nuclei in 3-D: link the 2-D nuclei of consecutive z-slices into one object each.

A z-stack segmented slice by slice gives a new id in every slice. Here each nucleus of a
slice takes the id of the nucleus it overlaps best in the slice above (intersection over
union at least ``min_iou``, one-to-one, best overlaps first, as cellpose's
``stitch_threshold``); a nucleus that overlaps none starts a new 3-D object.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stitch_slices"]


def _overlaps(current: np.ndarray, previous: np.ndarray) -> list[tuple[float, int, int]]:
    """``(iou, current_id, previous_id)`` of every pair of overlapping objects."""
    both = (current > 0) & (previous > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(
        np.stack([current[both], previous[both]]).astype(np.int64), axis=1, return_counts=True
    )
    current_sizes = dict(zip(*np.unique(current[current > 0], return_counts=True)))
    previous_sizes = dict(zip(*np.unique(previous[previous > 0], return_counts=True)))
    out = []
    for (a, b), shared in zip(pairs.T, counts):
        union = current_sizes[a] + previous_sizes[b] - shared
        out.append((float(shared) / float(union), int(a), int(b)))
    return out


def stitch_slices(labels: np.ndarray, min_iou: float = 0.25) -> np.ndarray:
    """Give the nuclei of a z-stack of 2-D labels one id per 3-D object.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, H, W)`` integer labels, each slice labelled on its own (ids may repeat or
        be unique across slices; 0 = background).
    min_iou : float
        Least intersection over union with a nucleus of the slice above for a nucleus to
        continue it (0-1).

    Returns
    -------
    numpy.ndarray
        int32 labels of the same shape: ids 1..N, one per 3-D nucleus, the same in every
        slice the nucleus spans.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"stitch_slices expects a (Z, H, W) stack, got shape {labels.shape}.")
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}.")
    out = np.zeros(labels.shape, np.int32)
    next_id = 1
    for z in range(labels.shape[0]):
        current = labels[z]
        ids = np.unique(current[current > 0])
        mapping: dict[int, int] = {}
        if z > 0:
            taken: set[int] = set()
            for iou, own, previous in sorted(_overlaps(current, out[z - 1]), reverse=True):
                if iou < min_iou:
                    break
                if own in mapping or previous in taken:
                    continue
                mapping[own] = previous
                taken.add(previous)
        for own in ids:
            own = int(own)
            if own not in mapping:
                mapping[own] = next_id
                next_id += 1
        if ids.size:
            lookup = np.zeros(int(ids.max()) + 1, np.int32)
            for own, new in mapping.items():
                lookup[own] = new
            out[z] = lookup[np.where(current > 0, current, 0)]
    return out
