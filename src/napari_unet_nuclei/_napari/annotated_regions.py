"""Annotated regions drawn in a napari Shapes layer, as boolean maps per image frame.

Rectangles, polygons and ellipses mark where every nucleus has been annotated; lines and
paths enclose nothing and are skipped. A 2-D shape on a stack applies to every frame; a
shape drawn on one frame of a stack (its vertices carry the frame coordinate) applies to
that frame only. The layers' scale and translation are honoured (not rotation or shear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei.train.annotations import REGION_KINDS, region_mask

__all__ = ["AnnotatedRegions", "annotated_regions"]


@dataclass
class AnnotatedRegions:
    """Boolean maps ``(n_frames, H, W)`` of annotated pixels, and what was skipped."""

    masks: np.ndarray
    n_regions: int
    n_skipped: int

    def frame(self, index: int) -> np.ndarray:
        """The map of frame ``index`` (frames of a stack flattened)."""
        return self.masks[index]


def _axis_transform(layer: Any, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translation of the last ``ndim`` axes of ``layer`` (ones and zeros if absent)."""
    scale = np.ones(ndim)
    translate = np.zeros(ndim)
    if layer is not None:
        layer_scale = np.asarray(getattr(layer, "scale", np.ones(ndim)), float)
        layer_translate = np.asarray(getattr(layer, "translate", np.zeros(ndim)), float)
        k = min(ndim, layer_scale.size)
        scale[ndim - k :] = layer_scale[layer_scale.size - k :]
        k = min(ndim, layer_translate.size)
        translate[ndim - k :] = layer_translate[layer_translate.size - k :]
    return scale, translate


def annotated_regions(
    shapes_layer: Any, image_shape: tuple[int, ...], image_layer: Any = None
) -> AnnotatedRegions:
    """Rasterise a Shapes layer onto the frames of an image.

    Parameters
    ----------
    shapes_layer : napari.layers.Shapes
        The annotated regions.
    image_shape : tuple of int
        Shape of the image layer: ``(H, W)`` or a stack ``(..., H, W)``.
    image_layer : napari.layers.Image, optional
        The image layer, whose scale and translation map world to pixel coordinates.

    Returns
    -------
    AnnotatedRegions
    """
    image_shape = tuple(int(s) for s in image_shape)
    leading = image_shape[:-2]
    height, width = image_shape[-2:]
    n_frames = int(np.prod(leading, dtype=np.int64)) if leading else 1
    masks = np.zeros((n_frames, height, width), bool)
    n_regions = n_skipped = 0
    for vertices, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        points = np.asarray(vertices, float)
        if kind not in REGION_KINDS or points.ndim != 2 or points.shape[0] < 3:
            n_skipped += 1
            continue
        ndim = points.shape[1]
        shapes_scale, shapes_translate = _axis_transform(shapes_layer, ndim)
        image_scale, image_translate = _axis_transform(image_layer, ndim)
        pixels = (points * shapes_scale + shapes_translate - image_translate) / image_scale
        region = region_mask((height, width), pixels[:, -2:], kind)
        if not region.any():
            n_skipped += 1
            continue
        shape_leading = pixels[0, :-2]
        if not leading or shape_leading.size == 0:
            masks |= region  # a 2-D shape: every frame
        else:
            k = min(len(leading), shape_leading.size)
            coords = [int(round(c)) for c in shape_leading[shape_leading.size - k :]]
            full = [0] * (len(leading) - k) + coords
            if any(c < 0 or c >= n for c, n in zip(full, leading)):
                n_skipped += 1
                continue
            if k < len(leading):  # fewer leading axes than the image: all those frames
                view = masks.reshape(*leading, height, width)
                index = tuple([slice(None)] * (len(leading) - k) + coords)
                view[index] |= region
            else:
                masks[int(np.ravel_multi_index(full, leading))] |= region
        n_regions += 1
    return AnnotatedRegions(masks, n_regions, n_skipped)
