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

from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_unet_nuclei.events import TileDone, run_to_end
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import iter_predict
from napari_unet_nuclei.prediction.tiling import DIHEDRAL_TRANSFORMS, tile_positions

__all__ = [
    "UNCERTAIN_RANGE",
    "augmentation_transforms",
    "frame_embedding",
    "frame_moments",
    "maps_from_moments",
    "summarise_maps",
    "tile_grid",
    "uncertainty_maps",
]

#: Pixels with a mean probability in this range count as "uncertain".
UNCERTAIN_RANGE = (0.3, 0.7)


# ----------------------------------------------------------------------------- helpers
def augmentation_transforms(augmentations: int) -> list[Any]:
    if augmentations not in (1, 2, 4, 8):
        raise ValueError(
            f"augmentations must be 1, 2, 4 or 8 (identity, flips, rotations), got {augmentations}."
        )
    return list(DIHEDRAL_TRANSFORMS[:augmentations])


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return (-(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))).astype(np.float32)


def maps_from_moments(
    sum_p: np.ndarray, sum_p2: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = sum_p / n
    variance = np.maximum(sum_p2 / n - mean * mean, 0.0)
    disagreement = np.minimum(1.0, 2.0 * np.sqrt(variance)).astype(np.float32)
    return mean.astype(np.float32), _binary_entropy(mean), disagreement


def summarise_maps(
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


def tile_grid(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Tiles ``(y, x, h, w)`` of side ``tile`` covering the image.

    Tiles do not overlap except the last row and column, which end exactly at the image
    border so that every tile has the same size (a smaller image is one tile).
    """
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys = tile_positions(height, tile_h, 0)
    xs = tile_positions(width, tile_w, 0)
    return [(y, x, tile_h, tile_w) for y in ys for x in xs]


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


def frame_moments(
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
        frame_moments(model, frame, augmentation_transforms(augmentations), options, None), None
    )
    mean, entropy, disagreement = maps_from_moments(sum_p, sum_p2, augmentations)
    return {
        "mean": mean,
        "entropy": entropy,
        "disagreement": disagreement,
        "uncertainty": (0.5 * (entropy + disagreement)).astype(np.float32),
    }
