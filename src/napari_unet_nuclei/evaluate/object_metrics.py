"""Object-level evaluation: nuclei matched one to one, counted, and mapped by error kind.

A predicted nucleus matches a true nucleus when their intersection over union (IoU) is at
least a threshold (0.5 by default); the matching is one to one and maximises the total IoU
(Hungarian algorithm; above 0.5 every object has at most one candidate, so the matching is
unique). From the matches come object precision, recall and F1, and the Data Science Bowl
2018 average precision: ``TP / (TP + FP + FN)`` averaged over IoU thresholds 0.5 to 0.95.

Label images hold one id per object in the whole array (0 = background; ids need not be
consecutive). For a stack whose ids restart in each frame, evaluate frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DSB_THRESHOLDS",
    "OBJECT_ERROR_CLASSES",
    "OBJECT_ERROR_COLORS",
    "ObjectErrors",
    "ObjectMatch",
    "dsb_average_precision",
    "dsb_precisions",
    "match_objects",
    "object_error_map",
    "object_overlaps",
    "object_scores",
]

#: IoU thresholds of the Data Science Bowl 2018 metric: 0.5, 0.55, ..., 0.95.
DSB_THRESHOLDS: np.ndarray = np.round(np.arange(0.5, 1.0, 0.05), 2)

#: Meaning of the values of :func:`object_error_map`.
OBJECT_ERROR_CLASSES: dict[int, str] = {
    0: "background",
    1: "matched nucleus",
    2: "false nucleus (no true nucleus)",
    3: "missed nucleus",
    4: "merge (one object over several nuclei)",
    5: "split (one nucleus cut into several objects)",
}

#: RGBA colours (0-1) for an object error map (Okabe-Ito palette, readable with the common
#: forms of colour blindness; the first four as in ``metrics.ERROR_COLORS``).
OBJECT_ERROR_COLORS: dict[int, tuple[float, float, float, float]] = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.2, 0.8, 0.2, 1.0),
    2: (0.9, 0.2, 0.8, 1.0),
    3: (1.0, 0.65, 0.0, 1.0),
    4: (0.0, 0.45, 0.7, 1.0),
    5: (0.94, 0.89, 0.26, 1.0),
}


@dataclass(frozen=True)
class _Overlaps:
    """Objects of both label images and the pairs of them that overlap."""

    true_ids: np.ndarray
    true_areas: np.ndarray
    pred_ids: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray  # index into true_ids
    pair_pred: np.ndarray  # index into pred_ids
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        union = self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred]
        return self.intersection / (union - self.intersection)


def _labels(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        raise ValueError(
            f"The {name} is a binary mask; object metrics need instance labels (one id per "
            "nucleus): label it first, e.g. with instances_from_mask or skimage.measure.label."
        )
    if array.dtype.kind not in "ui":
        raise ValueError(
            f"The {name} must be integer labels (0 = background), got dtype {array.dtype}."
        )
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError(f"The {name} has negative labels; use 0 for background, ids > 0.")
    return array


def object_overlaps(predicted: Any, truth: Any) -> _Overlaps:
    """Object ids, areas and pairwise intersections of two label images of the same shape."""
    predicted = _labels(predicted, "prediction")
    truth = _labels(truth, "ground truth")
    if predicted.shape != truth.shape:
        raise ValueError(
            f"The prediction has shape {predicted.shape} but the ground truth "
            f"{truth.shape}; compare labels of the same image."
        )
    true_ids, true_index = np.unique(truth.ravel(), return_inverse=True)
    pred_ids, pred_index = np.unique(predicted.ravel(), return_inverse=True)
    true_areas = np.bincount(true_index, minlength=true_ids.size)
    pred_areas = np.bincount(pred_index, minlength=pred_ids.size)
    both = (truth.ravel() > 0) & (predicted.ravel() > 0)
    keys = true_index[both].astype(np.int64) * pred_ids.size + pred_index[both]
    pairs, counts = np.unique(keys, return_counts=True)
    pair_true, pair_pred = np.divmod(pairs, pred_ids.size)
    # Drop the background (id 0) from the object lists and shift the pair indices.
    true_shift = int(true_ids.size > 0 and true_ids[0] == 0)
    pred_shift = int(pred_ids.size > 0 and pred_ids[0] == 0)
    return _Overlaps(
        true_ids=true_ids[true_shift:],
        true_areas=true_areas[true_shift:],
        pred_ids=pred_ids[pred_shift:],
        pred_areas=pred_areas[pred_shift:],
        pair_true=pair_true - true_shift,
        pair_pred=pair_pred - pred_shift,
        intersection=counts,
    )


@dataclass(frozen=True)
class ObjectMatch:
    """One-to-one matching of predicted and true nuclei at an IoU threshold.

    Attributes
    ----------
    threshold : float
        The IoU threshold.
    true_ids, pred_ids : numpy.ndarray
        All true and predicted object ids.
    matched_true, matched_pred : numpy.ndarray
        Ids of the matched pairs (same length).
    matched_iou : numpy.ndarray
        IoU of each matched pair.
    """

    threshold: float
    true_ids: np.ndarray
    pred_ids: np.ndarray
    matched_true: np.ndarray
    matched_pred: np.ndarray
    matched_iou: np.ndarray

    @property
    def tp(self) -> int:
        """Matched pairs."""
        return int(self.matched_true.size)

    @property
    def fp(self) -> int:
        """Predicted nuclei without a match."""
        return int(self.pred_ids.size - self.tp)

    @property
    def fn(self) -> int:
        """True nuclei without a match."""
        return int(self.true_ids.size - self.tp)

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``; 1 when nothing is predicted."""
        return self.tp / self.pred_ids.size if self.pred_ids.size else 1.0

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``; 1 when there is nothing to find."""
        return self.tp / self.true_ids.size if self.true_ids.size else 1.0

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)``; 1 when both are empty."""
        total = self.true_ids.size + self.pred_ids.size
        return 2 * self.tp / total if total else 1.0

    @property
    def dsb_precision(self) -> float:
        """The Data Science Bowl score at this threshold, ``tp / (tp + fp + fn)``."""
        total = self.tp + self.fp + self.fn
        return self.tp / total if total else 1.0

    @property
    def unmatched_true(self) -> np.ndarray:
        """Ids of the true nuclei without a match."""
        return np.setdiff1d(self.true_ids, self.matched_true)

    @property
    def unmatched_pred(self) -> np.ndarray:
        """Ids of the predicted nuclei without a match."""
        return np.setdiff1d(self.pred_ids, self.matched_pred)

    def scores(self) -> dict[str, float | int]:
        """Counts and scores as a JSON-compatible dictionary."""
        return {
            "threshold": float(self.threshold),
            "n_true": int(self.true_ids.size),
            "n_pred": int(self.pred_ids.size),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": float(self.precision),
            "recall": float(self.recall),
            "f1": float(self.f1),
            "mean_matched_iou": float(self.matched_iou.mean()) if self.tp else float("nan"),
        }


def _match(overlaps: _Overlaps, threshold: float, strict: bool) -> ObjectMatch:
    iou = overlaps.iou
    keep = iou > threshold if strict else iou >= threshold
    rows, cols, values = overlaps.pair_true[keep], overlaps.pair_pred[keep], iou[keep]
    if rows.size and (np.unique(rows).size < rows.size or np.unique(cols).size < cols.size):
        # Ambiguous candidates (possible only at IoU thresholds <= 0.5): maximise total IoU.
        from scipy.optimize import linear_sum_assignment

        true_set, row_index = np.unique(rows, return_inverse=True)
        pred_set, col_index = np.unique(cols, return_inverse=True)
        matrix = np.zeros((true_set.size, pred_set.size))
        matrix[row_index, col_index] = values
        chosen_rows, chosen_cols = linear_sum_assignment(matrix, maximize=True)
        good = matrix[chosen_rows, chosen_cols] > 0
        rows, cols = true_set[chosen_rows[good]], pred_set[chosen_cols[good]]
        values = matrix[chosen_rows[good], chosen_cols[good]]
    order = np.argsort(rows, kind="stable")
    return ObjectMatch(
        threshold=float(threshold),
        true_ids=overlaps.true_ids,
        pred_ids=overlaps.pred_ids,
        matched_true=overlaps.true_ids[rows[order]],
        matched_pred=overlaps.pred_ids[cols[order]],
        matched_iou=np.asarray(values, float)[order],
    )


def match_objects(
    predicted: Any, truth: Any, iou_threshold: float = 0.5, *, strict: bool = False
) -> ObjectMatch:
    """Match predicted and true nuclei one to one at an IoU threshold.

    Parameters
    ----------
    predicted, truth : array_like
        Integer label images of the same shape (0 = background).
    iou_threshold : float
        Pairs with IoU at or above this (above it with ``strict``) can match.
    strict : bool
        Require IoU strictly above the threshold (the Data Science Bowl's rule).

    Returns
    -------
    ObjectMatch
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
    return _match(object_overlaps(predicted, truth), iou_threshold, strict)


def object_scores(predicted: Any, truth: Any, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Object precision, recall and F1 (and counts) at an IoU threshold (>=).

    Parameters
    ----------
    predicted, truth : array_like
        Integer label images of the same shape.
    iou_threshold : float
        Matching threshold (0.5 by default).

    Returns
    -------
    dict
        ``threshold, n_true, n_pred, tp, fp, fn, precision, recall, f1, mean_matched_iou``.
    """
    return match_objects(predicted, truth, iou_threshold).scores()


def dsb_precisions(predicted: Any, truth: Any, thresholds: Any = DSB_THRESHOLDS) -> np.ndarray:
    """``TP / (TP + FP + FN)`` at each IoU threshold (a hit needs IoU above it).

    Parameters
    ----------
    predicted, truth : array_like
        Integer label images of the same shape.
    thresholds : array_like
        IoU thresholds (default :data:`DSB_THRESHOLDS`, 0.5 to 0.95 by 0.05).

    Returns
    -------
    numpy.ndarray
        One value per threshold; 1 where both images are empty.
    """
    overlaps = object_overlaps(predicted, truth)
    return np.array([_match(overlaps, float(t), True).dsb_precision for t in thresholds])


def dsb_average_precision(predicted: Any, truth: Any, thresholds: Any = DSB_THRESHOLDS) -> float:
    """The Data Science Bowl 2018 score of one image: :func:`dsb_precisions` averaged.

    Parameters
    ----------
    predicted, truth : array_like
        Integer label images of the same shape.
    thresholds : array_like
        IoU thresholds (default 0.5 to 0.95 by 0.05).

    Returns
    -------
    float
        In [0, 1]; average it over images for a data set score.
    """
    return float(np.mean(dsb_precisions(predicted, truth, thresholds)))


@dataclass(frozen=True)
class ObjectErrors:
    """An object error map and what it counts.

    Attributes
    ----------
    map : numpy.ndarray
        uint8, codes of :data:`OBJECT_ERROR_CLASSES`.
    match : ObjectMatch
        The matching behind it.
    matched, false_nuclei, missed, merges, splits : int
        Matched pairs; predicted objects matching nothing (not part of a merge or split);
        true nuclei found nowhere (not inside a merge or split); predicted objects covering
        most of two or more true nuclei; true nuclei holding most of two or more predicted
        objects.
    """

    map: np.ndarray
    match: ObjectMatch
    matched: int
    false_nuclei: int
    missed: int
    merges: int
    splits: int

    def counts(self) -> dict[str, int]:
        """The counts as a dictionary."""
        return {
            "matched": self.matched,
            "false_nuclei": self.false_nuclei,
            "missed": self.missed,
            "merges": self.merges,
            "splits": self.splits,
        }


def object_error_map(
    predicted: Any,
    truth: Any,
    iou_threshold: float = 0.5,
    *,
    cover: float = 0.5,
    paint: bool = True,
) -> ObjectErrors:
    """Label each object by the kind of error it is: missed, false, merged or split.

    Parameters
    ----------
    predicted, truth : array_like
        Integer label images of the same shape.
    iou_threshold : float
        IoU needed for a match (>=).
    cover : float
        A predicted object *merges* when it covers at least this fraction of each of two or
        more true nuclei; a true nucleus is *split* when two or more predicted objects each
        have at least this fraction of their area inside it.
    paint : bool
        Paint the map; without it only the counts are computed (``map`` is empty), which
        is what choosing by nuclei needs, several times faster on large images.

    Returns
    -------
    ObjectErrors
        The map (0 background, 1 matched, 2 false nucleus, 3 missed nucleus, painted over
        the true nucleus where nothing is predicted, 4 merge, 5 split, painted over the
        pieces) and the counts.
    """
    predicted = _labels(predicted, "prediction")
    truth = _labels(truth, "ground truth")
    overlaps = object_overlaps(predicted, truth)
    match = _match(overlaps, iou_threshold, False)
    n_true, n_pred = overlaps.true_ids.size, overlaps.pred_ids.size
    of_true = overlaps.intersection / overlaps.true_areas[overlaps.pair_true]
    of_pred = overlaps.intersection / overlaps.pred_areas[overlaps.pair_pred]
    covering = of_true >= cover  # the predicted object covers most of the true nucleus
    merge_pred = np.bincount(overlaps.pair_pred[covering], minlength=n_pred) >= 2
    inside = of_pred >= cover  # the predicted object lies mostly inside the true nucleus
    split_true = np.bincount(overlaps.pair_true[inside], minlength=n_true) >= 2
    piece_pred = np.zeros(n_pred, bool)
    piece_pred[overlaps.pair_pred[inside & split_true[overlaps.pair_true]]] = True
    merged_true = np.zeros(n_true, bool)
    merged_true[overlaps.pair_true[covering & merge_pred[overlaps.pair_pred]]] = True

    matched_pred = np.isin(overlaps.pred_ids, match.matched_pred)
    matched_true = np.isin(overlaps.true_ids, match.matched_true)
    false_pred = ~matched_pred & ~merge_pred & ~piece_pred
    missed_true = ~matched_true & ~merged_true & ~split_true

    def lookup(labels: np.ndarray, ids: np.ndarray, selected: np.ndarray) -> np.ndarray:
        return np.isin(labels, ids[selected]) if selected.any() else np.zeros(labels.shape, bool)

    out = np.zeros(truth.shape if paint else (0, 0), np.uint8)
    if paint:
        out[lookup(truth, overlaps.true_ids, missed_true)] = 3
        out[lookup(predicted, overlaps.pred_ids, matched_pred)] = 1
        out[lookup(predicted, overlaps.pred_ids, false_pred)] = 2
        out[lookup(predicted, overlaps.pred_ids, merge_pred)] = 4
        out[lookup(predicted, overlaps.pred_ids, piece_pred)] = 5
    return ObjectErrors(
        map=out,
        match=match,
        matched=match.tp,
        false_nuclei=int(false_pred.sum()),
        missed=int(missed_true.sum()),
        merges=int(merge_pred.sum()),
        splits=int(split_true.sum()),
    )
