"""Choosing by nuclei: the epoch kept, the default threshold and the instance rule.

What microscopists count are nuclei, so training keeps the weights, threshold and rule with
the best mean object F1 (IoU >= 0.5) on the validation images; fewer merged nuclei break
ties. With partial annotations only the annotated regions are scored: the true nuclei
there, and the predicted nuclei lying mostly inside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet_nuclei.evaluate.object_metrics import object_error_map
from napari_unet_nuclei.prediction.instances import InstanceConfig, instances_from_maps

__all__ = [
    "INSTANCE_RULES",
    "THRESHOLDS",
    "NucleusScore",
    "ValidationNuclei",
    "candidate_rules",
]

#: The instance rules compared (the settings besides the threshold).
INSTANCE_RULES: tuple[dict[str, Any], ...] = (
    {"seeds": "distance"},
    {"seeds": "centre", "min_peak_height": 0.2},
    {"seeds": "boundary", "seed_threshold": 0.5},
)

#: The default thresholds compared after training.
THRESHOLDS = (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)

#: A change (another rule or threshold than the model's, a fine-tune's weights rather than
#: its start weights) must gain this much object F1, and at least :data:`MIN_NUCLEI_GAINED`
#: nuclei's worth: with one validation image of 50 nuclei, one nucleus is 0.02 F1, and
#: choosing on that would fit the threshold to the noise of one image.
MIN_GAIN = 0.003
MIN_NUCLEI_GAINED = 2.0


@dataclass(frozen=True)
class NucleusScore:
    """Validation nuclei under one threshold and instance rule.

    Attributes
    ----------
    object_f1 : float
        Mean object F1 over the validation images (NaN without any).
    pixel_f1 : float
        Their mean pixel F1 when known (the last tie-breaker).
    merges, splits : int
        Predicted nuclei covering two true ones; true nuclei cut in two or more.
    rule : dict
        The :class:`~napari_unet_nuclei.prediction.instances.InstanceConfig` data, threshold included.
    """

    object_f1: float
    merges: int
    splits: int
    rule: dict[str, Any] = field(default_factory=dict)
    true_nuclei: int = 0
    pixel_f1: float = float("nan")

    @property
    def min_gain(self) -> float:
        """The object F1 a change must gain on these images (see :data:`MIN_GAIN`)."""
        return max(MIN_GAIN, MIN_NUCLEI_GAINED / max(self.true_nuclei, 1))

    def better_than(self, other: NucleusScore | None, margin: float = 0.0) -> bool:
        """Higher object F1 by more than ``margin`` (to 0.001), then fewer merges, then a
        higher pixel F1 (when both have one: early epochs that find no nucleus yet); ties
        keep ``other``."""
        if other is None or np.isnan(other.object_f1):
            return not np.isnan(self.object_f1)
        mine, theirs = round(self.object_f1 - margin, 3), round(other.object_f1, 3)
        if mine != theirs:
            return mine > theirs
        if self.merges != other.merges:
            return self.merges < other.merges
        if margin > 0 or np.isnan(self.pixel_f1) or np.isnan(other.pixel_f1):
            return False
        return round(self.pixel_f1, 4) > round(other.pixel_f1, 4)


def candidate_rules(
    channel_names: Sequence[str], inherited: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rules a network with these output channels can use (the inherited rule of a
    fine-tuned model first, then :data:`INSTANCE_RULES`), without the threshold."""
    rules: list[dict[str, Any]] = []
    if inherited:
        known = set(InstanceConfig().to_dict())
        rules.append({k: v for k, v in inherited.items() if k in known and k != "threshold"})
    for rule in INSTANCE_RULES:
        if rule["seeds"] != "distance" and rule["seeds"] not in channel_names[1:]:
            continue
        if not any(_same_rule(rule, seen) for seen in rules):
            rules.append(dict(rule))
    return rules


def _same_rule(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return InstanceConfig(**a) == InstanceConfig(**b)


def _in_region(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``labels`` without the objects lying mostly outside ``region``."""
    sizes = np.bincount(labels.ravel())
    inside = np.bincount(labels[region].ravel(), minlength=sizes.size)
    keep = inside * 2 >= sizes
    keep[0] = False
    return np.where(keep[labels], labels, 0)


@dataclass(frozen=True)
class ValidationNuclei:
    """What the network made of the validation images, and their true nuclei.

    Attributes
    ----------
    outputs : sequence of numpy.ndarray
        Per image the network's sigmoid outputs ``(C, H, W)``: probability, then maps.
    truths : sequence of numpy.ndarray
        Per image the true instance labels.
    regions : sequence of (numpy.ndarray or None)
        Per image the annotated pixels (``None``: all).
    channel_names : sequence of str
        The network's output channels (``"nucleus"``, then the maps).
    """

    outputs: Sequence[np.ndarray]
    truths: Sequence[np.ndarray]
    regions: Sequence[np.ndarray | None]
    channel_names: Sequence[str]

    def score(self, rule: dict[str, Any]) -> NucleusScore:
        """Score one rule (:class:`~napari_unet_nuclei.prediction.instances.InstanceConfig` data,
        threshold included)."""
        config = InstanceConfig(**rule)
        names = list(self.channel_names[1:])
        f1s, merges, splits, n_true = [], 0, 0, 0
        for out, truth, region in zip(self.outputs, self.truths, self.regions):
            labels = instances_from_maps(out[0], dict(zip(names, out[1:])), config)
            if region is not None:
                labels = _in_region(labels, region)
                truth = np.where(region, truth, 0)
            errors = object_error_map(labels, truth, paint=False)
            scores = errors.match.scores()
            f1s.append(scores["f1"])
            merges += errors.merges
            splits += errors.splits
            n_true += int(scores["n_true"])
        mean = float(np.mean(f1s)) if f1s else float("nan")
        return NucleusScore(mean, merges, splits, config.to_dict(), n_true)

    def best_rule_at(
        self, rules: Sequence[dict[str, Any]], threshold: float
    ) -> tuple[NucleusScore, list[NucleusScore]]:
        """The best of ``rules`` at ``threshold`` (the first rule unless another gains
        :attr:`NucleusScore.min_gain`), and every rule's score."""
        scores = [self.score({**rule, "threshold": threshold}) for rule in rules]
        best = scores[0]
        for score in scores[1:]:
            if score.better_than(best, margin=scores[0].min_gain):
                best = score
        return best, scores

    def choose_threshold_and_rule(
        self,
        rules: Sequence[dict[str, Any]],
        thresholds: Sequence[float] = THRESHOLDS,
        preferred_threshold: float = 0.5,
    ) -> tuple[NucleusScore, list[NucleusScore]]:
        """The threshold and rule with the best validation nuclei.

        ``preferred_threshold`` (the model's current one) stays unless another threshold gains
        :attr:`NucleusScore.min_gain` object F1, and the first rule unless another gains as
        much, so that a flat curve, or a few validation nuclei, move nothing.

        Returns
        -------
        NucleusScore
            The chosen one.
        list of NucleusScore
            Every threshold and rule compared.
        """
        ordered = sorted(
            {*thresholds, preferred_threshold}, key=lambda t: abs(t - preferred_threshold)
        )
        table: list[NucleusScore] = []
        best: NucleusScore | None = None
        for threshold in ordered:
            at_threshold, scores = self.best_rule_at(rules, threshold)
            table.extend(scores)
            if best is None:
                best = at_threshold
                continue
            if at_threshold.better_than(best, margin=best.min_gain):
                best = at_threshold
        assert best is not None
        return best, table
