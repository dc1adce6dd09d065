"""Partial annotations: maps of the pixels whose labels are complete.

A user who corrected only part of an image marks the corrected regions with rectangles,
polygons or ellipses; training then samples patches there and computes the loss only on
those pixels (see :class:`~napari_unet_nuclei.train.patches.PatchSampler`). This module turns
plain vertex arrays into such boolean maps; it knows nothing about napari layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["REGION_KINDS", "annotated_pixel_count", "region_mask", "regions_mask"]

#: Shape kinds that enclose an area (napari's shape types of the same names).
REGION_KINDS = ("rectangle", "polygon", "ellipse")


def region_mask(shape: tuple[int, int], vertices: np.ndarray, kind: str = "polygon") -> np.ndarray:
    """Boolean map of the pixels inside one region.

    Parameters
    ----------
    shape : (int, int)
        Shape ``(H, W)`` of the image.
    vertices : numpy.ndarray
        ``(N, 2)`` vertices in pixel coordinates ``(row, column)``; pixel ``(r, c)`` has its
        centre at ``(r, c)``, as in napari. Pixels whose centre lies inside or on the
        boundary are included.
    kind : {"rectangle", "polygon", "ellipse"}
        How to read the vertices: a polygon (rectangles are polygons of 4 vertices), or
        an ellipse inscribed in the bounding box of the vertices.

    Returns
    -------
    numpy.ndarray
        bool array of ``shape``.

    Raises
    ------
    ValueError
        For an unknown kind, fewer than 3 vertices, or vertices that are not 2-D.
    """
    from skimage.draw import ellipse, polygon

    height, width = int(shape[0]), int(shape[1])
    points = np.asarray(vertices, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"Region vertices must have shape (N, 2), got {points.shape}.")
    if kind not in REGION_KINDS:
        raise ValueError(
            f"A '{kind}' shape encloses no area; mark annotated regions with "
            f"{', '.join(REGION_KINDS)} shapes."
        )
    if len(points) < 3:
        raise ValueError(f"A region needs at least 3 vertices, got {len(points)}.")
    out = np.zeros((height, width), bool)
    if kind == "ellipse":
        low, high = points.min(axis=0), points.max(axis=0)
        centre, radius = (low + high) / 2, (high - low) / 2
        if np.any(radius <= 0):
            return out
        rr, cc = ellipse(centre[0], centre[1], radius[0], radius[1], shape=(height, width))
    else:
        rr, cc = polygon(points[:, 0], points[:, 1], shape=(height, width))
    out[rr, cc] = True
    return out


def regions_mask(
    shape: tuple[int, int],
    regions: Iterable[np.ndarray | tuple[np.ndarray, str]],
) -> np.ndarray:
    """Union of several regions (see :func:`region_mask`).

    Parameters
    ----------
    shape : (int, int)
        Shape ``(H, W)`` of the image.
    regions : iterable
        Vertex arrays (polygons), or ``(vertices, kind)`` pairs.

    Returns
    -------
    numpy.ndarray
        bool array of ``shape``: True where the labels are complete.
    """
    out = np.zeros(tuple(int(s) for s in shape), bool)
    for region in regions:
        if isinstance(region, tuple):
            vertices, kind = region
        else:
            vertices, kind = region, "polygon"
        out |= region_mask(out.shape, vertices, kind)
    return out


def annotated_pixel_count(shape: Sequence[int], annotated: np.ndarray | None) -> int:
    """Number of annotated pixels: all of them when ``annotated`` is None."""
    if annotated is None:
        return int(np.prod(shape, dtype=np.int64))
    return int(np.count_nonzero(annotated))
