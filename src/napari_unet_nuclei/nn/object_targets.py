"""Training targets that tell touching nuclei apart, made from instance labels.

Beside the nucleus mask, an object-aware U-Net learns one map per output channel:

- ``"centre"``: inside each nucleus, the distance to its own border divided by the
  largest such distance in that nucleus (1 at the centre, small at the border, 0 in the
  background). Neighbouring nuclei count as border, so two touching nuclei have two
  separate peaks even where no neck shows in the mask.
- ``"boundary"``: the pixels where one nucleus touches another (a line 2-3 pixels wide,
  with the background pixels of a 1-pixel gap between two nuclei), and nowhere else.

Labels that paint every nucleus with one value are split into connected parts first
(:func:`instance_labels`): touching nuclei painted with one value then stay one object in
the targets, and the network learns to merge them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Object maps a network can learn beside the nucleus probability (output channels 1, 2...).
OBJECT_MAPS = ("centre", "boundary")

#: Pixels closer than this to two different nuclei form the gap between them (see
#: :func:`gap_band`).
GAP_RADIUS = 3

__all__ = [
    "GAP_RADIUS",
    "OBJECT_MAPS",
    "gap_band",
    "instance_labels",
    "near_two_nuclei",
    "object_maps",
    "painted_with_one_value",
    "single_value_labels",
]


def single_value_labels(labels: np.ndarray) -> bool:
    """Whether every labelled pixel carries the same value (a binary mask, not instances)."""
    labels = np.asarray(labels)
    values = labels[labels > 0] if labels.dtype.kind != "b" else labels[labels]
    if values.size == 0:
        return False
    return bool(values.min() == values.max())


def painted_with_one_value(labels: np.ndarray) -> bool:
    """Whether several separate nuclei share one label value (a mask, not instances).

    Such labels are split into connected parts for training, which cannot tell touching
    nuclei apart; one nucleus alone in an image is not counted.
    """
    from scipy import ndimage as ndi

    if not single_value_labels(labels):
        return False
    _, n_parts = ndi.label(np.asarray(labels) > 0)
    return n_parts > 1


def instance_labels(labels: np.ndarray) -> np.ndarray:
    """One id per nucleus: instance labels as given, a one-value mask split into parts.

    Parameters
    ----------
    labels : numpy.ndarray
        2-D labels; ``> 0`` is nucleus. Floats are rounded (the lab's masks are 0.0/1.0).

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 = background.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        labels = np.rint(np.nan_to_num(labels, nan=0.0))
    labels = np.where(labels > 0, labels, 0)
    if single_value_labels(labels):
        parts, _ = ndi.label(labels > 0)
        return parts.astype(np.int32)
    if labels.dtype.kind == "b":
        return labels.astype(np.int32)
    if labels.max() > np.iinfo(np.int32).max:
        _, inverse = np.unique(labels, return_inverse=True)
        return inverse.reshape(labels.shape).astype(np.int32)
    return labels.astype(np.int32)


def _centre_map(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    out = np.zeros(labels.shape, np.float32)
    for number, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        own = labels[box] == number
        distance = ndi.distance_transform_edt(own)
        peak = float(distance.max())
        if peak > 0:
            out[box][own] = (distance[own] / peak).astype(np.float32)
    return out


def near_two_nuclei(labels: np.ndarray, size: int | Sequence[int] = 3) -> np.ndarray:
    """Where a window of ``size`` around a pixel holds two different nuclei.

    The one rule behind the boundary map (3 x 3: where nuclei touch, with the background
    of a 1-pixel gap), the gap band (a wider window) and the cuts between a z-stack's
    per-slice nuclei (``(1, 3, 3)``).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (any number of dimensions; 0 is background).
    size : int or sequence of int
        The window, as for :func:`scipy.ndimage.maximum_filter`.

    Returns
    -------
    numpy.ndarray
        Boolean, of the labels' shape.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.int64, copy=False)
    if not labels.any():
        return np.zeros(labels.shape, bool)
    largest = ndi.maximum_filter(labels, size=size)
    # Background stands above every id for the minimum. Not int64's maximum: scipy's
    # filters overflow on it and would call every rim pixel a meeting of two nuclei.
    ceiling = int(labels.max()) + 1
    smallest = ndi.minimum_filter(np.where(labels > 0, labels, ceiling), size=size)
    return (smallest < ceiling) & (largest != smallest)


def _boundary_map(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood holds two different nuclei: the line where nuclei
    touch, with the background pixels of a 1-pixel gap between them."""
    return near_two_nuclei(labels, 3).astype(np.float32)


def gap_band(labels: np.ndarray, radius: int = GAP_RADIUS) -> np.ndarray:
    """Where two nuclei come close: pixels whose ``(2 radius + 1)`` square holds two
    different nuclei (the narrow background between neighbours and their facing rims).

    The separating objective (:mod:`napari_unet_nuclei.train.losses`) weighs these pixels more,
    like the U-Net paper's weight map, so that the network keeps the gaps open.

    Parameters
    ----------
    labels : numpy.ndarray
        2-D labels (instance ids, or one value for all nuclei: split into parts).
    radius : int
        Half the width of the square, in pixels.

    Returns
    -------
    numpy.ndarray
        float32 0/1 map of the labels' shape.
    """
    size = 2 * int(radius) + 1
    return near_two_nuclei(instance_labels(labels), size).astype(np.float32)


def object_maps(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The target maps ``names`` (``"centre"``, ``"boundary"``) of a 2-D label image.

    Parameters
    ----------
    labels : numpy.ndarray
        2-D labels (instance ids, or one value for all nuclei: split into parts).
    names : sequence of str
        Which maps, in the order of the network's output channels 1, 2, ...

    Returns
    -------
    numpy.ndarray
        float32 ``(len(names), H, W)`` in [0, 1].
    """
    instances = instance_labels(labels)
    makers = {"centre": _centre_map, "boundary": _boundary_map}
    unknown = [name for name in names if name not in makers]
    if unknown:
        raise ValueError(f"Unknown object map(s) {unknown}; choose from {', '.join(makers)}.")
    if not names:
        return np.zeros((0, *instances.shape), np.float32)
    return np.stack([makers[name](instances) for name in names]).astype(np.float32)
