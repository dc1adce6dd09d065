"""Which frames (or tiles) to annotate next: the model's uncertainty, with diversity.

The model segments every frame several times, once per *test-time augmentation* (flips
and, optionally, 90-degree rotations; each result is mapped back onto the frame). With
``p_k`` the nucleus probability of a pixel under augmentation ``k`` of ``K`` and ``p`` their
mean, a pixel's uncertainty is

``u = (H(p) + D) / 2``

- ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``: binary entropy of the mean probability, in
  [0, 1], high where the model hesitates (``p`` near 0.5);
- ``D = 2 * std_k(p_k)``: disagreement between the augmented predictions, in [0, 1], high
  where a flipped or rotated image is segmented differently (the model relies on things a
  flip should not change).

The **score** of a frame or tile is the mean of ``u`` over its pixels (0 = certain and
self-consistent, 1 = coin flip everywhere). The share of pixels with ``p`` in [0.3, 0.7]
and the two terms are reported alongside.

Pure uncertainty on a small pool picks near-duplicates and oddities (five frames of the
same hard tissue, none like most of the data). :func:`diverse_order` therefore orders frames
greedily by ``(1 - diversity) * uncertainty + diversity * coverage gain``: frames are
compared by their embeddings (the network's bottleneck features, averaged over the frame),
and a frame's coverage gain is how much uncertainty-weighted similarity to the frames not
yet annotated it adds beyond the annotated and already ranked frames (a facility-location
objective). Frames that are uncertain *and* stand for many unannotated frames come first.
``diversity=0`` is plain uncertainty order. ``benchmarks/annotate_next.py`` measures the
default (0.5) against random picks on ``lab_70_9``.

No Qt or napari here: numpy in, plain dataclasses out, progress as yielded events.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet_nuclei.events import TileDone, run_to_end
from napari_unet_nuclei.io.array_reading import frame_indices
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import (
    DIHEDRAL_TRANSFORMS,
    iter_predict,
    tile_positions,
)

__all__ = [
    "FrameRanking",
    "FrameScore",
    "FrameScored",
    "RankingProgress",
    "TileScore",
    "diverse_order",
    "frame_embedding",
    "iter_rank_frames",
    "iter_rank_tiles",
    "rank_frames",
    "rank_tiles",
    "tile_grid",
    "uncertainty_maps",
]

#: Pixels with a mean probability in this range count as "uncertain".
UNCERTAIN_RANGE = (0.3, 0.7)
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


# ----------------------------------------------------------------------------- helpers
def _transforms(augmentations: int) -> list[Any]:
    if augmentations not in (1, 2, 4, 8):
        raise ValueError(
            f"augmentations must be 1, 2, 4 or 8 (identity, flips, rotations), got {augmentations}."
        )
    return list(DIHEDRAL_TRANSFORMS[:augmentations])


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return (-(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))).astype(np.float32)


def _maps_from_moments(
    sum_p: np.ndarray, sum_p2: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = sum_p / n
    variance = np.maximum(sum_p2 / n - mean * mean, 0.0)
    disagreement = np.minimum(1.0, 2.0 * np.sqrt(variance)).astype(np.float32)
    return mean.astype(np.float32), _binary_entropy(mean), disagreement


def _summarise(
    mean: np.ndarray, entropy: np.ndarray, disagreement: np.ndarray
) -> dict[str, float]:
    low, high = UNCERTAIN_RANGE
    h, d = float(entropy.mean()), float(disagreement.mean())
    return {
        "score": 0.5 * (h + d),
        "entropy": h,
        "disagreement": d,
        "uncertain_fraction": float(((mean >= low) & (mean <= high)).mean()),
    }


#: Embeddings are averaged over at most this many tiles of this side per frame.
_EMBEDDING_TILE = 512
_EMBEDDING_TILES = 16


def frame_embedding(model: Any, frame: np.ndarray) -> np.ndarray:
    """L2-normalised bottleneck features of one 2-D frame, averaged over space.

    The encoder and bottleneck of the model's U-Net run in torch (float32) on up to 16
    tiles of 512 pixels spread over the frame, independently of the inference runtime.
    A network without ``encoder``/``bottleneck`` gives a zero vector (no diversity).

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    frame : numpy.ndarray
        2-D image of any real dtype.

    Returns
    -------
    numpy.ndarray
        float32 vector of ``features * 2**depth`` values.
    """
    import torch
    from torch.nn import functional as F

    network = model.network
    channels = model.config.features * 2**model.config.depth
    if not hasattr(network, "encoder") or not hasattr(network, "bottleneck"):
        return np.zeros(channels, np.float32)
    image = normalize_frame(np.asarray(frame), model.normalization)
    tiles = tile_grid(*image.shape, _EMBEDDING_TILE)
    tiles = tiles[:: max(1, int(np.ceil(len(tiles) / _EMBEDDING_TILES)))]
    multiple = model.config.size_multiple
    device = next(network.parameters()).device
    total = np.zeros(channels, np.float64)
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        for y, x, h, w in tiles:
            tensor = torch.from_numpy(np.ascontiguousarray(image[y : y + h, x : x + w]))
            tensor = tensor[None, None].to(device)
            pad_h, pad_w = (-h) % multiple, (-w) % multiple
            if pad_h or pad_w:
                tensor = F.pad(tensor, (0, pad_w, 0, pad_h), mode="replicate")
            features = tensor
            for level in network.encoder:
                features, _ = level(features)
            features = network.bottleneck(features)
            total += features.float().mean(dim=(0, 2, 3)).cpu().numpy()
    network.train(was_training)
    vector = (total / len(tiles)).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _frame_moments(
    model: Any,
    frame: np.ndarray,
    transforms: list[Any],
    options: dict[str, Any],
    on_pass: Callable[[float], Any] | None,
) -> Generator[Any, None, tuple[np.ndarray, np.ndarray]]:
    """Sum and sum of squares of the augmented probabilities of one frame."""
    sum_p = np.zeros(frame.shape, np.float64)
    sum_p2 = np.zeros(frame.shape, np.float64)
    for number, (forward, inverse) in enumerate(transforms):
        events = iter_predict(model, np.ascontiguousarray(forward(frame)), **options)
        while True:
            try:
                event = next(events)
            except StopIteration as done:
                probabilities = done.value
                break
            if isinstance(event, TileDone) and on_pass is not None:
                yield on_pass(
                    (number + event.tiles_done / max(1, event.n_tiles)) / len(transforms)
                )
        back = np.asarray(inverse(probabilities), np.float64)
        sum_p += back
        sum_p2 += back * back
    return sum_p, sum_p2


def uncertainty_maps(
    model: Any,
    image: np.ndarray,
    *,
    augmentations: int = 4,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Per-pixel uncertainty maps of a 2-D image.

    Parameters
    ----------
    model : NucleiModel
        A trained model.
    image : numpy.ndarray
        2-D image of any real dtype and size.
    augmentations : int
        Test-time augmentations: 1 (none), 2 (+ left-right flip), 4 (+ up-down flip and
        180-degree rotation) or 8 (the 8 flips and 90-degree rotations).
    **options
        Passed to :func:`napari_unet_nuclei.prediction.inference.iter_predict` (``tile_size``,
        ``overlap``, ``batch_size``, ``device``, ``should_stop``).

    Returns
    -------
    dict of str to numpy.ndarray
        float32 maps ``mean`` (probability), ``entropy``, ``disagreement`` and
        ``uncertainty`` (``(entropy + disagreement) / 2``), each of the image's shape.
    """
    frame = np.asarray(image)
    if frame.ndim != 2:
        raise ValueError(f"Expected a 2-D image, got shape {frame.shape}.")
    sum_p, sum_p2 = run_to_end(
        _frame_moments(model, frame, _transforms(augmentations), options, None), None
    )
    mean, entropy, disagreement = _maps_from_moments(sum_p, sum_p2, augmentations)
    return {
        "mean": mean,
        "entropy": entropy,
        "disagreement": disagreement,
        "uncertainty": (0.5 * (entropy + disagreement)).astype(np.float32),
    }


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
    tile_size: int = 512,
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
    transforms = _transforms(augmentations)
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

        sum_p, sum_p2 = yield from _frame_moments(model, frame, transforms, options, progress)
        summary = _summarise(*_maps_from_moments(sum_p, sum_p2, len(transforms)))
        scores.append(FrameScore(number, tuple(int(i) for i in index), **summary))
        embeddings[number] = frame_embedding(model, frame)
        yield FrameScored(number, n_frames, summary["score"])
    order = diverse_order([s.score for s in scores], embeddings, labelled, diversity)
    return FrameRanking(scores, embeddings, order, diversity)


def rank_frames(model: Any, stack: Any, **options: Any) -> FrameRanking:
    """Run :func:`iter_rank_frames` to the end and return its :class:`FrameRanking`."""
    return run_to_end(iter_rank_frames(model, stack, **options), None)


# --------------------------------------------------------------------------- rank tiles
def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(y, x, h, w)`` of side ``tile`` covering the image.

    Tiles do not overlap except the last row and column, which end exactly at the image
    border so that every tile has the same size (a smaller image is one tile).
    """
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys = tile_positions(height, tile_h, 0)
    xs = tile_positions(width, tile_w, 0)
    return [(y, x, tile_h, tile_w) for y in ys for x in xs]


def iter_rank_tiles(
    model: Any,
    image: np.ndarray,
    *,
    tile: int = 256,
    augmentations: int = 4,
    tile_size: int = 512,
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
    transforms = _transforms(augmentations)
    options = {
        "tile_size": tile_size,
        "overlap": overlap,
        "batch_size": batch_size,
        "device": device,
        "should_stop": should_stop,
    }

    def progress(fraction: float) -> RankingProgress:
        return RankingProgress(0, 1, fraction)

    sum_p, sum_p2 = yield from _frame_moments(model, frame, transforms, options, progress)
    mean, entropy, disagreement = _maps_from_moments(sum_p, sum_p2, len(transforms))
    summary = _summarise(mean, entropy, disagreement)
    yield FrameScored(0, 1, summary["score"])
    tiles = []
    for y, x, h, w in tile_grid(*frame.shape, int(tile)):
        part = (slice(y, y + h), slice(x, x + w))
        values = _summarise(mean[part], entropy[part], disagreement[part])
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
