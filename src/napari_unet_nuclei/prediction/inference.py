"""Tiled inference with smooth blending, for 2-D images and stacks of any size.

Each 2-D frame is normalised as at training time, cut into overlapping tiles that are
run in small batches, and the tile logits are blended with a smooth window, so memory is
bounded by the tile size and seams do not show. Progress is yielded as events so that a
caller can show it and stop between tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei.events import FrameDone, TileDone, run_to_end
from napari_unet_nuclei.io.array_reading import frame_indices, read_array
from napari_unet_nuclei.nn.acceleration import (
    Runner,
    make_runner,
    resolve_backend,
    resolve_precision,
)
from napari_unet_nuclei.nn.devices import resolve_device
from napari_unet_nuclei.nn.model import NucleiModel
from napari_unet_nuclei.nn.normalization import check_image_dtype, normalize_frame
from napari_unet_nuclei.nn.probabilities import probability_to_logit, sigmoid
from napari_unet_nuclei.prediction.nucleus_size import (
    AUTO_MAX_FOREGROUND,
    BUILTIN_TRAINED_DIAMETER,
    checked_diameter,
    estimate_diameter,
    rescale_factor,
    resize_to,
    trained_diameter,
)
from napari_unet_nuclei.prediction.tiling import (
    DEFAULT_TILE_SIZE,
    TileGrid,
    dihedral_runner,
    whole_frame_logits,
)

__all__ = [
    "FrameLogits",
    "InferenceCancelled",
    "check_image",
    "iter_frame_logits",
    "iter_predict",
    "predict",
    "predict_logits",
    "threshold_mask",
]


class InferenceCancelled(Exception):
    """Raised when a ``should_stop`` callback asked inference to stop."""


def _frame_logits(
    run: Runner,
    frame: np.ndarray,
    tile_size: int,
    overlap: int,
    batch_size: int,
    multiple: int,
    frame_index: int,
    n_frames: int,
) -> Generator[TileDone, None, np.ndarray]:
    height, width = frame.shape
    if height <= tile_size and width <= tile_size:
        logits = whole_frame_logits(run, frame, multiple)
        yield TileDone(frame_index, n_frames, 1, 1)
        return logits
    grid = TileGrid.for_frame(height, width, tile_size, overlap, multiple)
    if grid.pad_h or grid.pad_w:
        frame = np.pad(frame, ((0, grid.pad_h), (0, grid.pad_w)), mode=grid.pad_mode)
    tile_h, tile_w = grid.tile_h, grid.tile_w
    accumulated = None  # (H, W), or (C, H, W) for a runner that returns every channel
    total_weight = np.zeros(frame.shape, np.float32)
    window = grid.window
    corners = [(y, x) for y in grid.rows for x in grid.cols]
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        batch = np.stack([frame[y : y + tile_h, x : x + tile_w] for y, x in chunk])
        logits = run(batch)
        if accumulated is None:
            accumulated = np.zeros(logits.shape[1:-2] + frame.shape, np.float32)
        for (y, x), tile_logits in zip(chunk, logits):
            accumulated[..., y : y + tile_h, x : x + tile_w] += tile_logits * window
            total_weight[y : y + tile_h, x : x + tile_w] += window
        yield TileDone(frame_index, n_frames, min(start + batch_size, len(corners)), len(corners))
    np.divide(accumulated, total_weight, out=accumulated)
    return accumulated[..., :height, :width]


def check_image(image: Any) -> tuple[int, ...]:
    """Check that ``image`` is a grey image or stack the network can segment; return its shape.

    Parameters
    ----------
    image : array-like
        Anything with ``shape`` and ``dtype`` (numpy, dask, zarr).

    Returns
    -------
    tuple of int
        The shape.

    Raises
    ------
    ValueError
        With one sentence: fewer than 2 dimensions, an empty image, a last axis of 3 or 4
        after two axes longer than 4 (RGB(A) colour channels, not a stack of 3- or 4-pixel
        wide frames), or pixels that are not real numbers.
    """
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise ValueError(f"Expected a 2-D image or a stack (..., H, W), got shape {shape}.")
    if min(shape[-2:]) < 1:
        raise ValueError(f"The image is empty (shape {shape}).")
    if len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4:
        raise ValueError(
            f"The image has shape {shape}: its last axis of {shape[-1]} looks like "
            f"{'RGB' if shape[-1] == 3 else 'RGBA'} colour channels, not image columns. Convert "
            "it to grey first (napari_unet_nuclei.io.image_files.to_grey) or keep only the nuclear "
            "channel."
        )
    check_image_dtype(getattr(image, "dtype", np.float32))
    return shape


def iter_predict(
    model: NucleiModel,
    image: np.ndarray,
    *,
    logits: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    precision: str = "auto",
    backend: str = "auto",
    test_time_augmentation: bool = False,
    out: Any = None,
    maps_out: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TileDone | FrameDone, None, Any]:
    """Segment an image or a stack frame by frame, yielding progress events.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : array-like
        2-D image ``(H, W)`` or stack ``(..., H, W)`` of any real dtype; numpy arrays and
        lazy arrays (dask, zarr) are read one frame at a time.
    logits : bool
        Return logits instead of probabilities.
    tile_size, overlap : int
        Largest tile side and the minimum overlap between tiles, in pixels (overlap None:
        :func:`default_overlap`, 64 for 512-pixel tiles). Tiles are shrunk to cover each
        frame with as little overlap as possible.
    batch_size : int
        Tiles per network call.
    device : str or torch.device, optional
        Where to compute; automatic when omitted.
    precision : str
        ``"auto"`` (float16 mixed precision on CUDA, bfloat16 on CPUs that compute it
        natively, float32 elsewhere), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA).
    backend : str
        ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (CPU, float32; see
        :mod:`napari_unet_nuclei.nn.acceleration`).
    test_time_augmentation : bool
        Average the logits over the 8 flips and 90-degree rotations of each tile
        (8 times slower; see :func:`dihedral_runner`).
    out : array-like, optional
        Array of the image's shape to write results into (e.g. a zarr array); a new
        float32 numpy array when omitted.
    maps_out : dict of str to array-like, optional
        For an object-aware model: arrays of the image's shape, by map name (among
        ``model.object_maps``), that receive those maps as probabilities (or logits).
    should_stop : callable, optional
        Called between tiles; when it returns True, :class:`InferenceCancelled` is raised.

    Yields
    ------
    TileDone or FrameDone
        Progress after each batch of tiles and after each frame.

    Returns
    -------
    array-like
        float32 probabilities (or logits) with the image's shape.
    """
    shape = check_image(image)
    if out is None:
        out = np.empty(shape, np.float32)
    elif tuple(out.shape) != shape:
        raise ValueError(
            f"Output array shape {tuple(out.shape)} differs from image shape {shape}."
        )
    maps_out = maps_out or {}
    unknown = [name for name in maps_out if name not in model.object_maps]
    if unknown:
        raise ValueError(
            f"The model predicts no {', '.join(map(repr, unknown))} map; it predicts "
            f"{list(model.object_maps) or 'the nucleus probability only'}."
        )
    channels = model.config.channel_names
    frames = iter_frame_logits(
        model,
        image,
        all_channels=bool(maps_out),
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        precision=precision,
        backend=backend,
        test_time_augmentation=test_time_augmentation,
        should_stop=should_stop,
    )
    for event in frames:
        if isinstance(event, FrameLogits):
            frame_logits = event.logits if logits else sigmoid(event.logits)
            if maps_out:
                for name, values in zip(channels[1:], frame_logits[1:]):
                    if name in maps_out:
                        maps_out[name][event.index] = values
                frame_logits = frame_logits[0]
            out[event.index] = frame_logits
            yield FrameDone(event.number, event.n_frames)
        else:
            yield event
    return out


@dataclass(frozen=True)
class FrameLogits:
    """The network's output for one 2-D frame of an image or stack.

    ``logits`` is ``(H, W)`` (the nucleus logit) or ``(C, H, W)`` (every output channel,
    nucleus first, when asked for ``all_channels``); ``index`` is the frame's index in the
    stack (``()`` for a 2-D image).
    """

    index: tuple[int, ...]
    number: int
    n_frames: int
    logits: np.ndarray
    #: The frame's nucleus diameter (px): given, or estimated with ``diameter="auto"``.
    diameter: float | None = None
    #: The factor the frame was resized by before the network (1.0: not resized).
    scale: float = 1.0
    #: When resized: the logits at the network's scale (``logits`` are at the frame's).
    scaled_logits: np.ndarray | None = None


def iter_frame_logits(
    model: NucleiModel,
    image: Any,
    *,
    all_channels: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    precision: str = "auto",
    backend: str = "auto",
    test_time_augmentation: bool = False,
    should_stop: Callable[[], bool] | None = None,
    diameter: float | str | None = None,
) -> Iterator[TileDone | FrameLogits]:
    """Tiled network output frame by frame: ``TileDone`` events, then a ``FrameLogits``.

    Parameters are those of :func:`iter_predict`; with ``all_channels`` each frame's
    logits hold every output channel of the network (see
    :attr:`~napari_unet_nuclei.nn.network.UNetConfig.channel_names`). ``diameter`` (px, or
    ``"auto"`` to estimate it from a first pass) resizes each frame so that its nuclei
    reach the size the model learned (:mod:`napari_unet_nuclei.prediction.nucleus_size`); the
    logits come back at the frame's size.
    """
    diameter = checked_diameter(diameter)
    automatic = diameter == "auto"
    learned = trained_diameter(model.summary)
    reference = learned or BUILTIN_TRAINED_DIAMETER  # for a diameter given by hand
    cut = probability_to_logit(model.threshold) if 0 < model.threshold < 1 else 0.0
    shape = check_image(image)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    backend = resolve_backend(backend, device, precision)
    network = model.network.to(device).eval()
    run = make_runner(network, device, precision, backend, all_channels=all_channels)
    if test_time_augmentation:
        run = dihedral_runner(run)
    multiple = model.config.size_multiple
    indices = frame_indices(shape)
    n_frames = len(indices)
    # No grad-mode context around the loop: it would stay set in the caller's thread
    # across the yields below (the runner enters inference mode for each call instead).
    for number, index in enumerate(indices):
        frame = normalize_frame(read_array(image[index]), model.normalization)
        size = None if automatic else diameter
        factor = rescale_factor(size, reference, automatic=False)
        frame_logits = scaled = None
        if factor == 1.0:
            frame_logits = yield from _cancellable(
                _frame_logits(
                    run, frame, tile_size, overlap, batch_size, multiple, number, n_frames
                ),
                should_stop,
            )
            if automatic:
                nucleus = frame_logits[0] if frame_logits.ndim == 3 else frame_logits
                mask = nucleus >= cut
                size = estimate_diameter(mask)
                if learned is not None and mask.mean() <= AUTO_MAX_FOREGROUND:
                    factor = rescale_factor(size, learned, automatic=True)
        if factor != 1.0:
            scaled_shape = tuple(max(multiple, round(side * factor)) for side in frame.shape)
            scaled = yield from _cancellable(
                _frame_logits(
                    run,
                    resize_to(frame, scaled_shape),
                    tile_size,
                    overlap,
                    batch_size,
                    multiple,
                    number,
                    n_frames,
                ),
                should_stop,
            )
            frame_logits = resize_to(scaled, frame.shape)
        yield FrameLogits(index, number, n_frames, frame_logits, size, factor, scaled)


def _cancellable(
    tiles: Generator[TileDone, None, np.ndarray], should_stop: Callable[[], bool] | None
) -> Generator[TileDone, None, np.ndarray]:
    """Pass on a frame's tile events, stopping between them when asked; return its logits."""
    while True:
        try:
            tile_event = next(tiles)
        except StopIteration as done:
            return done.value
        if should_stop is not None and should_stop():
            raise InferenceCancelled("Segmentation was cancelled.")
        yield tile_event


def normalized_frame_logits(
    network: torch.nn.Module,
    frame: np.ndarray,
    device: torch.device,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 1,
    precision: str = "fp32",
    all_channels: bool = False,
) -> np.ndarray:
    """Tiled logits of one already-normalised 2-D float32 frame (used for validation):
    ``(H, W)``, or ``(C, H, W)`` with ``all_channels``.

    The caller sets the network's mode and the grad context.
    """
    multiple = network.config.size_multiple
    run = make_runner(network, device, precision, "torch", all_channels=all_channels)
    return run_to_end(
        _frame_logits(run, frame, tile_size, overlap, batch_size, multiple, 0, 1), None
    )


def predict(
    model: NucleiModel,
    image: np.ndarray,
    *,
    progress: Callable[[TileDone | FrameDone], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """Return nucleus probabilities for an image or stack.

    Parameters
    ----------
    model : NucleiModel
        A trained model (see :func:`napari_unet_nuclei.load_model`).
    image : numpy.ndarray
        2-D image or stack ``(..., H, W)`` of any real dtype and size.
    progress : callable, optional
        Called with each progress event.
    **options
        Passed to :func:`iter_predict` (``tile_size``, ``overlap``, ``batch_size``,
        ``device``, ``precision``, ``backend``, ``test_time_augmentation``, ``out``,
        ``should_stop``).

    Returns
    -------
    numpy.ndarray
        float32 probabilities in [0, 1] with the image's shape.
    """
    return run_to_end(iter_predict(model, image, **options), progress)


def predict_logits(
    model: NucleiModel,
    image: np.ndarray,
    *,
    progress: Callable[[TileDone | FrameDone], None] | None = None,
    **options: Any,
) -> np.ndarray:
    """Return per-pixel logits (for threshold sweeps in logit units, as in the lab).

    Same parameters as :func:`predict`.
    """
    return run_to_end(iter_predict(model, image, logits=True, **options), progress)


def threshold_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary nucleus mask (uint8 0/1) where ``probabilities >= threshold``."""
    return (np.asarray(probabilities) >= threshold).astype(np.uint8)
