"""Figures for reports: error overlays and precision-recall plots, written as PNG.

Uses matplotlib's object API with the Agg canvas, so it works without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.evaluate.object_metrics import OBJECT_ERROR_COLORS, object_error_map
from napari_unet_nuclei.nn.normalization import normalize_frame

__all__ = [
    "error_overlay_rgb",
    "object_overlay_rgb",
    "save_error_overlay_png",
    "save_precision_recall_png",
]


def error_overlay_rgb(
    image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """Grey image with true positives, false positives and false negatives coloured.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any dtype).
    predicted, truth : numpy.ndarray
        Masks of the same shape (``> 0`` is nucleus).
    alpha : float
        Opacity of the colours.

    Returns
    -------
    numpy.ndarray
        float RGB image of shape ``(H, W, 3)`` in [0, 1].
    """
    from napari_unet_nuclei.evaluate.metrics import ERROR_COLORS, error_map

    return _tinted(image, error_map(predicted, truth), ERROR_COLORS, (1, 2, 3), alpha)


def _tinted(
    image: np.ndarray,
    codes: np.ndarray,
    colours: Mapping[int, Any],
    which: Iterable[int],
    alpha: float,
) -> np.ndarray:
    """The normalised grey image as RGB, tinted with ``colours[c]`` where ``codes == c``."""
    grey = np.clip(normalize_frame(image), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for code in which:
        colour = np.asarray(colours[code][:3], np.float32)
        where = codes == code
        rgb[where] = (1 - alpha) * rgb[where] + alpha * colour
    return rgb


def object_overlay_rgb(
    image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = 0.55
) -> tuple[np.ndarray, dict[str, int]]:
    """Grey image with nuclei coloured by their error: matched, false, missed, merged, split.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image (any dtype).
    predicted, truth : numpy.ndarray
        Instance labels of the same shape.
    alpha : float
        Opacity of the colours.

    Returns
    -------
    numpy.ndarray
        float RGB ``(H, W, 3)`` in [0, 1].
    dict
        The counts of :meth:`~napari_unet_nuclei.evaluate.object_metrics.ObjectErrors.counts`.
    """
    errors = object_error_map(predicted, truth)
    return _tinted(image, errors.map, OBJECT_ERROR_COLORS, range(1, 6), alpha), errors.counts()


def save_error_overlay_png(
    path: str | Path,
    image: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    title: str = "",
    *,
    objects: bool = False,
) -> Path:
    """Write image | prediction | error overlay side by side with a legend.

    With ``objects``, ``predicted`` and ``truth`` are instance labels and the overlay
    colours whole nuclei by their error (matched, false, missed, merged, split), with the
    counts in the legend; otherwise pixels (true positive, false positive, missed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from napari_unet_nuclei.evaluate.metrics import ERROR_CLASSES, ERROR_COLORS

    figure = Figure(figsize=(12, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(np.asarray(predicted) > 0, cmap="gray")
    axes[1].set_title("prediction")
    if objects:
        from napari_unet_nuclei.evaluate.object_metrics import (
            OBJECT_ERROR_CLASSES,
            OBJECT_ERROR_COLORS,
        )

        rgb, counts = object_overlay_rgb(image, predicted, truth)
        axes[2].imshow(rgb)
        axes[2].set_title("errors by nucleus")
        numbers = (
            counts["matched"],
            counts["false_nuclei"],
            counts["missed"],
            counts["merges"],
            counts["splits"],
        )
        handles = [
            Patch(color=OBJECT_ERROR_COLORS[c][:3], label=f"{OBJECT_ERROR_CLASSES[c]} ({n})")
            for c, n in zip(range(1, 6), numbers)
        ]
    else:
        axes[2].imshow(error_overlay_rgb(image, predicted, truth))
        axes[2].set_title("errors")
        handles = [Patch(color=ERROR_COLORS[c][:3], label=ERROR_CLASSES[c]) for c in (1, 2, 3)]
    for axis in axes:
        axis.set_axis_off()
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.12 if objects else 0.07, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def save_precision_recall_png(
    path: str | Path, curves: Mapping[str, object], title: str = ""
) -> Path:
    """Write precision against recall for several models (``name -> PrecisionRecallCurve``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for name, curve in curves.items():
        (line,) = axis.plot(
            curve.recall, curve.precision, label=f"{name} (AP {curve.average_precision:.3f})"
        )
        p, r = curve.point_at(0.5)
        axis.plot([r], [p], "o", color=line.get_color())
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1.01)
    axis.set_ylim(0, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    axis.set_title(title or "precision-recall, threshold swept over logits -5..+5 (dot: 0)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
