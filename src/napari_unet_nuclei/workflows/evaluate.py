"""Score a model on labelled images: pixels and nuclei, with one pooling rule.

The command line's ``evaluate``, the benchmarks and the Evaluate dock's object metrics use
these functions, so that the same model on the same images gives the same numbers
everywhere.

Pooling rule
------------
Scores over several images (or frames) are **pooled**: pixel and object counts are summed
before precision, recall, F1 and IoU are computed, so every pixel and every nucleus weighs
the same whatever image it is in. The Data Science Bowl 2018 AP (IoU 0.5:0.95) and the
pixel AP are the exception: they are averaged over images, as the 2018 challenge scores.
The per-image **mean** of every score is reported beside the pooled value.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from napari_unet_nuclei.evaluate.metrics import average_precision, confusion_counts
from napari_unet_nuclei.evaluate.object_metrics import dsb_average_precision, object_error_map
from napari_unet_nuclei.events import run_to_end
from napari_unet_nuclei.nn.object_targets import instance_labels
from napari_unet_nuclei.prediction.instances import iter_instances

__all__ = [
    "OBJECT_COUNT_KEYS",
    "POOLING_RULE",
    "evaluate_model",
    "iter_evaluate_model",
    "object_frame_scores",
    "pool_object_scores",
    "pool_pixel_scores",
]

#: One sentence for reports and JSON files.
POOLING_RULE = (
    "pooled: pixel and nucleus counts summed over all images before the scores are "
    "computed; AP and DSB AP averaged over images. mean: the average of per-image scores."
)
#: Object counts that add up over frames.
OBJECT_COUNT_KEYS = (
    "tp",
    "fp",
    "fn",
    "n_true",
    "n_pred",
    "matched",
    "false_nuclei",
    "missed",
    "merges",
    "splits",
)
PIXEL_KEYS = ("precision", "recall", "f1", "iou", "ap")
OBJECT_KEYS = ("object_precision", "object_recall", "object_f1", "dsb_ap")


def pool_object_scores(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Object scores over several frames: counts summed, DSB AP averaged.

    Parameters
    ----------
    parts : sequence of dict
        Per-frame scores holding :data:`OBJECT_COUNT_KEYS` and ``dsb_ap``.

    Returns
    -------
    dict
        The summed counts, ``object_precision``, ``object_recall``, ``object_f1`` (1.0 when
        there are no nuclei at all) and the mean ``dsb_ap``.
    """
    total = {key: int(sum(part[key] for part in parts)) for key in OBJECT_COUNT_KEYS}
    tp, n_true, n_pred = total["tp"], total["n_true"], total["n_pred"]
    return {
        **total,
        "object_precision": tp / n_pred if n_pred else 1.0,
        "object_recall": tp / n_true if n_true else 1.0,
        "object_f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 1.0,
        "dsb_ap": float(np.mean([part["dsb_ap"] for part in parts])) if parts else 1.0,
    }


def object_frame_scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, dict]:
    """Object error map and scores of one 2-D frame (IoU >= 0.5; DSB AP over 0.5:0.95).

    Parameters
    ----------
    predicted, truth : numpy.ndarray
        Instance labels of the same 2-D shape.

    Returns
    -------
    tuple of (numpy.ndarray, dict)
        The object error map (see :func:`~napari_unet_nuclei.evaluate.object_metrics.object_error_map`)
        and the frame's scores in the form of :func:`pool_object_scores`.
    """
    errors = object_error_map(predicted, truth)
    scores = {
        "tp": errors.match.tp,
        "fp": errors.match.fp,
        "fn": errors.match.fn,
        "n_true": int(errors.match.true_ids.size),
        "n_pred": int(errors.match.pred_ids.size),
        **errors.counts(),
        "dsb_ap": dsb_average_precision(predicted, truth),
    }
    return errors.map, pool_object_scores([scores])


def pool_pixel_scores(counts: Sequence[Any], aps: Sequence[float]) -> dict[str, float]:
    """Pixel precision, recall, F1 and IoU of summed ``ConfusionCounts``; AP averaged."""
    total = sum(counts)
    scores = total.scores() if counts else {}
    pooled = {key: float(scores[key]) for key in ("precision", "recall", "f1", "iou")}
    pooled["ap"] = float(np.nanmean(aps)) if len(aps) and not np.all(np.isnan(aps)) else np.nan
    return pooled


def iter_evaluate_model(
    model: Any,
    items: Sequence[Any],
    threshold: float | None = None,
    *,
    objects: bool = True,
    device: str = "auto",
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> Generator[Any, None, dict[str, Any]]:
    """Segment every labelled image with ``model`` and score pixels and nuclei.

    Parameters
    ----------
    model : NucleiModel
        The model (its instance rule splits the nuclei).
    items : sequence of LabelledImage
        2-D images with their labels (instance labels for meaningful object scores; a 0/1
        mask counts its connected parts as nuclei).
    threshold : float, optional
        Probability threshold; the model's own by default.
    objects : bool
        Also match nuclei one to one (IoU >= 0.5) and compute the DSB AP.
    device : str
        Where the network runs.
    should_stop : callable, optional
        Polled between tiles; raise ``InferenceCancelled`` to stop.
    **options
        More inference options (``tile_size``, ``overlap``, ``batch_size``...).

    Yields
    ------
    TileDone or FrameDone
        Progress of each image's inference.

    Returns
    -------
    dict
        ``threshold``, ``images`` (one row per image: name, pixel scores, and with
        ``objects`` the object scores and counts), ``mean`` (per-image average of each
        score), ``pooled`` (see the module's pooling rule) and ``pooling`` (the rule).
    """
    from napari_unet_nuclei.prediction.inference import iter_predict
    from napari_unet_nuclei.workflows.segmentation import default_instance_config

    threshold = float(model.threshold if threshold is None else threshold)
    config = default_instance_config(model, threshold=threshold)
    use_maps = config.uses_object_map
    rows: list[dict[str, Any]] = []
    pixel_counts, aps, object_parts = [], [], []
    for item in items:
        maps = None
        if use_maps and objects:
            shape = np.shape(item.image)
            maps = {name: np.empty(shape, np.float32) for name in model.object_maps}
        probabilities = yield from iter_predict(
            model, item.image, device=device, maps_out=maps, should_stop=should_stop, **options
        )
        truth_mask = np.asarray(item.labels) > 0
        counts = confusion_counts(probabilities >= threshold, truth_mask)
        ap = float(average_precision(probabilities, truth_mask))
        row: dict[str, Any] = {"name": item.name, **_pixel_row(counts), "ap": ap}
        pixel_counts.append(counts)
        aps.append(ap)
        if objects:
            predicted = yield from iter_instances(
                probabilities, config, maps=maps, should_stop=should_stop
            )
            _, scores = object_frame_scores(predicted, _truth_labels(item.labels))
            object_parts.append(scores)
            row.update({key: scores[key] for key in (*OBJECT_KEYS, *OBJECT_COUNT_KEYS)})
        rows.append(row)
    pooled = pool_pixel_scores(pixel_counts, aps)
    if objects:
        pooled.update(pool_object_scores(object_parts))
    keys = [key for key in (*PIXEL_KEYS, *OBJECT_KEYS) if rows and key in rows[0]]
    mean = {key: float(np.nanmean([row[key] for row in rows])) for key in keys}
    return {
        "threshold": threshold,
        "images": rows,
        "mean": mean,
        "pooled": pooled,
        "pooling": POOLING_RULE,
    }


def evaluate_model(
    model: Any,
    items: Sequence[Any],
    threshold: float | None = None,
    *,
    progress: Callable[[Any], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`iter_evaluate_model` run to the end (its events passed to ``progress``);
    returns its result dictionary."""
    return run_to_end(iter_evaluate_model(model, items, threshold, **options), progress)


def _pixel_row(counts: Any) -> dict[str, float]:
    return {key: float(getattr(counts, key)) for key in ("precision", "recall", "f1", "iou")}


def _truth_labels(labels: np.ndarray) -> np.ndarray:
    """Instance labels of the ground truth (a 0/1 mask: its connected parts)."""
    return instance_labels(np.asarray(labels))
