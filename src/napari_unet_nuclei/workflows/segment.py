"""Image to outputs: the one way this package segments into probabilities, masks, nuclei
and their measurements.

:func:`iter_segment` is used by :func:`~napari_unet_nuclei.predict_instances`, the batch
runner (``napari-unet-nuclei segment``), :func:`~napari_unet_nuclei.workflows.segment_to_zarr.iter_segment_to_zarr`
and the Segment dock, in memory and into zarr. The caller hands it the arrays to fill
(:class:`SegmentOutputs`: numpy, zarr or anything with numpy-style item assignment); it
fills them frame by frame and yields progress.

How a frame is read
-------------------
- ``"frames"``: each 2-D frame is read whole and the network's every output is at hand,
  so nuclei can be seeded from the model's own object maps.
- ``"bands"``: each frame is read in bands of rows and only the nucleus probability is
  kept (:func:`~napari_unet_nuclei.prediction.lazy.iter_predict_lazy`), so memory stays bounded
  whatever the image size. Nuclei are then split by the probability's shape (distance
  seeds), from the probabilities written back.
- ``"auto"`` (the default): frames, unless a frame is too large to hold in memory
  (:data:`IN_MEMORY_FRAME_BYTES`), or the image is lazy (dask, zarr) and nuclei are not
  asked for.

Nuclei
------
With an :class:`~napari_unet_nuclei.prediction.instances.InstanceConfig`, each frame is split into
nuclei by the seeded watershed; without one, the nuclei are the connected parts of the
mask (8-neighbours). In a stack, ``stack_axis="frames"`` gives ids unique in the whole
stack; ``"z"`` links the nuclei of consecutive slices into 3-D objects at the end.

A cancelled or failed run leaves no half-written frame: the frame in progress is zeroed in
every output (frames read whole are only written once finished).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.events import FrameDone, TileDone
from napari_unet_nuclei.io.array_reading import frame_indices, read_array
from napari_unet_nuclei.nn.probabilities import sigmoid
from napari_unet_nuclei.prediction.lazy import iter_predict_lazy
from napari_unet_nuclei.prediction.measurements import (
    concatenate_tables,
    measure_nuclei,
)
from napari_unet_nuclei.workflows.frame_writer import FrameSegmented, FrameWriter, connected_parts

__all__ = [
    "IN_MEMORY_FRAME_BYTES",
    "READ_MODES",
    "STACK_AXES",
    "FrameSegmented",
    "SegmentOutputs",
    "SegmentSummary",
    "iter_segment",
    "read_mode",
]

#: What the leading axis of a 3-D stack can be.
STACK_AXES = ("frames", "z")
#: How frames are read (see the module's documentation).
READ_MODES = ("auto", "frames", "bands")
#: Memory a frame may take while it is segmented whole (16 bytes a pixel: the frame, its
#: probabilities, labels and the watershed's working arrays).
IN_MEMORY_FRAME_BYTES = 2 << 30
_BYTES_PER_PIXEL = 16


@dataclass
class SegmentOutputs:
    """The arrays a segmentation fills, each of the image's shape ``(..., H, W)``.

    Any of them may be None (not wanted). numpy arrays, zarr arrays or any array-like with
    numpy-style item assignment work.

    Attributes
    ----------
    probabilities : array-like, optional
        float32 nucleus probabilities.
    mask : array-like, optional
        uint8 mask, 1 where the probability reaches the threshold.
    labels : array-like, optional
        Integer nuclei labels (int32 is safe).
    maps : dict of str to array-like
        The model's object maps to keep (``"centre"``, ``"boundary"``), float32, by name.
    """

    probabilities: Any = None
    mask: Any = None
    labels: Any = None
    maps: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> list[Any]:
        """Every array given, maps included."""
        named = [self.probabilities, self.mask, self.labels, *self.maps.values()]
        return [array for array in named if array is not None]


@dataclass(frozen=True)
class SegmentSummary:
    """What a finished segmentation gives besides its outputs.

    Attributes
    ----------
    shape : tuple of int
        The image's shape.
    read : str
        How frames were read: ``"frames"`` or ``"bands"``.
    nuclei : int or None
        Nuclei found (3-D objects of a z-stack count once); None when not counted.
    foreground : int or None
        Nucleus pixels; None when not counted.
    table : dict of str to numpy.ndarray, optional
        The measurements, one row per nucleus, when asked for.
    diameter : float, optional
        The median nucleus diameter (px) over the frames, with the ``diameter`` option.
    rescaled_frames : int
        Frames resized so that their nuclei reach the size the model learned.
    """

    shape: tuple[int, ...]
    read: str
    nuclei: int | None
    foreground: int | None
    table: dict[str, np.ndarray] | None = None
    diameter: float | None = None
    rescaled_frames: int = 0


def read_mode(image: Any, *, nuclei: bool, read: str = "auto") -> str:
    """How :func:`iter_segment` reads the frames of ``image`` (see the module's rule).

    Parameters
    ----------
    image : array-like
        The image (its shape and type decide).
    nuclei : bool
        Nuclei are split with the watershed (object maps may be needed).
    read : {"auto", "frames", "bands"}
        A fixed choice, or ``"auto"``.

    Returns
    -------
    str
        ``"frames"`` or ``"bands"``.
    """
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {READ_MODES}, got {read!r}.")
    if read != "auto":
        return read
    frame_pixels = int(np.prod(tuple(image.shape)[-2:]))
    if frame_pixels * _BYTES_PER_PIXEL > IN_MEMORY_FRAME_BYTES:
        return "bands"
    return "frames" if isinstance(image, np.ndarray) or nuclei else "bands"


def _probabilities_and_maps(
    logits: np.ndarray, model: Any, all_channels: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A frame's nucleus probabilities and, with ``all_channels``, its object maps by name."""
    channels = sigmoid(logits)
    if not all_channels:
        return channels, {}
    return channels[0], dict(zip(model.config.channel_names[1:], channels[1:]))


def _clear_frame(outputs: SegmentOutputs, index: tuple[int, ...]) -> None:
    for array in outputs.arrays():
        array[index] = 0


def iter_segment(
    model: Any,
    image: Any,
    outputs: SegmentOutputs,
    *,
    threshold: float | None = None,
    instances: Any = None,
    stack_axis: str = "frames",
    spacing: Sequence[float] | None = None,
    measure: bool = False,
    pixel_size: Sequence[float] | None = None,
    read: str = "auto",
    count_nuclei: bool = True,
    diameter: float | str | None = "auto",
    should_stop: Callable[[], bool] | None = None,
    **inference: Any,
) -> Generator[TileDone | FrameSegmented, None, SegmentSummary]:
    """Segment ``image`` into ``outputs`` frame by frame, yielding progress.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : array-like
        ``(H, W)`` or ``(..., H, W)``: numpy, dask, zarr or any array-like with numpy
        indexing, of any real dtype.
    outputs : SegmentOutputs
        The arrays to fill (any may be None).
    threshold : float, optional
        Nucleus probability threshold of the mask and the nuclei; the model's (or the
        instance settings') when omitted.
    instances : InstanceConfig, optional
        Split nuclei with the seeded watershed (e.g.
        :func:`~napari_unet_nuclei.workflows.segmentation.default_instance_config`); without it,
        nuclei are the connected parts of the mask.
    stack_axis : {"frames", "z"}
        What the leading axis of a 3-D stack is: separate frames (ids unique in the stack)
        or slices of one volume (3-D nuclei from the stacked probabilities, see
        :func:`~napari_unet_nuclei.prediction.volumes.nuclei_in_volume`).
    spacing : sequence of float, optional
        ``"z"`` only: the voxel size along z, y, x (a layer's scale), for 3-D distances;
        by default ``pixel_size`` where it has z, else equal steps.
    measure : bool
        Measure every nucleus (:func:`~napari_unet_nuclei.measure_nuclei`): per frame, or
        per 3-D object of a z-stack.
    pixel_size : sequence of float, optional
        The pixel size in micrometres along y, x (z, y, x for a z-stack), e.g. from
        :mod:`napari_unet_nuclei.io.pixel_size`: measurements gain micrometre columns.
    read : {"auto", "frames", "bands"}
        How frames are read (see the module's documentation).
    count_nuclei : bool
        Count the nuclei of the mask when nothing else needs them (no ``instances``,
        ``measure`` or ``labels``). Reading frames in bands, counting reads each frame's
        mask back whole: pass False to keep memory bounded by the bands.
    diameter : float or "auto" or None
        The nuclei's diameter in pixels: each frame is resized so that its nuclei reach the
        size the model learned, and the outputs come back at the frame's size
        (:mod:`napari_unet_nuclei.prediction.nucleus_size`). ``"auto"`` (default) estimates it from a
        first pass and resizes only frames whose nuclei are over twice that size; None
        never resizes. Frames read in bands are not resized.
    should_stop : callable, optional
        Polled between tiles and frames; when it returns True,
        :class:`~napari_unet_nuclei.prediction.inference.InferenceCancelled` is raised and the frame
        in progress is left zeroed.
    **inference
        ``tile_size``, ``overlap``, ``batch_size``, ``device``, ``precision``,
        ``backend``, ``test_time_augmentation`` (see :func:`~napari_unet_nuclei.predict`;
        the band reader takes all but the last).

    Yields
    ------
    TileDone or FrameSegmented
        Progress after each batch of tiles, and each finished frame.

    Returns
    -------
    SegmentSummary
        Counts and, with ``measure``, the measurements.
    """
    from napari_unet_nuclei.prediction.inference import check_image

    if stack_axis not in STACK_AXES:
        raise ValueError(
            f"stack_axis must be 'frames' (time points or separate images) or 'z' (slices of "
            f"one volume), got {stack_axis!r}."
        )
    shape = check_image(image)
    if stack_axis == "z" and len(shape) != 3:
        raise ValueError(
            f"stack_axis='z' needs a (Z, H, W) stack, got shape {shape}; use 'frames' for a "
            "2-D image or a stack of separate frames."
        )
    if threshold is None:
        threshold = instances.threshold if instances is not None else model.threshold
    threshold = float(threshold)
    if instances is not None:
        instances = replace(instances, threshold=threshold)
        if instances.uses_object_map and instances.seeds not in model.object_maps:
            raise ValueError(
                f"Instances seeded by the {instances.seeds!r} map need a model that predicts "
                f"it; {model.name} predicts "
                f"{list(model.object_maps) or 'the nucleus probability only'}. "
                "Use seeds='distance'."
            )
    for name in outputs.maps:
        if name not in model.object_maps:
            raise ValueError(f"{model.name} has no {name!r} map to keep.")
    mode = read_mode(image, nuclei=instances is not None, read=read)
    volume = stack_axis == "z" and len(shape) == 3
    if volume and outputs.labels is None:
        outputs = replace(outputs, labels=np.zeros(shape, np.int32))
    if volume and outputs.probabilities is None:  # the 3-D nuclei come from the stack's
        outputs = replace(outputs, probabilities=np.zeros(shape, np.float32))
    split_by = instances
    if mode == "bands" and instances is not None and instances.uses_object_map:
        # Bands keep the nucleus probability only: split by its shape.
        split_by = replace(instances, seeds="distance")
    writer = FrameWriter(
        image,
        outputs,
        split_by,
        threshold,
        stack_axis,
        measure,
        len(frame_indices(shape)),
        counts=count_nuclei or instances is not None or measure or outputs.labels is not None,
    )
    if pixel_size is not None and len(pixel_size) >= 2:
        writer.pixel_size = tuple(float(v) for v in pixel_size)[-2:]
    if mode == "frames":
        inference = {**inference, "diameter": diameter}
        yield from _segment_frames(model, image, outputs, writer, should_stop, inference)
    else:
        yield from _segment_bands(
            model, image, shape, outputs, writer, should_stop, {**inference, "diameter": diameter}
        )
    nuclei, table = writer.nuclei, None
    if volume:
        from napari_unet_nuclei.prediction.volumes import nuclei_in_volume

        # The voxel size (z, y, x) where the pixel size has z: 3-D distances and micrometres.
        voxel_size = tuple(pixel_size) if pixel_size and len(pixel_size) == 3 else None

        labels = nuclei_in_volume(
            np.asarray(outputs.probabilities[...]),
            threshold,
            spacing=spacing or voxel_size or (1.0, 1.0, 1.0),
            slice_labels=np.asarray(outputs.labels[...]),
        )
        outputs.labels[...] = labels
        nuclei = int(np.unique(labels[labels > 0]).size)
        if measure:
            table = measure_nuclei(
                labels,
                read_array(image),
                per_frame=False,
                pixel_size=voxel_size,
            )
    elif measure:
        table = concatenate_tables(writer.tables, len(shape) - 2, writer.pixel_size is not None)
    diameter = float(np.median(writer.diameters)) if writer.diameters else None
    return SegmentSummary(shape, mode, nuclei, writer.foreground, table, diameter, writer.rescaled)


def _segment_frames(
    model: Any,
    image: Any,
    outputs: SegmentOutputs,
    writer: FrameWriter,
    should_stop: Callable[[], bool] | None,
    inference: dict[str, Any],
) -> Generator[TileDone | FrameSegmented, None, None]:
    """Each frame read whole: every output channel at hand, written once finished."""
    from napari_unet_nuclei.prediction.inference import (
        FrameLogits,
        InferenceCancelled,
        iter_frame_logits,
    )

    instances = writer.instances
    wanted_maps = set(outputs.maps)
    if instances is not None and instances.uses_object_map:
        wanted_maps.add(instances.seeds)
    all_channels = bool(wanted_maps)
    frames = iter_frame_logits(
        model, image, all_channels=all_channels, should_stop=should_stop, **inference
    )
    try:
        for event in frames:
            if not isinstance(event, FrameLogits):
                yield event
                continue
            probabilities, maps = _probabilities_and_maps(event.logits, model, all_channels)
            if event.scaled_logits is None:
                labels = writer.split(probabilities, maps)
            else:  # nuclei split at the size the network saw them, then brought back
                labels = writer.split(
                    *_probabilities_and_maps(event.scaled_logits, model, all_channels)
                )
                # scipy.ndimage loads here, not when a dock imports this module (0.3 s).
                from napari_unet_nuclei.prediction.nucleus_size import resize_to

                labels = resize_to(labels, probabilities.shape, labels=True)
            index = event.index
            if outputs.probabilities is not None:
                outputs.probabilities[index] = probabilities
            if outputs.mask is not None:
                outputs.mask[index] = probabilities >= writer.threshold
            for name, array in outputs.maps.items():
                array[index] = maps[name]
            yield writer.finish(event.number, index, labels, event.diameter, event.scale)
            if should_stop is not None and should_stop():
                raise InferenceCancelled("Segmentation was cancelled.")
    finally:
        frames.close()


def _segment_bands(
    model: Any,
    image: Any,
    shape: tuple[int, ...],
    outputs: SegmentOutputs,
    writer: FrameWriter,
    should_stop: Callable[[], bool] | None,
    inference: dict[str, Any],
) -> Generator[TileDone | FrameSegmented, None, None]:
    """Each frame read and written in bands of rows; nuclei from the written outputs."""
    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    if outputs.maps:
        raise ValueError("Object maps are only kept when frames are read whole (read='frames').")
    inference.pop("test_time_augmentation", None)
    if inference.pop("diameter", None) not in (None, "auto"):
        raise ValueError(
            "A nucleus diameter needs each frame read whole, and this image is read in bands "
            "of rows (it is lazy or too large); leave the diameter on 'auto' or segment a "
            "smaller crop."
        )
    indices = frame_indices(shape)
    # Nuclei are read back from what was written: keep what that needs for the run.
    probabilities, mask, temporary = outputs.probabilities, outputs.mask, None
    if (writer.instances is not None and probabilities is None) or (
        writer.counts and probabilities is None and mask is None
    ):
        from napari_unet_nuclei.io.zarr_io import create_ome_zarr

        temporary = Path(tempfile.mkdtemp(prefix="napari-unet-nuclei-bands-"))
        if writer.instances is not None:
            probabilities = create_ome_zarr(temporary / "prob.zarr", shape, np.float32)
        else:
            mask = create_ome_zarr(temporary / "mask.zarr", shape, np.uint8)
    current = 0
    completed = False
    events = iter_predict_lazy(
        model,
        image,
        out=probabilities,
        mask_out=mask,
        threshold=writer.threshold,
        should_stop=should_stop,
        **inference,
    )
    try:
        for event in events:
            if not isinstance(event, FrameDone):
                yield event
                continue
            index = indices[event.frame]
            if not writer.counts:
                labels = None
            elif writer.instances is None and mask is not None:
                labels = connected_parts(np.asarray(mask[index]) > 0)
            else:
                labels = writer.split(np.asarray(probabilities[index]), {})
            yield writer.finish(event.frame, index, labels)
            current = event.frame + 1
            if should_stop is not None and should_stop():
                raise InferenceCancelled("Segmentation was cancelled.")
        completed = True
    finally:
        events.close()
        if not completed and current < len(indices):
            _clear_frame(outputs, indices[current])  # cancelled, failed or closed mid-frame
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
