"""Which frames or tiles to annotate next: ordered by the model's uncertainty
(:mod:`napari_unet_nuclei.prediction.uncertainty`) with diversity (:func:`diverse_order`),
as streamed events and plain results."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet_nuclei.events import run_to_end
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE
from napari_unet_nuclei.prediction.uncertainty import (
    augmentation_transforms,
    frame_embedding,
    frame_moments,
    maps_from_moments,
    summarise_maps,
    tile_grid,
)

__all__ = [
    "DEFAULT_DIVERSITY",
    "FrameRanking",
    "FrameScore",
    "FrameScored",
    "RankingProgress",
    "TileScore",
    "diverse_order",
    "iter_rank_frames",
    "iter_rank_tiles",
    "rank_frames",
    "rank_tiles",
]

DEFAULT_DIVERSITY = 0.5
#: Greedy ordering: positions chosen greedily, and frames used to measure coverage.
_GREEDY_PICKS = 256
_MAX_COVERAGE_FRAMES = 4096


# ------------------------------------------------------------------------------- events
@dataclass(frozen=True)
class RankingProgress:
    """Progress inside the ranking: ``fraction`` of all network passes is done."""

    frame: int
    n_frames: int
    fraction: float


@dataclass(frozen=True)
class FrameScored:
    """One frame (or, for tiles, the whole image) has been scored."""

    frame: int
    n_frames: int
    score: float


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class FrameScore:
    """Uncertainty of one 2-D frame.

    Parameters
    ----------
    frame : int
        Position of the frame in the stack, counting 2-D frames in C order.
    index : tuple of int
        Index of the frame over the stack's leading axes (``()`` for a 2-D image).
    score : float
        Mean pixel uncertainty ``(H + D) / 2`` in [0, 1] (see the module docstring).
    entropy : float
        Mean binary entropy of the mean probability, in bits.
    disagreement : float
        Mean ``2 * std`` of the augmented probabilities.
    uncertain_fraction : float
        Share of pixels whose mean probability is in [0.3, 0.7].
    """

    frame: int
    index: tuple[int, ...]
    score: float
    entropy: float
    disagreement: float
    uncertain_fraction: float


@dataclass
class FrameRanking:
    """Scores of every frame of a stack and the order in which to annotate them.

    Parameters
    ----------
    scores : list of FrameScore
        One per frame, in stack order.
    embeddings : numpy.ndarray
        ``(n_frames, channels)`` L2-normalised bottleneck features, for diversity.
    order : list of int
        Frames to annotate, best first (annotated frames left out).
    diversity : float
        Weight of novelty in ``order``.
    """

    scores: list[FrameScore]
    embeddings: np.ndarray
    order: list[int] = field(default_factory=list)
    diversity: float = DEFAULT_DIVERSITY

    @property
    def ranked(self) -> list[FrameScore]:
        """The frame scores in annotation order."""
        return [self.scores[i] for i in self.order]

    def pick(
        self, n: int, labelled: Sequence[int] = (), diversity: float | None = None
    ) -> list[int]:
        """The ``n`` frames to annotate next, given the frames already annotated.

        Parameters
        ----------
        n : int
            How many frames.
        labelled : sequence of int
            Frames already annotated: never picked, and novelty is measured from them.
        diversity : float, optional
            Weight of novelty; this ranking's when omitted.

        Returns
        -------
        list of int
        """
        values = np.array([s.score for s in self.scores])
        weight = self.diversity if diversity is None else diversity
        return diverse_order(values, self.embeddings, labelled, weight)[:n]


@dataclass(frozen=True)
class TileScore:
    """Uncertainty of one tile of a large image (see :class:`FrameScore` for the terms)."""

    y: int
    x: int
    height: int
    width: int
    score: float
    entropy: float
    disagreement: float
    uncertain_fraction: float

    def as_tuple(self) -> tuple[int, int, int, int, float]:
        """``(y, x, h, w, score)``."""
        return (self.y, self.x, self.height, self.width, self.score)


def diverse_order(
    scores: Sequence[float] | np.ndarray,
    embeddings: np.ndarray,
    labelled: Sequence[int] = (),
    diversity: float = DEFAULT_DIVERSITY,
) -> list[int]:
    """Order frames for annotation by uncertainty and coverage, greedily.

    Frames are compared by a Gaussian similarity of their embeddings,
    ``s(i, j) = exp(-|e_i - e_j|^2 / m)`` with ``m`` the median squared distance. Each
    frame ``j`` carries a weight ``w_j = (1 + u_j) / 2`` (``u``: scores min-max scaled to
    [0, 1]) and is *covered* as well as its most similar annotated or already taken frame.
    At each step the frame maximising ``(1 - diversity) * u_i + diversity * g_i`` is taken,
    where ``g_i`` is the weighted coverage it adds, ``sum_j w_j * max(0, s(i, j) - cover_j)``,
    divided by the largest gain among the frames left. Uncertain frames go first, but among
    them those standing for many frames not yet annotated (typical of the pool, unlike those
    annotated) beat isolated oddities and near-copies of frames already taken.

    Parameters
    ----------
    scores : sequence of float
        Uncertainty per frame (higher = annotate sooner).
    embeddings : numpy.ndarray
        ``(n_frames, channels)`` features (L2-normalised rows).
    labelled : sequence of int
        Frames already annotated: left out of the order, and covering their neighbours.
    diversity : float
        Weight of the coverage gain in [0, 1]; 0 sorts by score alone.

    Returns
    -------
    list of int
        Frame numbers, best first. The first 256 positions are chosen greedily, the rest
        (stacks of more frames) follow by score.
    """
    values = np.nan_to_num(np.asarray(scores, np.float64), nan=-1.0)
    n = len(values)
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}.")
    taken = {int(i) for i in labelled if 0 <= int(i) < n}
    left = [i for i in range(n) if i not in taken]
    by_score = sorted(left, key=lambda i: (-values[i], i))
    embeddings = np.asarray(embeddings, np.float64).reshape(n, -1)
    if diversity == 0.0 or len(left) < 2 or not np.any(embeddings):
        return by_score
    low, high = float(values.min()), float(values.max())
    u = np.ones(n) if high - low < 1e-12 else (values - low) / (high - low)
    targets = np.arange(n)
    if n > _MAX_COVERAGE_FRAMES:
        targets = np.unique(np.linspace(0, n - 1, _MAX_COVERAGE_FRAMES).astype(int))
    squared = np.maximum(
        (embeddings**2).sum(1)[:, None]
        + (embeddings[targets] ** 2).sum(1)[None, :]
        - 2.0 * embeddings @ embeddings[targets].T,
        0.0,
    )
    positive = squared[squared > 1e-12]
    scale = float(np.median(positive)) if positive.size else 1.0
    similarity = np.exp(-squared / scale)
    weight = 0.5 * (1.0 + u[targets])
    anchors = sorted(taken)
    cover = similarity[anchors].max(axis=0) if anchors else np.zeros(len(targets))
    order: list[int] = []
    while left and len(order) < _GREEDY_PICKS:
        candidates = np.array(left)
        gains = (np.maximum(similarity[candidates] - cover, 0.0) * weight).sum(axis=1)
        top = float(gains.max())
        gains = gains / top if top > 0 else gains
        value = (1.0 - diversity) * u[candidates] + diversity * gains
        best = int(candidates[int(np.argmax(value))])
        order.append(best)
        left.remove(best)
        cover = np.maximum(cover, similarity[best])
    chosen = set(order)
    return order + [i for i in by_score if i not in chosen]


# -------------------------------------------------------------------------- rank frames
def iter_rank_frames(
    model: Any,
    stack: Any,
    *,
    augmentations: int = 4,
    diversity: float = DEFAULT_DIVERSITY,
    labelled: Sequence[int] = (),
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 4,
    device: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[RankingProgress | FrameScored, None, FrameRanking]:
    """Score every 2-D frame of a stack by uncertainty and order them for annotation.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    stack : array-like
        2-D image or stack ``(..., H, W)``; lazy arrays are read a frame at a time.
    augmentations : int
        Test-time augmentations per frame: 1, 2, 4 (flips, the default) or 8 (flips and
        90-degree rotations).
    diversity : float
        Weight of novelty in the order, in [0, 1] (see :func:`diverse_order`).
    labelled : sequence of int
        Frames (C-order numbers) already annotated: left out of the order.
    tile_size, overlap, batch_size, device
        Passed to :func:`napari_unet_nuclei.prediction.inference.iter_predict`.
    should_stop : callable, optional
        Polled between tiles; when it returns True,
        :class:`napari_unet_nuclei.prediction.inference.InferenceCancelled` is raised.

    Yields
    ------
    RankingProgress, FrameScored

    Returns
    -------
    FrameRanking
    """
    shape = tuple(stack.shape)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise ValueError(f"Expected a 2-D image or a stack (..., H, W), got shape {shape}.")
    transforms = augmentation_transforms(augmentations)
    indices = frame_indices(shape)
    n_frames = len(indices)
    options = {
        "tile_size": tile_size,
        "overlap": overlap,
        "batch_size": batch_size,
        "device": device,
        "should_stop": should_stop,
    }
    channels = model.config.features * 2**model.config.depth
    scores: list[FrameScore] = []
    embeddings = np.zeros((n_frames, channels), np.float32)
    for number, index in enumerate(indices):
        frame = np.asarray(stack[index])

        def progress(fraction: float, number: int = number) -> RankingProgress:
            return RankingProgress(number, n_frames, (number + fraction) / n_frames)

        sum_p, sum_p2 = yield from frame_moments(model, frame, transforms, options, progress)
        summary = summarise_maps(*maps_from_moments(sum_p, sum_p2, len(transforms)))
        scores.append(FrameScore(number, tuple(int(i) for i in index), **summary))
        embeddings[number] = frame_embedding(model, frame)
        yield FrameScored(number, n_frames, summary["score"])
    order = diverse_order([s.score for s in scores], embeddings, labelled, diversity)
    return FrameRanking(scores, embeddings, order, diversity)


def rank_frames(model: Any, stack: Any, **options: Any) -> FrameRanking:
    """Run :func:`iter_rank_frames` to the end and return its :class:`FrameRanking`."""
    return run_to_end(iter_rank_frames(model, stack, **options), None)


# --------------------------------------------------------------------------- rank tiles
def iter_rank_tiles(
    model: Any,
    image: np.ndarray,
    *,
    tile: int = 256,
    augmentations: int = 4,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    batch_size: int = 4,
    device: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[RankingProgress | FrameScored, None, list[TileScore]]:
    """Score the tiles of a large 2-D image by uncertainty, most uncertain first.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : numpy.ndarray
        2-D image.
    tile : int
        Side of the ranked tiles (the annotation units), in pixels.
    augmentations : int
        Test-time augmentations: 1, 2, 4 (the default) or 8.
    tile_size, overlap, batch_size, device
        Tiling of the network passes, see :func:`napari_unet_nuclei.prediction.inference.iter_predict`.
    should_stop : callable, optional
        Polled between network tiles; raises ``InferenceCancelled`` when True.

    Yields
    ------
    RankingProgress, FrameScored

    Returns
    -------
    list of TileScore
        Sorted by decreasing score (ties: top-left first).
    """
    frame = np.asarray(image)
    if frame.ndim != 2 or min(frame.shape) < 1:
        raise ValueError(
            f"Tiles are ranked in one 2-D image; got shape {frame.shape}. Pick a frame of a "
            "stack, or rank frames instead."
        )
    if tile < 1:
        raise ValueError(f"The tile side must be a positive number of pixels, got {tile}.")
    transforms = augmentation_transforms(augmentations)
    options = {
        "tile_size": tile_size,
        "overlap": overlap,
        "batch_size": batch_size,
        "device": device,
        "should_stop": should_stop,
    }

    def progress(fraction: float) -> RankingProgress:
        return RankingProgress(0, 1, fraction)

    sum_p, sum_p2 = yield from frame_moments(model, frame, transforms, options, progress)
    mean, entropy, disagreement = maps_from_moments(sum_p, sum_p2, len(transforms))
    summary = summarise_maps(mean, entropy, disagreement)
    yield FrameScored(0, 1, summary["score"])
    tiles = []
    for y, x, h, w in tile_grid(*frame.shape, int(tile)):
        part = (slice(y, y + h), slice(x, x + w))
        values = summarise_maps(mean[part], entropy[part], disagreement[part])
        tiles.append(TileScore(y, x, h, w, **values))
    tiles.sort(key=lambda t: (-t.score, t.y, t.x))
    return tiles


def rank_tiles(
    model: Any, image: np.ndarray, tile: int = 256, **options: Any
) -> list[tuple[int, int, int, int, float]]:
    """Tiles of a large 2-D image as ``(y, x, h, w, score)``, most uncertain first.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : numpy.ndarray
        2-D image.
    tile : int
        Side of the tiles in pixels.
    **options
        Other keyword arguments of :func:`iter_rank_tiles`.

    Returns
    -------
    list of tuple
        ``(y, x, h, w, score)`` per tile, sorted by decreasing score.
    """
    return [
        t.as_tuple() for t in run_to_end(iter_rank_tiles(model, image, tile=tile, **options), None)
    ]
