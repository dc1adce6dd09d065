"""Pixel-level metrics for binary nucleus segmentation.

Everything the lab looks at when it compares models: confusion counts and the scores
derived from them (accuracy, precision, recall, F1/Dice, IoU), precision-recall curves over a
sweep of the logit threshold from -5 to +5 with the exact average precision, error maps of
missed and wrongly added nucleus pixels, and an Otsu-threshold baseline.

A pixel is *nucleus* when its value is ``> 0``: this accepts boolean masks, integer instance
labels (0 = background) and float masks. Pure numpy (scikit-image only for :func:`otsu_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei.nn.probabilities import logit_to_probability, probability_to_logit

__all__ = [
    "ERROR_CLASSES",
    "ERROR_COLORS",
    "LAB_LOGIT_THRESHOLDS",
    "ConfusionCounts",
    "PrecisionRecallCurve",
    "average_precision",
    "confusion_counts",
    "error_map",
    "logit_to_probability",
    "otsu_mask",
    "per_frame_counts",
    "per_frame_scores",
    "precision_recall_curve",
    "probability_to_logit",
    "segmentation_scores",
]

#: The lab's threshold sweep: logits from -5 to +5 in steps of 0.1 (101 values).
LAB_LOGIT_THRESHOLDS: np.ndarray = np.linspace(-5.0, 5.0, 101)

#: Meaning of the values of :func:`error_map`.
ERROR_CLASSES: dict[int, str] = {
    0: "background",
    1: "true positive",
    2: "false positive (wrongly added)",
    3: "false negative (missed)",
}

#: RGBA colours (0-1) for an error-map labels overlay: background transparent, then
#: bluish green / reddish magenta / orange-yellow, which stay distinct for the common forms of
#: colour blindness (after the Okabe-Ito palette).
ERROR_COLORS: dict[int, tuple[float, float, float, float]] = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.2, 0.8, 0.2, 1.0),
    2: (0.9, 0.2, 0.8, 1.0),
    3: (1.0, 0.65, 0.0, 1.0),
}

_SCORE_NAMES = ("accuracy", "precision", "recall", "f1", "iou")


# --------------------------------------------------------------------------------------
# Confusion counts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfusionCounts:
    """Pixel counts of a binary comparison of a predicted mask with the ground truth.

    Parameters
    ----------
    tp, fp, fn, tn : int
        True positives (nucleus in both), false positives (nucleus wrongly added), false
        negatives (nucleus missed) and true negatives (background in both). Non-negative.

    Notes
    -----
    Conventions for empty cases, so that a frame without nuclei that is predicted empty
    scores perfectly:

    - ``precision`` is 1.0 when nothing is predicted (``tp + fp == 0``);
    - ``recall`` is 1.0 when there is no true nucleus (``tp + fn == 0``);
    - ``f1`` and ``iou`` are 1.0 when prediction and truth are both empty;
    - otherwise a score whose denominator is 0 is 0.0 (only ``accuracy`` of zero pixels).

    Counts add up with ``+`` (and ``sum(...)``) to pool several frames.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn", "tn"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(
                    f"ConfusionCounts.{name} must be an integer pixel count, got {value!r}."
                )
            if value < 0:
                raise ValueError(f"ConfusionCounts.{name} must be >= 0, got {value}.")
            object.__setattr__(self, name, int(value))

    @property
    def total(self) -> int:
        """Number of pixels compared."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def accuracy(self) -> float:
        """Fraction of pixels classified correctly, ``(tp + tn) / total``."""
        total = self.total
        return (self.tp + self.tn) / total if total else 0.0

    @property
    def precision(self) -> float:
        """Fraction of predicted nucleus pixels that are nucleus, ``tp / (tp + fp)``."""
        predicted = self.tp + self.fp
        return self.tp / predicted if predicted else 1.0

    @property
    def recall(self) -> float:
        """Fraction of true nucleus pixels that are found, ``tp / (tp + fn)``."""
        actual = self.tp + self.fn
        return self.tp / actual if actual else 1.0

    @property
    def f1(self) -> float:
        """F1 score, equal to the Dice coefficient, ``2 tp / (2 tp + fp + fn)``."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    @property
    def iou(self) -> float:
        """Intersection over union (Jaccard index), ``tp / (tp + fp + fn)``."""
        denominator = self.tp + self.fp + self.fn
        return self.tp / denominator if denominator else 1.0

    def scores(self) -> dict[str, float]:
        """Return the five scores (accuracy, precision, recall, f1, iou) as a dictionary."""
        return {name: float(getattr(self, name)) for name in _SCORE_NAMES}

    def to_dict(self) -> dict[str, Any]:
        """Return the four counts and the five scores as a JSON-compatible dictionary."""
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, **self.scores()}

    def __add__(self, other: object) -> ConfusionCounts:
        if not isinstance(other, ConfusionCounts):
            return NotImplemented
        return ConfusionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def __radd__(self, other: object) -> ConfusionCounts:
        # Lets ``sum(list_of_counts)`` start from the integer 0.
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool) and other == 0:
            return self
        return NotImplemented


def _as_mask(array: Any, name: str) -> np.ndarray:
    """Return a boolean nucleus mask (``> 0``) of ``array`` without copying booleans."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "uif":
        raise TypeError(
            f"{name} must be a boolean, integer-label or float mask, got dtype {array.dtype}."
        )
    return array > 0


def _check_shapes(predicted: np.ndarray, truth: np.ndarray, what: str = "predicted") -> None:
    if predicted.shape != truth.shape:
        raise ValueError(
            f"{what} and truth must have the same shape, got {what} {predicted.shape} and "
            f"truth {truth.shape}. Compare the prediction of the same image (or stack) as "
            "the ground-truth mask, without resizing or cropping only one of them."
        )


def confusion_counts(predicted: Any, truth: Any) -> ConfusionCounts:
    """Count true/false positives and negatives of a predicted mask against the truth.

    Parameters
    ----------
    predicted, truth : array_like
        Masks of the same shape (2-D images or stacks of any dimension). A pixel is nucleus
        when its value is ``> 0``; pass thresholded predictions (not probabilities).

    Returns
    -------
    ConfusionCounts
        Pixel counts pooled over the whole array.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    _check_shapes(predicted, truth)
    pred_mask = _as_mask(predicted, "predicted")
    true_mask = _as_mask(truth, "truth")
    tp = int(np.count_nonzero(pred_mask & true_mask))
    n_pred = int(np.count_nonzero(pred_mask))
    n_true = int(np.count_nonzero(true_mask))
    fp = n_pred - tp
    fn = n_true - tp
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=int(pred_mask.size) - tp - fp - fn)


def segmentation_scores(predicted: Any, truth: Any) -> dict[str, float]:
    """Return accuracy, precision, recall, f1 (Dice) and iou of a predicted mask.

    Parameters
    ----------
    predicted, truth : array_like
        Masks of the same shape; nucleus is ``> 0``. Stacks are pooled into one score.

    Returns
    -------
    dict of str to float
        Keys ``accuracy``, ``precision``, ``recall``, ``f1``, ``iou``; see
        :class:`ConfusionCounts` for the empty-case conventions.
    """
    return confusion_counts(predicted, truth).scores()


def per_frame_counts(predicted: Any, truth: Any) -> list[ConfusionCounts]:
    """Return the confusion counts of every 2-D frame of a stack ``(..., H, W)``.

    Parameters
    ----------
    predicted, truth : array_like
        Masks of the same shape with at least 2 dimensions; nucleus is ``> 0``.

    Returns
    -------
    list of ConfusionCounts
        One entry per frame, in C order of the leading dimensions (one entry for a 2-D
        image). Their sum equals :func:`confusion_counts` of the whole stack.
    """
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    _check_shapes(predicted, truth)
    if predicted.ndim < 2:
        raise ValueError(
            f"per-frame scores need images with at least 2 dimensions (..., H, W), got shape "
            f"{predicted.shape}; use confusion_counts for 1-D data."
        )
    frame_shape = predicted.shape[-2:]
    pred_mask = _as_mask(predicted, "predicted").reshape(-1, *frame_shape)
    true_mask = _as_mask(truth, "truth").reshape(-1, *frame_shape)
    tp = np.count_nonzero(pred_mask & true_mask, axis=(1, 2))
    n_pred = np.count_nonzero(pred_mask, axis=(1, 2))
    n_true = np.count_nonzero(true_mask, axis=(1, 2))
    frame_size = int(np.prod(frame_shape))
    result = []
    for t, p, a in zip(tp.tolist(), n_pred.tolist(), n_true.tolist()):
        result.append(ConfusionCounts(tp=t, fp=p - t, fn=a - t, tn=frame_size - p - a + t))
    return result


def per_frame_scores(predicted: Any, truth: Any) -> list[dict[str, Any]]:
    """Return counts and scores of every 2-D frame of a stack ``(..., H, W)``.

    Parameters
    ----------
    predicted, truth : array_like
        Masks of the same shape with at least 2 dimensions; nucleus is ``> 0``.

    Returns
    -------
    list of dict
        One :meth:`ConfusionCounts.to_dict` per frame (keys ``tp``, ``fp``, ``fn``, ``tn``,
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``iou``), in C order of the leading
        dimensions.
    """
    return [counts.to_dict() for counts in per_frame_counts(predicted, truth)]


# --------------------------------------------------------------------------------------
# Logits and probabilities
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Precision-recall curves
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PrecisionRecallCurve:
    """Precision and recall of ``probability >= threshold`` over a sweep of thresholds.

    Parameters
    ----------
    thresholds : numpy.ndarray
        Probability thresholds, strictly increasing.
    precision, recall : numpy.ndarray
        Scores at each threshold (same length as ``thresholds``), with the conventions of
        :class:`ConfusionCounts` (precision 1.0 when nothing is predicted).
    average_precision : float
        Exact step-wise average precision over all distinct probability values (not just
        the thresholds above); NaN when the truth holds no nucleus.

    Notes
    -----
    The arrays are made read-only. Instances compare by identity (numpy arrays have no
    single truth value).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("thresholds", "precision", "recall"):
            array = np.array(getattr(self, name), dtype=np.float64)
            if array.ndim != 1:
                raise ValueError(f"PrecisionRecallCurve.{name} must be 1-D, got {array.shape}.")
            array.setflags(write=False)
            arrays[name] = array
        lengths = {name: array.size for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"thresholds, precision and recall must have the same length, got {lengths}."
            )
        if np.any(np.diff(arrays["thresholds"]) <= 0):
            raise ValueError("PrecisionRecallCurve.thresholds must be strictly increasing.")
        for name, array in arrays.items():
            object.__setattr__(self, name, array)
        object.__setattr__(self, "average_precision", float(self.average_precision))

    @property
    def logit_thresholds(self) -> np.ndarray:
        """The thresholds as logits (probabilities clipped to stay finite)."""
        return probability_to_logit(self.thresholds)

    @property
    def f1(self) -> np.ndarray:
        """F1 score at each threshold (0 where precision and recall are both 0)."""
        total = self.precision + self.recall
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(total > 0, 2 * self.precision * self.recall / total, 0.0)
        return f1

    def point_at(self, threshold: float, *, logit: bool = False) -> tuple[float, float]:
        """Return ``(precision, recall)`` at the sweep threshold nearest to ``threshold``.

        Parameters
        ----------
        threshold : float
            A probability, or a logit when ``logit`` is True.
        logit : bool, optional
            Interpret ``threshold`` as a logit and find the nearest logit threshold.

        Returns
        -------
        tuple of float
            Precision and recall at the nearest threshold (the lower one on a tie).
        """
        if self.thresholds.size == 0:
            raise ValueError("This precision-recall curve has no thresholds.")
        grid = self.logit_thresholds if logit else self.thresholds
        index = int(np.argmin(np.abs(grid - float(threshold))))
        return float(self.precision[index]), float(self.recall[index])

    def to_dict(self) -> dict[str, Any]:
        """Return the curve as JSON-compatible lists; a NaN average precision becomes None."""
        ap = self.average_precision
        return {
            "thresholds": self.thresholds.tolist(),
            "logit_thresholds": np.asarray(self.logit_thresholds).tolist(),
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
            "average_precision": None if np.isnan(ap) else ap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionRecallCurve:
        """Rebuild a curve from :meth:`to_dict` output."""
        ap = data.get("average_precision")
        return cls(
            thresholds=np.asarray(data["thresholds"], np.float64),
            precision=np.asarray(data["precision"], np.float64),
            recall=np.asarray(data["recall"], np.float64),
            average_precision=float("nan") if ap is None else float(ap),
        )


def _split_sorted_scores(probabilities: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs; return the sorted probabilities of nucleus and background pixels."""
    probs = np.asarray(probabilities)
    truth = np.asarray(truth)
    _check_shapes(probs, truth, "probabilities")
    if probs.dtype.kind not in "uifb":
        raise TypeError(f"probabilities must be real numbers, got dtype {probs.dtype}.")
    probs = probs.astype(np.float64, copy=False)  # exact for float32 and small integers
    if probs.size:
        low, high = float(np.min(probs)), float(np.max(probs))
        if np.isnan(low) or np.isnan(high):
            raise ValueError("probabilities contain NaN; replace or mask them before scoring.")
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"probabilities must lie in [0, 1], got values from {low:g} to {high:g}. "
                "Convert network logits with logit_to_probability first."
            )
    true_mask = _as_mask(truth, "truth")
    positives = np.sort(probs[true_mask], axis=None)
    negatives = np.sort(probs[~true_mask], axis=None)
    return positives, negatives


def _average_precision_sorted(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Exact step-wise AP, ``sum_n (R_n - R_{n-1}) P_n`` over all distinct scores."""
    n_pos = positives.size
    if n_pos == 0:
        return float("nan")
    # Recall only changes at the distinct values held by nucleus pixels.
    starts = np.flatnonzero(np.concatenate(([True], positives[1:] != positives[:-1])))
    counts = np.diff(np.append(starts, n_pos))
    values = positives[starts]
    tp = n_pos - starts  # nucleus pixels with probability >= value
    fp = negatives.size - np.searchsorted(negatives, values, side="left")
    return float(np.sum(counts * (tp / (tp + fp))) / n_pos)


def precision_recall_curve(
    probabilities: Any, truth: Any, thresholds: Any = None
) -> PrecisionRecallCurve:
    """Precision and recall of ``probabilities >= threshold`` for a sweep of thresholds.

    Parameters
    ----------
    probabilities : array_like
        Nucleus probabilities in [0, 1], same shape as ``truth`` (any dimension; stacks are
        pooled). Convert logits with :func:`logit_to_probability`.
    truth : array_like
        Ground-truth mask; nucleus is ``> 0``.
    thresholds : array_like, optional
        Probability thresholds; sorted and de-duplicated. Default: the lab's logit sweep
        :data:`LAB_LOGIT_THRESHOLDS` (-5 to +5) mapped to probabilities.

    Returns
    -------
    PrecisionRecallCurve
        Curve on the thresholds and the exact average precision over all distinct
        probability values (NaN when ``truth`` has no nucleus).

    Notes
    -----
    The pixels are sorted once and each threshold is located by binary search, so a sweep
    costs about one sort of the image, whatever the number of thresholds.
    """
    if thresholds is None:
        grid = np.asarray(logit_to_probability(LAB_LOGIT_THRESHOLDS), np.float64)
    else:
        grid = np.unique(np.asarray(thresholds, np.float64).ravel())
        if grid.size == 0 or np.isnan(grid).any():
            raise ValueError("thresholds must be a non-empty sequence of numbers without NaN.")
    positives, negatives = _split_sorted_scores(probabilities, truth)
    n_pos = positives.size
    tp = n_pos - np.searchsorted(positives, grid, side="left")
    fp = negatives.size - np.searchsorted(negatives, grid, side="left")
    predicted = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
        recall = tp / n_pos if n_pos else np.ones(grid.shape)
    return PrecisionRecallCurve(
        thresholds=grid,
        precision=precision,
        recall=recall,
        average_precision=_average_precision_sorted(positives, negatives),
    )


def average_precision(probabilities: Any, truth: Any) -> float:
    """Exact step-wise average precision of nucleus probabilities.

    Parameters
    ----------
    probabilities : array_like
        Nucleus probabilities in [0, 1], same shape as ``truth``.
    truth : array_like
        Ground-truth mask; nucleus is ``> 0``.

    Returns
    -------
    float
        ``sum_n (R_n - R_{n-1}) P_n`` over all distinct probability values taken as
        thresholds (``>=``), the definition of scikit-learn's ``average_precision_score``;
        NaN when ``truth`` has no nucleus.
    """
    return _average_precision_sorted(*_split_sorted_scores(probabilities, truth))


# --------------------------------------------------------------------------------------
# Error maps and baseline
# --------------------------------------------------------------------------------------


def error_map(predicted: Any, truth: Any) -> np.ndarray:
    """Label every pixel by the kind of agreement between prediction and truth.

    Parameters
    ----------
    predicted, truth : array_like
        Masks of the same shape; nucleus is ``> 0``.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape: 0 = agreed background, 1 = true positive,
        2 = false positive (nucleus pixel wrongly added), 3 = false negative (nucleus pixel
        missed); see :data:`ERROR_CLASSES` and :data:`ERROR_COLORS`.
    """
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    _check_shapes(predicted, truth)
    pred_mask = _as_mask(predicted, "predicted").view(np.uint8)
    true_mask = _as_mask(truth, "truth").view(np.uint8)
    # disagreement -> 2, plus 1 where the truth is nucleus: TP 1, FP 2, FN 3.
    out = np.bitwise_xor(pred_mask, true_mask)
    out <<= 1
    out |= true_mask
    return out


def otsu_mask(image: Any) -> np.ndarray:
    """Threshold every 2-D frame with Otsu's method: the reference baseline.

    Parameters
    ----------
    image : array_like
        2-D image or stack ``(..., H, W)`` of any real dtype; each frame gets its own
        threshold computed on its finite pixels.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape, True where the pixel is above the frame's threshold.
        A constant (or all non-finite) frame gives all False.
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(
            f"otsu_mask expects an image with at least 2 dimensions, got {image.shape}."
        )
    if image.dtype.kind not in "uifb":
        raise TypeError(f"otsu_mask expects a real-valued image, got dtype {image.dtype}.")
    frames = image.reshape(-1, *image.shape[-2:])
    out = np.zeros(frames.shape, dtype=bool)
    for index, frame in enumerate(frames):
        frame = frame.astype(np.float64) if frame.dtype == np.bool_ else frame
        finite = np.isfinite(frame)
        values = frame if finite.all() else frame[finite]
        if values.size == 0 or values.min() == values.max():
            continue
        out[index] = frame > threshold_otsu(values)
    return out.reshape(image.shape)
