"""Images and masks from single files (TIFF, PNG, JPEG), checked before they are read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_unet_nuclei.io._file_checks import (
    file_problem,
    one_line,
    quiet_tifffile,
    read_limit_bytes,
    tiff_problem,
    too_large,
)
from napari_unet_nuclei.io.channels import grey_from_colour
from napari_unet_nuclei.io.labelled import DataError
from napari_unet_nuclei.nn.normalization import ImageWarning
from napari_unet_nuclei.notices import warn_user

__all__ = ["IMAGE_SUFFIXES", "TIFF_SUFFIXES", "read_image_file", "read_mask_file", "to_grey"]

#: File suffixes read as images or masks (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: File suffixes read as the lab's pickle of tensors.
TIFF_SUFFIXES = (".tif", ".tiff")


def to_grey(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return a 2-D grey image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` (returned as is), or ``(H, W, 3)`` RGB / ``(H, W, 4)`` RGBA.
    name : str
        Used in error messages.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` with the input dtype: channel 0 if the colour channels are identical,
        otherwise the nuclear channel (the one with the most nucleus-like contrast, see
        :func:`~napari_unet_nuclei.io.channels.grey_from_colour`; alpha is never used), said
        in an :class:`ImageWarning`.

    Raises
    ------
    DataError
        For any other shape.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise DataError(
            f"{name} has shape {image.shape}; expected a 2-D grey image (H, W) or a colour "
            "image (H, W, 3) RGB / (H, W, 4) RGBA. Save one 2-D channel per image (for a "
            "stack or channels-first data, pick the nuclear channel first)."
        )

    grey, note = grey_from_colour(image, name)
    if note:
        warn_user(note, ImageWarning, stacklevel=2)
    return grey


def _pillow_problem(path: Path, limit: int) -> str | None:
    """Check a PNG/JPEG's declared size from its header, before decoding any pixel."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        bands = len(image.getbands())
        mode = image.mode
        itemsize = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    if width < 1 or height < 1:
        return "holds an empty image"
    return too_large((height, width, bands), itemsize, limit)


def _read_raw(path: Path) -> np.ndarray:
    """Read an image file as stored, dropping leading singleton axes."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"Cannot read {str(path)!r}: unsupported file type {path.suffix!r}. Supported: "
            f"{', '.join(IMAGE_SUFFIXES)}."
        )
    problem = file_problem(path)
    if problem == "does not exist":
        raise DataError(f"Image file {str(path)!r} not found.")
    if problem:
        raise DataError(f"Cannot read {str(path)!r} as an image: it {problem}.")
    limit = read_limit_bytes()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with quiet_tifffile(), tifffile.TiffFile(path) as tif:
                problem = tiff_problem(tif, limit)
                if problem is None:
                    array = tif.asarray()
        else:
            problem = _pillow_problem(path, limit)
            if problem is None:
                import imageio.v3 as iio

                array = iio.imread(path)
    except Exception as exc:  # readers raise many types for bad files
        raise DataError(
            f"Cannot read {str(path)!r} ({type(exc).__name__}: {one_line(exc)}). Check that "
            "the file is a valid, complete image of its type."
        ) from exc
    if problem is not None:
        raise DataError(f"Cannot read {str(path)!r} as an image: the file {problem}.")
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"Cannot read {str(path)!r} as an image: its pixels are of type {array.dtype}, "
            "not numbers (expected integer or floating-point grey values)."
        )
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


def read_image_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one image file (TIFF with tifffile, PNG/JPEG with imageio) as a 2-D array.

    Parameters
    ----------
    path : str or os.PathLike
        ``.tif``, ``.tiff``, ``.png``, ``.jpg`` or ``.jpeg``.

    Returns
    -------
    numpy.ndarray
        2-D image in the file's dtype (colour images are converted with :func:`to_grey`).

    Raises
    ------
    DataError
        If the file is missing, not a regular file, unreadable, of an unsupported type,
        not 2-D or not numbers, or if its header declares more pixels than may be read
        into memory (checked before anything is allocated). Any error of the image
        libraries becomes this error, with one sentence naming the file.
    """
    path = Path(path)
    return to_grey(_read_raw(path), name=f"Image file {str(path)!r}")


def read_mask_file(path: Path) -> np.ndarray:
    """Read a label file; colour files are accepted only if their channels are identical."""
    array = _read_raw(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        raise DataError(
            f"Mask file {str(path)!r} is a colour image with different channels; masks must "
            "be single-channel label images (0 = background, one id per nucleus)."
        )
    if array.ndim != 2:
        raise DataError(
            f"Mask file {str(path)!r} has shape {array.shape}; a 2-D label image is expected."
        )
    return array
