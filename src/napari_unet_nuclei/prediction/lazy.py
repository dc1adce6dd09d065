"""Segment lazy arrays (dask, zarr, memory-mapped TIFF) with memory bounded by the tile size.

:func:`iter_predict` in :mod:`~napari_unet_nuclei.prediction.inference` holds one whole 2-D frame (and
two float32 buffers of its size) in memory. Here each frame is streamed: it is read in bands
of rows one tile high, tiles are blended in a rolling buffer, and finished rows are written
to the output (a zarr array for data larger than memory) as soon as no later tile touches
them. The percentiles of the normalisation are taken from the same regular sample of the
frame as :func:`~napari_unet_nuclei.nn.normalization.normalize_frame`, so the result equals
:func:`iter_predict`'s.

Peak memory is a few bands of ``tile_size`` rows across the frame, plus the network's
activations for ``batch_size`` tiles: an 8192 x 8192 image fits in well under 2 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_unet_nuclei.events import FrameDone, TileDone, run_to_end
from napari_unet_nuclei.io.array_reading import frame_indices, read_array
from napari_unet_nuclei.nn.normalization import (
    PERCENTILE_SAMPLE,
    NormalizationConfig,
    intensity_range,
    scale_intensities,
    warn_frame_problems,
)
from napari_unet_nuclei.nn.probabilities import sigmoid
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE, TileGrid, whole_frame_logits

__all__ = [
    "frame_intensity_range",
    "iter_predict_lazy",
    "predict_lazy",
]

#: Rows read at a time when sampling a frame for its percentiles.
_SAMPLE_BAND = 256


class _Frame:
    """One 2-D frame of an array-like, read lazily by rows (zarr reads eagerly otherwise)."""

    def __init__(self, array: Any, index: tuple[int, ...]) -> None:
        self.array = array
        self.index = index
        self.shape = tuple(int(n) for n in array.shape[-2:])
        self.dtype = np.dtype(array.dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a numpy array."""
        return read_array(self.array[(*self.index, slice(start, stop))])


def frame_intensity_range(
    frame: Any, config: NormalizationConfig | None = None, *, index: tuple[int, ...] = ()
) -> tuple[Any, Any] | None:
    """The ``(low, high)`` values that ``normalize_frame`` maps to 0 and 1, read in bands.

    The same regular sample of the frame as
    :func:`~napari_unet_nuclei.nn.normalization.normalize_frame` is drawn, a band of rows at a
    time, so normalising with this range gives exactly its result.

    Parameters
    ----------
    frame : array-like
        2-D frame, or a stack with ``index`` naming the frame; numpy, zarr or dask (read
        256 rows at a time, never whole).
    config : NormalizationConfig, optional
        Percentiles; the defaults when omitted.
    index : tuple of int
        Index of the frame in the leading axes of a stack.

    Returns
    -------
    tuple or None
        ``(low, high)`` with ``high > low``, or None for a constant (or all non-finite)
        frame, which normalises to zeros.
    """
    config = config or NormalizationConfig()
    view = frame if isinstance(frame, _Frame) else _Frame(frame, index)
    height, width = view.shape
    size = height * width

    def sample_pass(finite_only: bool, total: int) -> tuple[np.ndarray, int]:
        step = total // PERCENTILE_SAMPLE + 1 if total > PERCENTILE_SAMPLE else 1
        pieces, seen, n_finite = [], 0, 0
        for start in range(0, height, _SAMPLE_BAND):
            values = view.rows(start, min(height, start + _SAMPLE_BAND))
            values = values.astype(np.float32, copy=False).ravel()
            finite = np.isfinite(values)
            n_finite += int(finite.sum())
            if finite_only:
                values = values[finite]
            pieces.append(values[(-seen) % step :: step])  # the global stride in this band
            seen += values.size
        return np.concatenate(pieces), n_finite

    sample, n_finite = sample_pass(False, size)
    if n_finite < size:
        warn_frame_problems(size - n_finite, size)
        # normalize_frame samples the finite pixels only: sample them on their own stride.
        sample, _ = sample_pass(True, n_finite)
    if sample.size == 0:
        warn_frame_problems(0, size, float("nan"))
        return None
    value_range = intensity_range(sample, config)
    if value_range is None:
        warn_frame_problems(0, size, float(sample.min()))
    return value_range


def _normalize_rows(rows: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Normalise rows exactly as :func:`normalize_frame` does with the frame's range."""
    if value_range is None:
        return np.zeros(rows.shape, np.float32)
    return scale_intensities(rows.astype(np.float32, copy=False), value_range)


def _padded_rows(frame: _Frame, start: int, stop: int, mode: str, value_range: Any) -> np.ndarray:
    """Normalised rows ``start:stop`` of the frame padded at the bottom to a grid multiple."""
    height = frame.shape[0]
    inside = min(stop, height)
    parts = []
    if start < inside:
        parts.append(_normalize_rows(frame.rows(start, inside), value_range))
    if stop > height:
        extra = np.arange(max(start, height), stop)
        rows = 2 * (height - 1) - extra if mode == "reflect" else np.full(extra.size, height - 1)
        first = int(rows.min())
        block = _normalize_rows(frame.rows(first, int(rows.max()) + 1), value_range)
        parts.append(block[rows - first])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


class _RowWriter:
    """Write finished rows of one frame to its targets, gathered to whole chunk rows."""

    def __init__(
        self,
        targets: list[tuple[Any, Callable[[np.ndarray], np.ndarray]]],
        index: tuple[int, ...],
        height: int,
    ) -> None:
        self.targets = targets
        self.index = index
        self.height = height
        chunk = 0
        for array, _ in targets:
            chunks = getattr(array, "chunks", None)
            if isinstance(chunks, tuple) and chunks and isinstance(chunks[-2], int):
                chunk = max(chunk, int(chunks[-2]))
        self.chunk = chunk
        self.pending: list[np.ndarray] = []
        self.start = 0
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        self.pending.append(rows)
        self.rows += rows.shape[0]
        end = self.start + self.rows
        if self.chunk <= 1 or end == self.height:
            self.flush(end)
        elif end // self.chunk * self.chunk > self.start:
            self.flush(end // self.chunk * self.chunk)

    def flush(self, until: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        count = until - self.start
        for array, convert in self.targets:
            array[(*self.index, slice(self.start, until))] = convert(block[:count])
        rest = block[count:]
        self.pending = [rest] if rest.shape[0] else []
        self.rows = rest.shape[0]
        self.start = until


def _stream_frame(
    run: Any,
    frame: _Frame,
    value_range: tuple[float, float] | None,
    tile_size: int,
    overlap: int,
    batch_size: int,
    multiple: int,
    frame_number: int,
    n_frames: int,
    writer: _RowWriter,
    should_stop: Callable[[], bool] | None,
) -> Generator[TileDone, None, None]:
    """Tiled logits of one frame, rows written through ``writer`` as they are finished."""
    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    height, width = frame.shape
    if height <= tile_size and width <= tile_size:
        whole = _normalize_rows(frame.rows(0, height), value_range)
        writer.write(whole_frame_logits(run, whole, multiple))
        yield TileDone(frame_number, n_frames, 1, 1)
        return
    # The same grid as inference._frame_logits, so both paths give the same logits.
    grid = TileGrid.for_frame(height, width, tile_size, overlap, multiple)
    pad_h, pad_w, mode = grid.pad_h, grid.pad_w, grid.pad_mode
    tile_h, tile_w = grid.tile_h, grid.tile_w
    padded_h, padded_w = height + pad_h, width + pad_w
    window = grid.window
    rows_at, cols_at = grid.rows, grid.cols
    n_tiles, done = len(rows_at) * len(cols_at), 0
    base = 0  # first padded row not yet written
    accumulated = np.zeros((0, padded_w), np.float32)
    weight = np.zeros((0, padded_w), np.float32)
    for number, y in enumerate(rows_at):
        band = _padded_rows(frame, y, y + tile_h, mode, value_range)
        if pad_w:
            band = np.pad(band, ((0, 0), (0, pad_w)), mode=mode)
        grow = y + tile_h - base - accumulated.shape[0]
        if grow > 0:
            accumulated = np.concatenate([accumulated, np.zeros((grow, padded_w), np.float32)])
            weight = np.concatenate([weight, np.zeros((grow, padded_w), np.float32)])
        top = y - base
        for start in range(0, len(cols_at), batch_size):
            chunk = cols_at[start : start + batch_size]
            batch = np.stack([band[:, x : x + tile_w] for x in chunk])
            out = run(batch)
            for x, tile_logits in zip(chunk, out):
                accumulated[top : top + tile_h, x : x + tile_w] += tile_logits * window
                weight[top : top + tile_h, x : x + tile_w] += window
            done += len(chunk)
            yield TileDone(frame_number, n_frames, done, n_tiles)
            if should_stop is not None and should_stop():
                raise InferenceCancelled("Segmentation was cancelled.")
        finished = rows_at[number + 1] if number + 1 < len(rows_at) else padded_h
        count = finished - base
        if min(finished, height) > base:
            keep = min(finished, height) - base
            rows = accumulated[:keep, :width] / weight[:keep, :width]
            writer.write(rows.astype(np.float32, copy=False))
        accumulated, weight = accumulated[count:], weight[count:]
        base = finished


def iter_predict_lazy(
    model: Any,
    image: Any,
    *,
    out: Any = None,
    mask_out: Any = None,
    threshold: float | None = None,
    logits: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 1,
    device: Any = None,
    precision: str = "auto",
    backend: str = "auto",
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TileDone | FrameDone, None, Any]:
    """Segment a (possibly larger than memory) image or stack, frame by frame, in bands.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : array-like
        ``(H, W)`` or ``(..., H, W)``: numpy, zarr, dask or memory-mapped; read a band of
        rows at a time (for dask/zarr, chunks no taller than ``tile_size`` keep reads small).
    out : array-like, optional
        Array of the image's shape for the probabilities (or logits), e.g. a zarr array;
        when omitted and ``mask_out`` is omitted too, a float32 numpy array.
    mask_out : array-like, optional
        Array of the image's shape for the uint8 mask (1 = nucleus), written band by band;
        needs ``threshold`` or uses the model's.
    threshold : float, optional
        Probability threshold of the mask (default: the model's).
    logits : bool
        Write logits to ``out`` instead of probabilities.
    tile_size, overlap, batch_size : int
        As in :func:`~napari_unet_nuclei.prediction.inference.iter_predict`.
    device : str or torch.device, optional
        Where to compute; automatic when omitted.
    precision, backend : str
        As in :func:`~napari_unet_nuclei.prediction.inference.iter_predict`.
    should_stop : callable, optional
        Called after each batch of tiles; when it returns True,
        :class:`~napari_unet_nuclei.prediction.inference.InferenceCancelled` is raised.

    Yields
    ------
    TileDone or FrameDone
        Progress after each batch of tiles and after each frame.

    Returns
    -------
    array-like
        ``out`` if given or created, else ``mask_out``.
    """
    from napari_unet_nuclei.nn.acceleration import make_runner, resolve_backend, resolve_precision
    from napari_unet_nuclei.nn.devices import resolve_device
    from napari_unet_nuclei.prediction.inference import InferenceCancelled

    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise ValueError(f"Expected a 2-D image or a stack (..., H, W), got shape {shape}.")
    if min(shape[-2:]) < 1:
        raise ValueError(f"The image is empty (shape {shape}).")
    if out is None and mask_out is None:
        out = np.empty(shape, np.float32)
    for name, array in (("out", out), ("mask_out", mask_out)):
        if array is not None and tuple(array.shape) != shape:
            raise ValueError(
                f"The {name} array has shape {tuple(array.shape)} but the image has {shape}."
            )
    threshold = float(model.threshold if threshold is None else threshold)
    targets: list[tuple[Any, Callable[[np.ndarray], np.ndarray]]] = []
    if out is not None:
        targets.append((out, (lambda rows: rows) if logits else sigmoid))
    if mask_out is not None:
        targets.append((mask_out, lambda rows: (sigmoid(rows) >= threshold).astype(np.uint8)))
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    run = make_runner(
        model.network.to(device).eval(),
        device,
        precision,
        resolve_backend(backend, device, precision),
    )
    multiple = model.config.size_multiple
    indices = frame_indices(shape)
    # No grad-mode context around the yields (it would leak into the caller's thread).
    for number, index in enumerate(indices):
        frame = _Frame(image, index)
        value_range = frame_intensity_range(frame, model.normalization)
        writer = _RowWriter(targets, index, shape[-2])
        yield from _stream_frame(
            run,
            frame,
            value_range,
            tile_size,
            overlap,
            batch_size,
            multiple,
            number,
            len(indices),
            writer,
            should_stop,
        )
        if should_stop is not None and should_stop():
            raise InferenceCancelled("Segmentation was cancelled.")
        yield FrameDone(number, len(indices))
    return out if out is not None else mask_out


def predict_lazy(model: Any, image: Any, **options: Any) -> Any:
    """Run :func:`iter_predict_lazy` to the end and return its result (no progress)."""
    return run_to_end(iter_predict_lazy(model, image, **options), None)
