"""Per-image intensity normalisation with robust percentiles.

The same settings are stored in every model file so that inference normalises exactly as
training did, whatever the image dtype (uint8, uint16, int, float, bool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["NormalizationConfig", "normalize_frame", "normalize_image"]

#: Above this many pixels, percentiles are estimated on a regular subsample.
_PERCENTILE_SAMPLE = 1 << 20


@dataclass(frozen=True)
class NormalizationConfig:
    """Map the ``low_percentile`` of each frame to 0 and the ``high_percentile`` to 1.

    Parameters
    ----------
    low_percentile, high_percentile : float
        Percentiles (0-100) of the frame's finite pixel values.
    """

    low_percentile: float = 1.0
    high_percentile: float = 99.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                "Normalisation percentiles must satisfy 0 <= low < high <= 100, got "
                f"low={self.low_percentile}, high={self.high_percentile}."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-compatible dictionary."""
        return {"method": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationConfig:
        """Build settings from :meth:`to_dict` output."""
        return cls(float(data["low_percentile"]), float(data["high_percentile"]))


def normalize_frame(frame: np.ndarray, config: NormalizationConfig | None = None) -> np.ndarray:
    """Normalise one 2-D frame to float32 with robust percentiles.

    Parameters
    ----------
    frame : numpy.ndarray
        2-D image of any real dtype. NaN and infinite pixels are ignored for the
        percentiles and set to 0 in the output.
    config : NormalizationConfig, optional
        Percentiles; the defaults when omitted.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape; a constant frame becomes all zeros.
    """
    config = config or NormalizationConfig()
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"normalize_frame expects a 2-D frame, got shape {frame.shape}.")
    values = frame.astype(np.float32, copy=False) if frame.dtype != np.float32 else frame
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    sample = values if all_finite else values[finite]
    if sample.size == 0:
        return np.zeros(frame.shape, np.float32)
    sample = sample.ravel()
    if sample.size > _PERCENTILE_SAMPLE:
        sample = sample[:: sample.size // _PERCENTILE_SAMPLE + 1]
    low, high = np.percentile(sample, [config.low_percentile, config.high_percentile])
    if not high > low:
        low, high = float(sample.min()), float(sample.max())
    if not high > low:
        return np.zeros(frame.shape, np.float32)
    out = (values - np.float32(low)) * np.float32(1.0 / (high - low))
    if not all_finite:
        out[~finite] = 0.0
    return out.astype(np.float32, copy=False)


def normalize_image(image: np.ndarray, config: NormalizationConfig | None = None) -> np.ndarray:
    """Normalise a 2-D image or every 2-D frame of a stack ``(..., H, W)`` separately.

    Parameters
    ----------
    image : numpy.ndarray
        Image or stack of any real dtype.
    config : NormalizationConfig, optional
        Percentiles; the defaults when omitted.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"Expected an image with at least 2 dimensions, got shape {image.shape}.")
    if image.ndim == 2:
        return normalize_frame(image, config)
    frames = image.reshape(-1, *image.shape[-2:])
    out = np.empty(frames.shape, np.float32)
    for index, frame in enumerate(frames):
        out[index] = normalize_frame(frame, config)
    return out.reshape(image.shape)
