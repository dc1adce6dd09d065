"""Training losses: the nucleus probability's loss and the object maps' loss.

The *separating* objective (the default for object-aware networks) adds two terms that
matter for nuclei as objects rather than pixels:

- **gap weights** on the probability's cross-entropy: pixels where two nuclei come within
  a few pixels of each other (the narrow background between them and their facing rims)
  count ``1 + gap_weight`` times, as in the U-Net paper's weight map (Ronneberger et al.
  2015). Without them a network grows nuclei into the gaps, which costs a few pixels of
  precision and merges the nuclei;
- a **balanced boundary** cross-entropy: the boundary map (where nuclei touch) is a thin,
  rare class, so its positive pixels are weighted by the ratio of negatives to positives
  in the batch (at most :data:`MAX_BOUNDARY_WEIGHT`), as class weighting does for sparse
  classes.

The ``"plain"`` objective is the earlier one: binary cross-entropy of every map with equal
weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = [
    "LOSSES",
    "MAX_BOUNDARY_WEIGHT",
    "OBJECTIVES",
    "map_loss",
    "probability_loss",
]

LOSSES = ("bce+dice", "bce+image-dice", "bce+lovasz", "bce")

#: ``"separating"``: gap weights and a balanced boundary map; ``"plain"``: equal weights.
OBJECTIVES = ("separating", "plain")

#: The largest weight a boundary pixel gets against a non-boundary one.
MAX_BOUNDARY_WEIGHT = 10.0


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over the patches of the Lovasz hinge (Berman et al. 2018) on the weighted pixels."""
    losses = []
    for sample_logits, sample_target, sample_weight in zip(logits, target, weight):
        valid = sample_weight.reshape(-1) > 0
        if not valid.any():
            continue
        scores = sample_logits.reshape(-1)[valid]
        labels = sample_target.reshape(-1)[valid]
        errors = 1.0 - scores * (2.0 * labels - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        labels_sorted = labels[order]
        positives = labels_sorted.sum()
        intersection = positives - labels_sorted.cumsum(0)
        union = positives + (1.0 - labels_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), jaccard))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def probability_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    dice_weight: float,
    kind: str = "bce+dice",
    *,
    bce_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The nucleus probability's loss: weighted binary cross-entropy plus a region term.

    Parameters
    ----------
    logits, target, weight : torch.Tensor
        ``(B, 1, H, W)``: network logits, 0/1 nucleus mask, per-pixel weight (0 outside
        annotated or padded regions).
    dice_weight : float
        Weight of the region term (0: cross-entropy alone).
    kind : str
        One of :data:`LOSSES`.
    bce_weight : torch.Tensor, optional
        Extra per-pixel factor of the cross-entropy only (the gap weights); the region
        term keeps ``weight``.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    pixel_weight = weight if bce_weight is None else weight * bce_weight
    bce = (
        F.binary_cross_entropy_with_logits(logits, target, reduction="none") * pixel_weight
    ).sum() / pixel_weight.sum().clamp(min=1.0)
    if dice_weight <= 0 or kind == "bce":
        return bce
    if kind == "bce+lovasz":
        return bce + dice_weight * lovasz_hinge(logits, target, weight)
    probabilities = torch.sigmoid(logits) * weight
    target = target * weight
    dims = (1, 2, 3) if kind == "bce+image-dice" else (0, 1, 2, 3)
    intersection = (probabilities * target).sum(dims)
    dice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum(dims) + target.sum(dims) + 1.0)
    return bce + dice_weight * dice.mean()


def map_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    balanced: Sequence[int] = (),
) -> torch.Tensor:
    """Binary cross-entropy of the object maps (channels of ``logits``), on the weighted
    pixels, averaged over the maps.

    Parameters
    ----------
    logits, target : torch.Tensor
        ``(B, K, H, W)``: the maps' logits and targets in [0, 1].
    weight : torch.Tensor
        ``(B, 1, H, W)`` per-pixel weight.
    balanced : sequence of int
        Channels of a sparse class (the boundary map): their positive pixels weigh the
        batch's ratio of negatives to positives, at most :data:`MAX_BOUNDARY_WEIGHT`, and
        the channel's loss is normalised by its total weight.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    n_maps = logits.shape[1]
    if n_maps == 0:
        return logits.sum() * 0.0
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    total = logits.new_zeros(())
    for channel in range(n_maps):
        channel_weight = weight[:, 0]
        if channel in balanced:
            positive = (target[:, channel] >= 0.5).float()
            n_positive = (positive * channel_weight).sum()
            n_negative = ((1.0 - positive) * channel_weight).sum()
            ratio = (n_negative / n_positive.clamp(min=1.0)).clamp(1.0, MAX_BOUNDARY_WEIGHT)
            channel_weight = channel_weight * (1.0 + (ratio.detach() - 1.0) * positive)
        total = total + (
            per_pixel[:, channel] * channel_weight
        ).sum() / channel_weight.sum().clamp(min=1.0)
    return total / n_maps
