"""Per-image intensity normalisation with robust percentiles.

The same settings are stored in every model file so that inference normalises exactly as
training did, whatever the image dtype (uint8, uint16, int, float, bool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_unet_nuclei.notices import warn_user

__all__ = [
    "ImageWarning",
    "NormalizationConfig",
    "check_image_dtype",
    "intensity_range",
    "normalize_frame",
    "normalize_image",
    "scale_intensities",
    "warn_frame_problems",
]

#: Above this many pixels, percentiles are estimated on a regular subsample.
PERCENTILE_SAMPLE = 1 << 20
_DEGENERATE_RANGE = (
    1e-6  # percentile range below this fraction of the full range: use the full range
)


class ImageWarning(UserWarning):
    """Input that was used, but changed or suspicious; the message says what happened.

    napari's workers show these as warning notifications; the command line prints them.
    """


def check_image_dtype(dtype: Any, what: str = "The image") -> None:
    """Refuse pixel types that are not real numbers (complex, object, text...).

    Raises
    ------
    ValueError
        With one sentence naming the dtype, for anything but bool, integer or float.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{what} has pixels of type {dtype}; images must hold real numbers (bool, "
            "integer or float). Convert it to a numeric grey image first."
        )


def warn_frame_problems(n_non_finite: int, size: int, constant: float | None = None) -> None:
    """Warn (:class:`ImageWarning`) about NaN/infinite pixels and constant frames.

    Parameters
    ----------
    n_non_finite : int
        Number of NaN or infinite pixels in the frame.
    size : int
        Number of pixels in the frame.
    constant : float, optional
        The single value of a constant frame (NaN for a frame with no finite pixel);
        None when the frame is not constant.
    """
    if n_non_finite:
        warn_user(
            f"{n_non_finite} of {size} pixels of an image frame are NaN or infinite; they were "
            "ignored for the intensity range and treated as dark background (0).",
            ImageWarning,
            stacklevel=3,
        )
    if constant is not None:
        value = "no finite pixel" if constant != constant else f"every pixel is {constant:g}"
        warn_user(
            f"An image frame is constant ({value}): there is nothing to segment in it, so the "
            "network sees a blank frame.",
            ImageWarning,
            stacklevel=3,
        )


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

    Warns
    -----
    ImageWarning
        When NaN or infinite pixels were set to 0, and for a constant frame.

    Raises
    ------
    ValueError
        For a frame that is not 2-D or whose pixels are not real numbers.
    """
    config = config or NormalizationConfig()
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"normalize_frame expects a 2-D frame, got shape {frame.shape}.")
    check_image_dtype(frame.dtype, "The image frame")
    values = frame.astype(np.float32, copy=False) if frame.dtype != np.float32 else frame
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    sample = values if all_finite else values[finite]
    if not all_finite:
        warn_frame_problems(int(finite.size - np.count_nonzero(finite)), int(finite.size))
    if sample.size == 0:
        warn_frame_problems(0, int(finite.size), float("nan"))
        return np.zeros(frame.shape, np.float32)
    sample = sample.ravel()
    if sample.size > PERCENTILE_SAMPLE:
        sample = sample[:: sample.size // PERCENTILE_SAMPLE + 1]
    value_range = intensity_range(sample, config)
    if value_range is None:
        warn_frame_problems(0, int(finite.size), float(sample.min()))
        return np.zeros(frame.shape, np.float32)
    return scale_intensities(values, value_range)


def intensity_range(
    sample: np.ndarray, config: NormalizationConfig | None = None
) -> tuple[float, float] | None:
    """The ``(low, high)`` intensities that normalisation maps to 0 and 1.

    Parameters
    ----------
    sample : numpy.ndarray
        Finite pixel values of the frame (all of them, or a regular sample).
    config : NormalizationConfig, optional
        Percentiles; the defaults when omitted.

    Returns
    -------
    tuple of float or None
        The percentiles; the full range instead when the percentiles fall in a flat part of
        a mostly empty frame (a scale taken from them would blow the few other pixels up past
        float32 range); None for a constant sample.
    """
    config = config or NormalizationConfig()
    low, high = (
        float(v) for v in np.percentile(sample, [config.low_percentile, config.high_percentile])
    )
    smallest, largest = float(sample.min()), float(sample.max())
    if not (high - low) > (largest - smallest) * _DEGENERATE_RANGE:
        low, high = smallest, largest
    return (low, high) if high > low else None


def scale_intensities(values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """``(values - low) / (high - low)`` as float32, computed in float64 (no overflow for
    tiny ranges); NaN and infinite pixels become 0."""
    low, high = value_range
    out = np.asarray(values).astype(np.float64) - low
    out *= 1.0 / (high - low)
    finite = np.isfinite(out)
    if not finite.all():
        out[~finite] = 0.0
    return out.astype(np.float32)


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
