"""Tiled inference with smooth blending, for 2-D images and stacks of any size.

Each 2-D frame is normalised as at training time, cut into overlapping tiles that are
run in small batches, and the tile logits are blended with a smooth window, so memory is
bounded by the tile size and seams do not show. Progress is yielded as events so that a
caller can show it and stop between tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
import torch

from .devices import resolve_device
from .events import FrameDone, TileDone
from .model import NucleiModel
from .normalization import normalize_frame

__all__ = [
    "InferenceCancelled",
    "iter_predict",
    "predict",
    "predict_logits",
    "threshold_mask",
    "tile_positions",
]

DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP = 64


class InferenceCancelled(Exception):
    """Raised when a ``should_stop`` callback asked inference to stop."""


def tile_positions(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``.

    Parameters
    ----------
    length : int
        Size of the axis.
    tile : int
        Tile size along the axis.
    overlap : int
        Minimum overlap between neighbouring tiles.
    align : int
        Offsets are multiples of this (``length - tile`` must be one too).

    Returns
    -------
    list of int
        Sorted start offsets; the last tile ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = int(np.ceil((length - tile) / step)) + 1
    last = (length - tile) // align
    return sorted({align * int(round(i * last / (n - 1))) for i in range(n)})


def _blend_window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """Separable weight that ramps smoothly from the tile borders over ``overlap`` pixels."""

    def ramp(length: int) -> np.ndarray:
        weight = np.ones(length, np.float32)
        width = min(overlap, length // 2)
        if width > 0:
            t = (np.arange(width, dtype=np.float32) + 0.5) / width
            edge = 0.5 - 0.5 * np.cos(np.pi * t)  # raised cosine, > 0
            weight[:width] = edge
            weight[length - width :] = edge[::-1]
        return weight

    return np.outer(ramp(tile_h), ramp(tile_w)).astype(np.float32)


def _frame_logits(
    network: torch.nn.Module,
    frame: np.ndarray,
    device: torch.device,
    tile_size: int,
    overlap: int,
    batch_size: int,
    multiple: int,
    frame_index: int,
    n_frames: int,
) -> Generator[TileDone, None, np.ndarray]:
    height, width = frame.shape
    tile_h = min(tile_size, height)
    tile_w = min(tile_size, width)
    if tile_h == height and tile_w == width:
        tensor = torch.from_numpy(frame)[None, None].to(device)
        logits = network(tensor)[0, 0].float().cpu().numpy()
        yield TileDone(frame_index, n_frames, 1, 1)
        return logits
    # Tiles start on multiples of 2**depth (the frame is reflect-padded to a multiple, as the
    # network does for a whole image), so max-pooling sees the same grid in every tile.
    tile_h = max(multiple, tile_h // multiple * multiple)
    tile_w = max(multiple, tile_w // multiple * multiple)
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        frame = np.pad(
            frame,
            ((0, pad_h), (0, pad_w)),
            mode="reflect" if min(height, width) > max(pad_h, pad_w) else "edge",
        )
    padded_h, padded_w = frame.shape
    window = _blend_window(tile_h, tile_w, overlap)
    # Where tiles do not overlap (image edges), the window must not vanish.
    window = np.maximum(window, 1e-3)
    accumulated = np.zeros((padded_h, padded_w), np.float32)
    total_weight = np.zeros((padded_h, padded_w), np.float32)
    corners = [
        (y, x)
        for y in tile_positions(padded_h, tile_h, overlap, multiple)
        for x in tile_positions(padded_w, tile_w, overlap, multiple)
    ]
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        batch = np.stack([frame[y : y + tile_h, x : x + tile_w] for y, x in chunk])
        logits = network(torch.from_numpy(batch)[:, None].to(device))[:, 0].float().cpu().numpy()
        for (y, x), tile_logits in zip(chunk, logits):
            accumulated[y : y + tile_h, x : x + tile_w] += tile_logits * window
            total_weight[y : y + tile_h, x : x + tile_w] += window
        yield TileDone(frame_index, n_frames, min(start + batch_size, len(corners)), len(corners))
    np.divide(accumulated, total_weight, out=accumulated)
    return accumulated[:height, :width]


def iter_predict(
    model: NucleiModel,
    image: np.ndarray,
    *,
    logits: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    out: Any = None,
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
        Tile side and the minimum overlap between tiles, in pixels.
    batch_size : int
        Tiles per network call.
    device : str or torch.device, optional
        Where to compute; automatic when omitted.
    out : array-like, optional
        Array of the image's shape to write results into (e.g. a zarr array); a new
        float32 numpy array when omitted.
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
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise ValueError(f"Expected a 2-D image or a stack (..., H, W), got shape {shape}.")
    if min(shape[-2:]) < 1:
        raise ValueError(f"The image is empty (shape {shape}).")
    if out is None:
        out = np.empty(shape, np.float32)
    elif tuple(out.shape) != shape:
        raise ValueError(
            f"Output array shape {tuple(out.shape)} differs from image shape {shape}."
        )
    device = resolve_device(device)
    network = model.network.to(device).eval()
    if device.type == "cpu":
        # oneDNN convolutions run about 1.5-1.8x faster on CPU in channels-last layout
        # (F=16, depth 4, 2048 x 2048: 0.41 -> 0.75 megapixels/s on a 2-core EPYC).
        network = network.to(memory_format=torch.channels_last)
    multiple = model.config.size_multiple
    frame_indices = list(np.ndindex(*shape[:-2])) if len(shape) > 2 else [()]
    n_frames = len(frame_indices)
    with torch.inference_mode():
        for number, index in enumerate(frame_indices):
            frame = normalize_frame(np.asarray(image[index]), model.normalization)
            tiles = _frame_logits(
                network, frame, device, tile_size, overlap, batch_size, multiple, number, n_frames
            )
            while True:
                try:
                    tile_event = next(tiles)
                except StopIteration as done:
                    frame_logits = done.value
                    break
                if should_stop is not None and should_stop():
                    raise InferenceCancelled("Segmentation was cancelled.")
                yield tile_event
            if not logits:
                frame_logits = _sigmoid(frame_logits)
            out[index] = frame_logits
            yield FrameDone(number, n_frames)
    return out


def normalized_frame_logits(
    network: torch.nn.Module,
    frame: np.ndarray,
    device: torch.device,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
) -> np.ndarray:
    """Tiled logits of one already-normalised 2-D float32 frame (used for validation).

    The caller sets the network's mode and the grad context.
    """
    multiple = network.config.size_multiple
    return _run(
        _frame_logits(network, frame, device, tile_size, overlap, batch_size, multiple, 0, 1), None
    )


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * values))).astype(np.float32, copy=False)


def _run(generator: Iterator[Any], callback: Callable[[Any], None] | None) -> Any:
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


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
        ``device``, ``out``, ``should_stop``).

    Returns
    -------
    numpy.ndarray
        float32 probabilities in [0, 1] with the image's shape.
    """
    return _run(iter_predict(model, image, **options), progress)


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
    return _run(iter_predict(model, image, logits=True, **options), progress)


def threshold_mask(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary nucleus mask (uint8 0/1) where ``probabilities >= threshold``."""
    return (np.asarray(probabilities) >= threshold).astype(np.uint8)
