"""Random training patches from images of any size.

Images smaller than the patch are padded (reflect for the image, zero loss weight on the
padding); a per-pixel weight map restricts the loss to annotated pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PatchSampler", "ReplayMix", "effective_patch_size"]


def effective_patch_size(shapes: Sequence[tuple[int, int]], patch_size: int, multiple: int) -> int:
    """Patch side actually used: at most ``patch_size``, no larger than the largest image.

    Parameters
    ----------
    shapes : sequence of (int, int)
        Shapes of the training images.
    patch_size : int
        Requested patch side.
    multiple : int
        The network's size multiple (``2**depth``); the result is a multiple of it.

    Returns
    -------
    int
    """
    largest = max(max(shape) for shape in shapes)
    side = min(int(patch_size), int(largest))
    return max(multiple, int(np.ceil(side / multiple)) * multiple)


@dataclass
class _Item:
    image: np.ndarray  # float32 (H, W), normalised, padded to >= patch
    mask: np.ndarray  # float32 (K, H, W): the nucleus mask, then any object maps
    weight: np.ndarray  # float32 (H, W) in {0, 1}


class PatchSampler:
    """Draw random square patches (image, mask, loss weight) from a set of images.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Normalised float32 2-D images.
    masks : sequence of numpy.ndarray
        Binary nucleus masks of the same shapes, or targets ``(K, H, W)`` whose first
        channel is the nucleus mask and the others object maps (every image the same
        ``K``).
    patch_size : int
        Side of the square patches.
    weights : sequence of numpy.ndarray or None, optional
        Per-image maps of annotated pixels (True where the labels are complete);
        ``None`` means every pixel is annotated.
    rng : numpy.random.Generator, optional
        Source of randomness.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        patch_size: int,
        weights: Sequence[np.ndarray | None] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if len(images) == 0:
            raise ValueError("No training images: give at least one image with labels.")
        if len(images) != len(masks):
            raise ValueError(f"Got {len(images)} images but {len(masks)} label images.")
        weights = list(weights) if weights is not None else [None] * len(images)
        self.patch_size = int(patch_size)
        self.rng = rng or np.random.default_rng()
        self._items: list[_Item] = []
        sizes = []
        for image, mask, weight in zip(images, masks, weights):
            if image.shape != mask.shape[-2:] or mask.ndim not in (2, 3):
                raise ValueError(
                    f"Image shape {image.shape} and label shape {mask.shape} differ; "
                    "each label image must match its image."
                )
            mask = mask[None] if mask.ndim == 2 else mask
            weight_map = (
                np.ones(image.shape, np.float32) if weight is None else weight.astype(np.float32)
            )
            self._items.append(
                self._pad(image.astype(np.float32), mask.astype(np.float32), weight_map)
            )
            sizes.append(float(weight_map.sum()))
        if len({item.mask.shape[0] for item in self._items}) > 1:
            raise ValueError("Every image needs the same number of target channels.")
        self.n_targets = self._items[0].mask.shape[0]
        total = sum(sizes)
        if total <= 0:
            raise ValueError("No annotated pixels: the annotated regions are empty.")
        self._probabilities = np.asarray(sizes) / total
        # Where annotations are partial, crops are centred on annotated pixels.
        self._annotated = [
            None if weight is None else np.flatnonzero(item.weight)
            for weight, item in zip(weights, self._items)
        ]

    @property
    def n_pixels(self) -> int:
        """Number of annotated pixels over all images."""
        return int(sum(float(item.weight.sum()) for item in self._items))

    def _pad(self, image: np.ndarray, mask: np.ndarray, weight: np.ndarray) -> _Item:
        pad_h = max(0, self.patch_size - image.shape[0])
        pad_w = max(0, self.patch_size - image.shape[1])
        if pad_h or pad_w:
            pads = ((0, pad_h), (0, pad_w))
            mode = (
                "reflect"
                if min(image.shape) > 1 and pad_h < image.shape[0] and pad_w < image.shape[1]
                else "edge"
            )
            image = np.pad(image, pads, mode=mode)
            mask = np.pad(mask, ((0, 0), *pads))
            weight = np.pad(weight, pads)
        return _Item(image, mask, weight)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw a batch.

        Parameters
        ----------
        batch_size : int
            Number of patches.

        Returns
        -------
        tuple of numpy.ndarray
            ``(images, targets, weights)``, float32 of shapes ``(B, 1, P, P)``,
            ``(B, K, P, P)`` (the nucleus mask, then any object maps) and ``(B, 1, P, P)``.
        """
        size = self.patch_size
        images = np.empty((batch_size, 1, size, size), np.float32)
        targets = np.empty((batch_size, self.n_targets, size, size), np.float32)
        weights = np.empty((batch_size, 1, size, size), np.float32)
        choices = self.rng.choice(len(self._items), size=batch_size, p=self._probabilities)
        for slot, index in enumerate(choices):
            item = self._items[index]
            height, width = item.image.shape
            annotated = self._annotated[index]
            if annotated is not None and annotated.size:
                centre = annotated[self.rng.integers(annotated.size)]
                cy, cx = divmod(int(centre), width)
                top = int(
                    np.clip(
                        cy - size // 2 + self.rng.integers(-size // 4, size // 4 + 1),
                        0,
                        height - size,
                    )
                )
                left = int(
                    np.clip(
                        cx - size // 2 + self.rng.integers(-size // 4, size // 4 + 1),
                        0,
                        width - size,
                    )
                )
            else:
                top = int(self.rng.integers(0, height - size + 1))
                left = int(self.rng.integers(0, width - size + 1))
            window = (slice(top, top + size), slice(left, left + size))
            images[slot, 0] = item.image[window]
            targets[slot] = item.mask[(slice(None), *window)]
            weights[slot, 0] = item.weight[window]
        return images, targets, weights


class ReplayMix:
    """Batches of which a share of the patches come from replayed images.

    Fine-tuning on a few corrected images mixes in patches of the images the start model
    learned from (a replayed sample of its training data), so that a short fine-tune
    learns the new images without forgetting the others.

    Parameters
    ----------
    own : PatchSampler
        The patches of the images being trained on.
    replay : PatchSampler or None
        The replayed images' patches (same patch size and target channels); ``None``
        leaves every batch to ``own``.
    share : float
        Share of each batch drawn from ``replay`` (at least one patch when above 0, and
        never the whole batch).
    """

    def __init__(self, own: PatchSampler, replay: PatchSampler | None, share: float) -> None:
        if replay is not None and replay.n_targets != own.n_targets:
            raise ValueError("Replayed images need the same target channels as the others.")
        self.own, self.replay, self.share = own, replay, float(share)

    def replayed_per_batch(self, batch_size: int) -> int:
        """How many of ``batch_size`` patches come from the replayed images."""
        if self.replay is None or self.share <= 0 or batch_size < 2:
            return 0
        return int(min(batch_size - 1, max(1, round(self.share * batch_size))))

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw a batch: own patches first, then the replayed ones."""
        n_replay = self.replayed_per_batch(batch_size)
        own = self.own.sample(batch_size - n_replay)
        if not n_replay:
            return own
        replayed = self.replay.sample(n_replay)
        return tuple(np.concatenate(pair) for pair in zip(own, replayed))
