"""Read the Train dock's layers into training frames (copies), with annotated regions."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet_nuclei._napari._layers import TrainingFrames, grey_layer_data, training_data
from napari_unet_nuclei._napari.annotated_regions import annotated_regions

__all__ = ["layers_to_training_data"]


def layers_to_training_data(
    image_layer: Any, labels_layer: Any, shapes_layer: Any, *, use_empty_frames: bool
) -> tuple[TrainingFrames, str, list[str]]:
    """Frames of an image layer and its labels, copied for a training job.

    Parameters
    ----------
    image_layer, labels_layer : napari.layers.Image, napari.layers.Labels
        The image (an RGB one is turned grey) and its labels, frame by frame.
    shapes_layer : napari.layers.Shapes or None
        Annotated regions: only the frames they cover are used, empty ones included, with
        their masks (the loss is computed inside them).
    use_empty_frames : bool
        Without regions: also train on frames with no label (as background).

    Returns
    -------
    tuple of (TrainingFrames, str, list of str)
        The frames, a sentence saying which were taken, and notes for the user (an RGB image
        turned grey, shapes that enclose no area).

    Raises
    ------
    ValueError
        When the shapes layer has no region on the image.
    """
    image_data, rgb_note = grey_layer_data(image_layer)
    notes = [rgb_note] if rgb_note else []
    if shapes_layer is None:
        data = training_data(
            image_data, labels_layer.data, use_empty_frames=use_empty_frames, name=image_layer.name
        )
        return data, data.describe(), notes
    data = training_data(
        image_data, labels_layer.data, use_empty_frames=True, name=image_layer.name
    )
    regions = annotated_regions(shapes_layer, np.shape(image_data), image_layer)
    keep = [i for i, mask in enumerate(regions.masks) if mask.any()]
    if not keep:
        raise ValueError(
            f"the shapes layer '{shapes_layer.name}' has no rectangle, polygon or ellipse "
            f"on the image '{image_layer.name}'"
        )
    if regions.n_skipped:
        notes.append(
            f"{regions.n_skipped} shape(s) of '{shapes_layer.name}' were ignored: lines "
            "and paths enclose no area, or the shape lies outside the image."
        )
    pixels = int(sum(int(regions.masks[i].sum()) for i in keep))
    describe = (
        f"Training on the annotated regions of {len(keep)} of {data.n_total} frame(s) "
        f"({pixels:,} px)."
    )
    layers = TrainingFrames(
        [data.images[i] for i in keep],
        [data.labels[i] for i in keep],
        [data.names[i] for i in keep],
        data.n_total,
        [regions.masks[i].copy() for i in keep],
    )
    return layers, describe, notes
