"""Writing one segmented frame: its nuclei split, ids made unique in a stack, its outputs
written and measured, and the running counts (for :func:`~.segment.iter_segment`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei.events import FrameDone
from napari_unet_nuclei.io.array_reading import read_array
from napari_unet_nuclei.prediction.instances import instances_from_maps
from napari_unet_nuclei.prediction.measurements import (
    measure_nuclei,
    with_frame_columns,
)

__all__ = ["FrameSegmented", "FrameWriter", "connected_parts"]


@dataclass(frozen=True)
class FrameSegmented(FrameDone):
    """Every output of one 2-D frame is written.

    Attributes
    ----------
    frame, n_frames : int
        Flat frame number and count (as in :class:`~napari_unet_nuclei.events.FrameDone`).
    index : tuple of int
        The frame's index over the leading axes (``()`` for a 2-D image).
    nuclei : int or None
        Nuclei in the frame (before 3-D linking); None when not counted.
    foreground : int or None
        Nucleus pixels in the frame; None when not counted.
    table : dict of str to numpy.ndarray, optional
        The frame's measurements (frame columns first), when asked for and the stack is not
        a z-stack (whose nuclei are measured as volumes at the end).
    diameter : float, optional
        The frame's nucleus diameter (px), given or estimated (``diameter`` option).
    scale : float
        The factor the frame was resized by for the network (1.0: not resized).
    """

    index: tuple[int, ...] = ()
    nuclei: int | None = None
    foreground: int | None = None
    table: dict[str, np.ndarray] | None = None
    diameter: float | None = None
    scale: float = 1.0


def connected_parts(mask: np.ndarray) -> np.ndarray:
    """Nuclei of a mask without a model's rule: its 8-connected parts, as int32 ids."""
    from scipy import ndimage as ndi

    return ndi.label(mask, structure=np.ones((3, 3), bool))[0].astype(np.int32, copy=False)


class FrameWriter:
    """Splits a frame into nuclei, writes its outputs and keeps the running counts."""

    def __init__(
        self,
        image: Any,
        outputs: Any,  # a workflows.segment.SegmentOutputs
        instances: Any,
        threshold: float,
        stack_axis: str,
        measure: bool,
        n_frames: int,
        counts: bool,
    ) -> None:
        self.image = image
        self.outputs = outputs
        self.instances = instances
        self.threshold = threshold
        self.per_frame_ids = stack_axis == "frames"
        self.measure_frames = measure and stack_axis == "frames"
        self.n_frames = n_frames
        self.offset = 0
        self.nuclei = 0
        self.foreground = 0
        self.tables: list[dict[str, np.ndarray]] = []
        #: Whether frames are split into nuclei at all (counted, labelled, measured).
        self.counts = counts
        #: The pixel size (y, x) in micrometres, for the measurements; None: unknown.
        self.pixel_size: tuple[float, float] | None = None
        #: Per frame, the nucleus diameter (given or estimated), and the frames resized.
        self.diameters: list[float] = []
        self.rescaled = 0

    def split(self, probabilities: np.ndarray, maps: dict[str, np.ndarray]) -> np.ndarray:
        """Nuclei of one frame: the watershed (with the maps it uses) or connected parts."""
        if self.instances is None:
            return connected_parts(probabilities >= self.threshold)
        return instances_from_maps(probabilities, maps, self.instances)

    def finish(
        self,
        number: int,
        index: tuple[int, ...],
        labels: np.ndarray | None,
        diameter: float | None = None,
        scale: float = 1.0,
    ) -> FrameSegmented:
        """Write a frame's labels (ids offset in a stack) and measure it; ``diameter`` and
        ``scale`` are the frame's nucleus diameter and the factor it was resized by."""
        if labels is None:  # not counted
            self.nuclei = self.foreground = None
            return FrameSegmented(number, self.n_frames, None, index)
        count = int(labels.max()) if labels.size else 0
        if self.offset + count > np.iinfo(np.int32).max:
            raise ValueError("More nuclei than int32 labels can hold; segment fewer frames.")
        if self.offset and self.per_frame_ids:
            labels[labels > 0] += self.offset
        if self.outputs.labels is not None:
            self.outputs.labels[index] = labels
        foreground = int(np.count_nonzero(labels))
        table = None
        if self.measure_frames:
            frame = read_array(self.image[index] if index else self.image)
            table = with_frame_columns(
                measure_nuclei(labels, frame, pixel_size=self.pixel_size), index
            )
            self.tables.append(table)
        self.offset += count
        self.nuclei += count
        self.foreground += foreground
        if diameter is not None:
            self.diameters.append(float(diameter))
        self.rescaled += scale != 1.0
        return FrameSegmented(
            number, self.n_frames, None, index, count, foreground, table, diameter, scale
        )
