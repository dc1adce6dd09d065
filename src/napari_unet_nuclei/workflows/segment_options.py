"""What a batch run writes for each image, and how it computes it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from napari_unet_nuclei.io.image_inputs import BatchError
from napari_unet_nuclei.prediction.instances import InstanceConfig
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE

__all__ = ["SegmentOptions"]


@dataclass(frozen=True)
class SegmentOptions:
    """What to write for each image, and how to compute it.

    Parameters
    ----------
    threshold : float, optional
        Probability threshold of the mask (default: the model's).
    format : {"tiff", "zarr"}
        Output files: TIFF (zlib-compressed) or OME-Zarr 0.4 folders.
    probabilities : bool
        Also write the float32 probabilities (``<name>_prob``).
    instances : bool
        Write nuclei labels (seeded watershed, one id per nucleus) instead of the mask.
    instance_config : InstanceConfig, optional
        Watershed settings (its threshold is replaced by ``threshold``); by default the
        model's own (see :func:`~napari_unet_nuclei.workflows.segmentation.default_instance_config`).
    min_size : int, optional
        Smallest nucleus in pixels, replacing the instance settings' ``min_size``.
    stack_axis : {"auto", "frames", "z"}
        What the first axis of a 3-D stack is: separate frames (nuclei labelled frame by
        frame, ids unique in the stack) or z-slices of one volume (3-D nuclei); ``"auto"``:
        z where the file names that axis z, frames otherwise.
    channel : int, optional
        The nuclear channel of a multi-channel image (its ``c`` axis, or a short unnamed
        first axis); by default the channel with the most nucleus-like contrast where the
        file names a channel axis, and a refusal where an unnamed short axis could be
        channels or frames.
    measure : bool
        Also write ``<name>_nuclei.csv`` (one row per nucleus: area, centroid, intensity,
        eccentricity; sizes in pixels and, where the file gives its pixel size, in
        micrometres too); nuclei are the instance labels, or the connected parts of the
        mask.
    diameter : float or "auto" or None
        The nuclei's diameter in pixels, to resize each frame to the size the model
        learned; ``"auto"`` estimates it (and resizes only nuclei over twice that size),
        None never resizes (see :func:`~napari_unet_nuclei.workflows.segment.iter_segment`).
    tile_size, overlap, batch_size : int
        Tiled inference settings (overlap None: ``tiling.default_overlap(tile_size)``,
        the rule the docks use too).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    precision, backend : str
        Numeric precision and runtime, as in
        :func:`~napari_unet_nuclei.prediction.inference.iter_predict`.
    threads : int, optional
        torch threads per task (set on dask workers so they share the CPU cores).
    lazy_bytes : int
        TIFF inputs larger than this are read lazily, a band of rows at a time.
    """

    threshold: float | None = None
    format: str = "tiff"
    probabilities: bool = False
    instances: bool = False
    instance_config: InstanceConfig | None = None
    min_size: int | None = None
    stack_axis: str = "auto"
    channel: int | None = None
    measure: bool = False
    diameter: float | str | None = "auto"
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int | None = None
    batch_size: int = 1
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    lazy_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        if self.format not in ("tiff", "zarr"):
            raise BatchError(f"Output format must be 'tiff' or 'zarr', got {self.format!r}.")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise BatchError(f"The threshold must be in [0, 1], got {self.threshold}.")
        if self.stack_axis not in ("auto", "frames", "z"):
            raise BatchError(
                f"The stack axis must be 'auto', 'frames' or 'z', got {self.stack_axis!r}."
            )
        if self.channel is not None and self.channel < 0:
            raise BatchError(f"The channel must be 0 or more, got {self.channel}.")
        if self.min_size is not None and self.min_size < 0:
            raise BatchError(f"The smallest nucleus size must be >= 0, got {self.min_size}.")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data."""
        data = asdict(self)
        data["instance_config"] = (
            self.instance_config.to_dict() if self.instance_config is not None else None
        )
        return data
