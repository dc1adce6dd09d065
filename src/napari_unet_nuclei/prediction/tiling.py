"""Tiles of a frame and what is done with them: where they lie, how their logits blend,
and test-time augmentation (the 8 flips and rotations), for
:mod:`napari_unet_nuclei.prediction.inference` and the streamed paths. Imports numpy only,
so the docks and the command line's arguments take their defaults from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.acceleration import Runner

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE_SIZE",
    "DIHEDRAL_TRANSFORMS",
    "TileGrid",
    "balanced_tile_size",
    "default_overlap",
    "dihedral_runner",
    "tile_positions",
    "whole_frame_logits",
]

#: Tile side (pixels) when none is given: the docks, the command line and the API.
DEFAULT_TILE_SIZE = 512
#: The largest default overlap between tiles (reached from 512-pixel tiles up).
DEFAULT_OVERLAP = 64


def default_overlap(tile_size: int) -> int:
    """The overlap between tiles when none is given: an eighth of the tile, 8 to 64 pixels.

    The one rule for the docks, the command line, batches and the Python API, so that a tile
    size gives the same result everywhere.
    """
    return max(8, min(DEFAULT_OVERLAP, int(tile_size) // 8))


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


def balanced_tile_size(length: int, max_tile: int, overlap: int, multiple: int = 1) -> int:
    """Smallest tile side (a multiple of ``multiple``, at most ``max_tile`` rounded down)
    that covers ``length`` with as few tiles as ``max_tile`` would.

    Fixed 512-pixel tiles with 64 pixels of overlap compute 2560 pixels to cover 2048
    (5 tiles); 560-pixel tiles cover it with 4 tiles and 2240 computed pixels.
    """
    max_tile = max(multiple, max_tile // multiple * multiple)
    if length <= max_tile:
        return max(multiple, -(-length // multiple) * multiple)
    step = max(1, max_tile - overlap)
    n_tiles = int(np.ceil((length - max_tile) / step)) + 1
    side = -(-(length + (n_tiles - 1) * overlap) // n_tiles)
    return min(max_tile, max(multiple, -(-side // multiple) * multiple))


Transform = Callable[[np.ndarray], np.ndarray]


def _swap(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


#: The 8 flips and 90-degree rotations of an array's last two axes (rows, columns), each
#: with its inverse. The first 1, 2 and 4 are: the identity, + the left-right flip, + the
#: up-down flip and the 180-degree turn (test-time augmentation and its uncertainty).
DIHEDRAL_TRANSFORMS: tuple[tuple[Transform, Transform], ...] = (
    (lambda a: a, lambda a: a),
    (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),
    (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
    (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1]),
    (_swap, _swap),
    (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: np.rot90(a, -1, axes=(-2, -1))),
    (lambda a: np.rot90(a, -1, axes=(-2, -1)), lambda a: np.rot90(a, 1, axes=(-2, -1))),
    (lambda a: _swap(a[..., ::-1, ::-1]), lambda a: _swap(a[..., ::-1, ::-1])),
)


def dihedral_runner(run: Runner) -> Runner:
    """Test-time augmentation: the mean logits over the 8 flips and 90-degree rotations
    (:data:`DIHEDRAL_TRANSFORMS`).

    Costs 8 network passes per tile; the averaged logits are smoother and usually a
    little more accurate at nucleus borders.
    """

    def run_all(tiles: np.ndarray) -> np.ndarray:
        total = None
        for forward, inverse in DIHEDRAL_TRANSFORMS:
            logits = inverse(run(np.ascontiguousarray(forward(tiles))))
            total = logits.astype(np.float32) if total is None else total + logits
        return total / len(DIHEDRAL_TRANSFORMS)

    return run_all


def whole_frame_logits(run: Runner, frame: np.ndarray, multiple: int) -> np.ndarray:
    """Logits of a normalised frame in one network call, padded exactly as the network
    pads a whole image (reflect, repeated for tiny frames) and cropped back."""
    # torch only when a frame is run whole: this module's constants stay light to import.
    import torch

    from napari_unet_nuclei.nn.network import pad_reflect

    height, width = frame.shape
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        frame = pad_reflect(torch.from_numpy(frame)[None, None], pad_h, pad_w)[0, 0].numpy()
    return run(frame[None])[0, ..., :height, :width]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a frame lie.

    The frame is padded at the bottom and right to a multiple of ``2**depth`` and the
    tiles start on multiples of it, so max-pooling sees the same grid in every tile as
    in a whole-image pass. Tiles are as small as the number of tiles allows (see
    :func:`balanced_tile_size`).
    """

    pad_h: int
    pad_w: int
    pad_mode: str
    tile_h: int
    tile_w: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    overlap: int

    @classmethod
    def for_frame(
        cls, height: int, width: int, tile_size: int, overlap: int | None, multiple: int
    ) -> TileGrid:
        """Grid for a ``height x width`` frame, tiles at most ``tile_size`` pixels
        (``overlap`` None: :func:`default_overlap`)."""
        if overlap is None:
            overlap = default_overlap(tile_size)
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "edge"
        padded_h, padded_w = height + pad_h, width + pad_w
        tile_h = min(padded_h, balanced_tile_size(padded_h, tile_size, overlap, multiple))
        tile_w = min(padded_w, balanced_tile_size(padded_w, tile_size, overlap, multiple))
        return cls(
            pad_h,
            pad_w,
            mode,
            tile_h,
            tile_w,
            tuple(tile_positions(padded_h, tile_h, overlap, multiple)),
            tuple(tile_positions(padded_w, tile_w, overlap, multiple)),
            overlap,
        )

    @property
    def window(self) -> np.ndarray:
        """Blending weight of one tile; never zero, so non-overlapped edges keep weight."""
        return np.maximum(_blend_window(self.tile_h, self.tile_w, self.overlap), 1e-3)
