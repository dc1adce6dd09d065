"""Labelled nuclei images from folders, ``.npz`` files and the lab's pickle.

Every reader returns a list of :class:`LabelledImage` (a 2-D image, its 2-D label image
and a name), so training and evaluation code does not care where the data came from.

Supported inputs (see :func:`load_dataset`):

- a folder with ``images/`` and ``masks/`` holding files with the same stems
  (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg``);
- the lab's ``.npz`` (``X``, ``Y``, optional ``names``), read without pickle;
- the lab's pickle of torch tensors (``.pck``, ``.pkl``, ``.pickle``), read with the
  restricted loader of :mod:`napari_unet_nuclei.io.safe_pickle`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import (
    file_problem,
    format_bytes,
    one_line,
    quiet_tifffile,
    read_json,
    read_limit_bytes,
    tiff_problem,
    too_large,
)
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError
from napari_unet_nuclei.nn.normalization import ImageWarning

__all__ = [
    "IMAGE_SUFFIXES",
    "PICKLE_SUFFIXES",
    "TIFF_SUFFIXES",
    "DataError",
    "LabelledImage",
    "RefusedFileError",
    "check_training_labels",
    "load_dataset",
    "parse_split",
    "read_folder",
    "read_image_file",
    "read_lab_pickle",
    "read_npz",
    "select_by_names",
    "select_labelled",
    "stack_to_items",
    "to_grey",
]

#: File suffixes read as images or masks (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: File suffixes read as the lab's pickle of tensors.
PICKLE_SUFFIXES = (".pck", ".pkl", ".pickle")
TIFF_SUFFIXES = (".tif", ".tiff")


class DataError(ValueError):
    """Input data that cannot be used; the message says what is wrong and how to fix it."""


class RefusedFileError(DataError, UnsafeFileError):
    """A data file was refused because loading it would need pickle (which can run code)."""


def _label_array(labels: np.ndarray, name: str) -> np.ndarray:
    """Return labels as a non-negative integer array, keeping every ``> 0`` pixel ``> 0``."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.integer):
        if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
            raise DataError(
                f"The labels of {name!r} contain negative values (min {labels.min()}). Labels "
                "must be 0 for background and positive ids (or 1) for nuclei."
            )
        return labels
    if np.issubdtype(labels.dtype, np.floating):
        finite = np.isfinite(labels)
        if not finite.all():
            raise DataError(
                f"The labels of {name!r} contain NaN or infinite values. Labels must be 0 for "
                "background and positive numbers for nuclei."
            )
        if labels.size and labels.min() < 0:
            raise DataError(
                f"The labels of {name!r} contain negative values (min {labels.min()}). Labels "
                "must be 0 for background and positive ids (or 1) for nuclei."
            )
        top = float(labels.max()) if labels.size else 0.0
        if np.array_equal(labels, np.round(labels)) and top < 2**31:
            for dtype in (np.uint8, np.uint16, np.int32):
                if top <= np.iinfo(dtype).max:
                    return labels.astype(dtype)
        # Soft or fractional masks: any positive value is a nucleus pixel.
        return (labels > 0).astype(np.uint8)
    raise DataError(
        f"The labels of {name!r} have dtype {labels.dtype}; expected integer ids, a boolean "
        "mask or a float mask."
    )


@dataclass
class LabelledImage:
    """One 2-D image with its labels.

    Parameters
    ----------
    name : str
        Identifier (a file stem, or ``image_000`` ... for unnamed arrays).
    image : numpy.ndarray
        2-D image in its original dtype.
    labels : numpy.ndarray
        2-D label image of the same shape: 0 is background, other values are nucleus ids
        (instance labels) or 1 (a binary mask). Integer ids are kept as they are; boolean
        masks become uint8; float masks become integers when all values are whole numbers,
        otherwise ``labels > 0`` as uint8.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 2:
            raise DataError(
                f"Image {self.name!r} has shape {self.image.shape}; a 2-D (H, W) image is "
                "expected. Convert colour images with to_grey and split stacks into frames."
            )
        labels = np.asarray(self.labels)
        if labels.shape != self.image.shape:
            raise DataError(
                f"Image {self.name!r} has shape {self.image.shape} but its labels have shape "
                f"{labels.shape}; the mask must have exactly the image's shape."
            )
        self.labels = _label_array(labels, self.name)

    @property
    def mask(self) -> np.ndarray:
        """Binary nucleus mask, ``labels > 0``."""
        return self.labels > 0


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
    from napari_unet_nuclei.io.channels import grey_from_colour

    grey, note = grey_from_colour(image, name)
    if note:
        warnings.warn(note, ImageWarning, stacklevel=2)
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


def _read_mask_file(path: Path) -> np.ndarray:
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


def _files_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if file.stem in found:
            raise DataError(
                f"Two files in {str(folder)!r} share the name {file.stem!r} "
                f"({found[file.stem].name}, {file.name}); keep one file per name."
            )
        found[file.stem] = file
    return found


def read_pairs(
    image_dir: Path, mask_dir: Path, names: Iterable[str] | None = None
) -> list[LabelledImage]:
    """Read images and masks matched by file stem, sorted by name (or in ``names`` order)."""
    images = _files_by_stem(image_dir)
    if not images:
        raise DataError(
            f"No images found in {str(image_dir)!r}; expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}."
        )
    masks = _files_by_stem(mask_dir)
    if names is None:
        wanted = sorted(images)
    else:
        wanted = list(names)
        missing = [n for n in wanted if n not in images]
        if missing:
            raise DataError(
                f"{len(missing)} requested image(s) are not in {str(image_dir)!r}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}."
            )
    items = []
    for stem in wanted:
        if stem not in masks:
            raise DataError(
                f"Image {images[stem].name!r} has no mask: expected a file named {stem!r} "
                f"(any of {', '.join(IMAGE_SUFFIXES)}) in {str(mask_dir)!r}."
            )
        image = read_image_file(images[stem])
        labels = _read_mask_file(masks[stem])
        if image.shape != labels.shape:
            raise DataError(
                f"Image {images[stem].name!r} has shape {image.shape} but its mask "
                f"{masks[stem].name!r} has shape {labels.shape}; they must match."
            )
        items.append(LabelledImage(stem, image, labels))
    return items


def read_folder(path: str | os.PathLike[str]) -> list[LabelledImage]:
    """Read a folder with ``images/`` and ``masks/`` sub-folders.

    Parameters
    ----------
    path : str or os.PathLike
        Folder holding ``images/<name>.<ext>`` and ``masks/<name>.<ext>``: the stems must
        match, the extensions may differ (TIFF, PNG or JPEG).

    Returns
    -------
    list of LabelledImage
        Sorted by name (file stem); masks keep their integer ids.

    Raises
    ------
    DataError
        If a sub-folder is missing, an image has no mask, or shapes differ.
    """
    root = Path(path)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(
                f"{str(root)!r} has no {sub}/ folder. A dataset folder must hold images/ and "
                "masks/ with one mask per image, named like the image."
            )
    try:
        return read_pairs(root / "images", root / "masks")
    except DataError:
        raise
    except Exception as exc:  # a folder that cannot be listed, an unexpected reader error
        raise DataError(
            f"Cannot read the dataset folder {str(root)!r} ({type(exc).__name__}: "
            f"{one_line(exc)})."
        ) from exc


def _as_stack(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 3:
        return array
    if array.ndim == 2:
        return array[np.newaxis]
    raise DataError(
        f"{what} has shape {array.shape}; expected (N, 1, H, W), (N, H, W) or (H, W) "
        "(one grey channel per image)."
    )


def stack_to_items(
    images: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
) -> list[LabelledImage]:
    """Split stacked arrays into :class:`LabelledImage` items.

    Parameters
    ----------
    images, labels : numpy.ndarray
        ``(N, H, W)`` or ``(N, 1, H, W)`` (a single ``(H, W)`` image is accepted too).
    names : sequence of str, optional
        One name per image; ``image_000``, ``image_001`` ... by default.

    Returns
    -------
    list of LabelledImage
        Views into the input arrays, in order.
    """
    images = _as_stack(images, "The image array")
    labels = _as_stack(labels, "The label array")
    if images.shape != labels.shape:
        raise DataError(
            f"The images have shape {images.shape} but the labels {labels.shape} (after "
            "removing the channel axis); they must match."
        )
    count = images.shape[0]
    if names is None:
        names = [f"image_{index:03d}" for index in range(count)]
    else:
        names = [str(n) for n in names]
        if len(names) != count:
            raise DataError(f"Got {len(names)} names for {count} images; give one per image.")
    return [LabelledImage(n, images[i], labels[i]) for i, n in enumerate(names)]


def read_npz(path: str | os.PathLike[str]) -> list[LabelledImage]:
    """Read the lab's ``.npz``: ``X`` images, ``Y`` masks and optional ``names``.

    Parameters
    ----------
    path : str or os.PathLike
        File saved with :func:`numpy.savez`; read with ``allow_pickle=False``.

    Returns
    -------
    list of LabelledImage
        One per image, named from ``names`` or ``image_000`` ...

    Raises
    ------
    RefusedFileError
        If ``X``, ``Y`` or ``names`` are object arrays (loading them would need pickle,
        which can run code): nothing is unpickled. A subclass of :class:`DataError` and of
        :class:`~napari_unet_nuclei.io.safe_pickle.UnsafeFileError`.
    DataError
        If the file is not a ``.npz`` (or is damaged), keys are missing, the arrays are
        not numbers or the shapes do not fit, or if the ``.npy`` headers declare more
        than may be read into memory (checked before anything is allocated).
    """
    path = Path(path)
    _check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            missing = [k for k in ("X", "Y") if k not in keys]
            if missing:
                held = ", ".join(keys[:5]) + (
                    f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                raise DataError(
                    f"{str(path)!r} has no array {' or '.join(missing)} (it holds: "
                    f"{held or 'nothing'}). Save images as X and masks as Y: "
                    "numpy.savez(path, X=images, Y=masks, names=names)."
                )
            images, labels = data["X"], data["Y"]
            names = data["names"] if "names" in keys else None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise RefusedFileError(
                f"Refused {str(path)!r}: it holds Python object arrays, which can only be "
                "loaded with pickle (and pickle can run code). Save plain numeric arrays "
                "and a string array of names instead."
            ) from exc
        raise DataError(f"Cannot read {str(path)!r} as .npz ({exc}).") from exc
    except Exception as exc:  # zipfile, zlib and numpy raise many types for damaged files
        raise DataError(
            f"Cannot read {str(path)!r} as .npz ({type(exc).__name__}: {one_line(exc)}); "
            "expected a numpy.savez file."
        ) from exc
    for array, what in ((images, "X (the images)"), (labels, "Y (the masks)")):
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"{str(path)!r} holds {what} of type {array.dtype}, not numbers; save numeric "
                "arrays: numpy.savez(path, X=images, Y=masks, names=names)."
            )
    if names is not None:
        names = np.asarray(names).reshape(-1).tolist()
    return _items_of_file(path, images, labels, names)


def _items_of_file(
    path: Path, images: np.ndarray, labels: np.ndarray, names: Sequence[str] | None = None
) -> list[LabelledImage]:
    """:func:`stack_to_items`, with the file named in its errors."""
    try:
        return stack_to_items(images, labels, names)
    except DataError as exc:
        raise DataError(f"{str(path)!r} does not hold usable data: {exc}") from exc


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _npy_header(stream: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a ``.npy`` stream (no data is read)."""
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, _fortran, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _fortran, dtype = npy_format.read_array_header_2_0(stream)
    else:  # version 3.0 (utf-8 field names): numpy's private reader
        shape, _fortran, dtype = npy_format._read_array_header(stream, version)
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _check_npz(path: Path) -> None:
    """Refuse what is not a ``.npz`` before numpy reads it: not a file, not a zip archive,
    object arrays (pickle), and arrays whose declared size exceeds the memory limit."""
    import zipfile

    problem = file_problem(path)
    if problem == "does not exist":
        raise DataError(f"Dataset {str(path)!r} not found; check the path.")
    if problem:
        raise DataError(f"Cannot read {str(path)!r} as .npz: it {problem}.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise DataError(f"Cannot read {str(path)!r} as .npz ({one_line(exc)}).") from exc
    if head.startswith(_NPY_MAGIC):
        raise DataError(
            f"{str(path)!r} is a single .npy array, not a .npz archive; save images and "
            "masks together: numpy.savez(path, X=images, Y=masks, names=names)."
        )
    if head[:4] not in _ZIP_MAGICS:
        raise DataError(
            f"{str(path)!r} is not a .npz file (numpy.savez writes a zip archive; this file "
            "is empty or of another kind)."
        )
    limit = read_limit_bytes()
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename.removesuffix(".npy")
                if key not in ("X", "Y", "names"):
                    continue
                with archive.open(info) as member:
                    shape, dtype = _npy_header(member)
                if dtype.hasobject:
                    raise RefusedFileError(
                        f"Refused {str(path)!r}: it holds Python object arrays, which can "
                        "only be loaded with pickle (and pickle can run code). Save plain "
                        "numeric arrays and a string array of names instead."
                    )
                problem = too_large(shape, dtype.itemsize, limit)
                total += math.prod(shape) * dtype.itemsize
                if problem is None and total > limit:
                    problem = (
                        f"brings the declared arrays to {format_bytes(total)}, more than the "
                        f"{format_bytes(limit)} that may be read into memory here"
                    )
                if problem:
                    raise DataError(f"Refused {str(path)!r}: its array {key} {problem}.")
    except DataError:
        raise
    except Exception as exc:  # a damaged archive or .npy header
        raise DataError(
            f"Cannot read {str(path)!r} as .npz ({type(exc).__name__}: {one_line(exc)}); "
            "expected a numpy.savez file."
        ) from exc


def read_lab_pickle(path: str | os.PathLike[str]) -> list[LabelledImage]:
    """Read the lab's pickle of ``(X, Y)`` torch tensors without running code from it.

    The file (``nuclei_cells_segmentations.pck``) holds no names, so the items are named
    ``image_000``, ``image_001`` ... Its arrays are identical, in the same order, to ``X``
    and ``Y`` of the lab's ``nuclei_128.npz``, whose ``names`` are the sorted Kromp image
    names: ``image_007`` is ``names[7]`` of the npz. Splits are given by real image name
    (see :func:`parse_split`), so select a split from the ``.npz`` (or rename the items
    with its ``names``), not from this file.

    Parameters
    ----------
    path : str or os.PathLike
        Pickle written by ``pickle.dump((X, Y), f)``.

    Returns
    -------
    list of LabelledImage

    Raises
    ------
    napari_unet_nuclei.io.safe_pickle.UnsafeFileError
        If the file names code other than what rebuilding tensors needs (nothing is run).
    DataError
        If the file is not such a pickle (any error of the unpickler or of torch becomes
        this error, with one sentence naming the file) or the arrays do not fit.
    """
    from napari_unet_nuclei.io.safe_pickle import UnsafeFileError, load_tensor_pickle

    problem = file_problem(path)
    if problem == "does not exist":
        raise DataError(f"Dataset {str(path)!r} not found; check the path.")
    if problem:
        raise DataError(f"Cannot read {str(path)!r} as the lab's pickle: it {problem}.")
    try:
        arrays = load_tensor_pickle(path)
    except UnsafeFileError:
        raise
    except Exception as exc:  # the unpickler and torch raise many types for damaged files
        detail = one_line(exc, limit=400)
        if not isinstance(exc, ValueError):
            detail = (
                f"Cannot read {str(path)!r} as the lab's pickle ({type(exc).__name__}: {detail})"
            )
        raise DataError(f"{detail}.") from exc
    for number, array in enumerate(arrays):
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"{str(path)!r} holds an array of type {array.dtype} (item {number}), not "
                "numbers; expected float tensors (X, Y)."
            )
    if len(arrays) != 2:
        raise DataError(
            f"{str(path)!r} holds {len(arrays)} arrays; expected two, (X, Y): images and masks."
        )
    return _items_of_file(Path(path), arrays[0], arrays[1])


def load_dataset(path: str | os.PathLike[str]) -> list[LabelledImage]:
    """Load labelled images from a folder, an ``.npz`` or the lab's pickle.

    Parameters
    ----------
    path : str or os.PathLike
        A folder with ``images/`` and ``masks/`` (:func:`read_folder`), a ``.npz``
        (:func:`read_npz`) or a ``.pck``/``.pkl``/``.pickle`` (:func:`read_lab_pickle`).

    Returns
    -------
    list of LabelledImage

    Raises
    ------
    DataError
        If the path does not exist or is of an unsupported kind.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"Dataset {str(path)!r} not found; check the path.")
    if path.is_dir():
        return read_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path)
    if suffix in PICKLE_SUFFIXES:
        return read_lab_pickle(path)
    raise DataError(
        f"Cannot load a dataset from {str(path)!r}. Supported inputs: a folder with images/ "
        "and masks/ sub-folders (TIFF/PNG/JPEG files with matching names), a .npz file with "
        f"arrays X, Y (and optionally names), or the lab's pickle ({', '.join(PICKLE_SUFFIXES)})."
    )


def parse_split(spec: str) -> tuple[list[str], list[str]]:
    """Read a train/test split by image name from ``"FILE:KEY"``.

    Parameters
    ----------
    spec : str
        Path of a JSON file and a key, separated by the last colon, e.g.
        ``"splits.json:lab_70_9"``. The file maps each key to
        ``{"train": [names...], "test": [names...]}``.

    Returns
    -------
    tuple of (list of str, list of str)
        Train names and test names.

    Raises
    ------
    DataError
        For a malformed spec, a missing or invalid file, or an unknown key.
    """
    file_part, sep, key = str(spec).rpartition(":")
    if not sep or not file_part or not key:
        raise DataError(f"Split {spec!r} is not of the form FILE:KEY, e.g. splits.json:lab_70_9.")
    path = Path(file_part)
    if not path.exists():
        raise DataError(f"Split file {file_part!r} not found; check the path before ':{key}'.")
    try:
        content = read_json(path)
    except Exception as exc:  # not a file, not UTF-8, not JSON, nested too deeply...
        raise DataError(
            f"Split file {file_part!r} cannot be read as JSON: {one_line(exc)}."
        ) from exc
    if not isinstance(content, dict):
        raise DataError(
            f"Split file {file_part!r} must hold a JSON object mapping split names to "
            '{"train": [...], "test": [...]}.'
        )
    if key not in content:
        raise DataError(
            f"Split {key!r} is not in {file_part!r}; available: "
            f"{', '.join(map(str, content)) or 'none'}."
        )
    entry = content[key]
    parts = []
    for part in ("train", "test"):
        names = entry.get(part) if isinstance(entry, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(
                f"Split {key!r} in {file_part!r} must have a {part!r} list of image names."
            )
        parts.append(list(names))
    return parts[0], parts[1]


def select_by_names(items: Sequence[LabelledImage], names: Iterable[str]) -> list[LabelledImage]:
    """Return the items called ``names``, in the order of ``names``.

    Raises
    ------
    DataError
        If some names are not among the items (the first few are listed).
    """
    by_name: dict[str, LabelledImage] = {}
    for item in items:
        by_name.setdefault(item.name, item)
    names = list(names)
    missing = [n for n in names if n not in by_name]
    if missing:
        hint = ""
        if any(n.startswith("image_") for n in by_name):
            hint = (
                " The data has no real names (image_000 ...): for the lab's pickle use "
                "nuclei_128.npz, which carries the names."
            )
        raise DataError(
            f"{len(missing)} of {len(names)} requested images are not in the data: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}.{hint}"
        )
    return [by_name[n] for n in names]


def select_labelled(
    labels: Sequence[np.ndarray], names: Sequence[str], *, empty_is_background: bool = False
) -> tuple[list[int], str | None]:
    """Pick the images to train on: those whose labels hold a nucleus, unless told otherwise.

    Parameters
    ----------
    labels : sequence of numpy.ndarray
        One label image per training image (``> 0`` is nucleus).
    names : sequence of str
        Image names, for the messages.
    empty_is_background : bool
        Keep images without any nucleus too, as pure background examples.

    Returns
    -------
    list of int
        Indices of the images to train on.
    str or None
        A sentence for the user when images were left out, else None.

    Raises
    ------
    DataError
        When no label image holds a nucleus and ``empty_is_background`` is False.
    """
    names = [str(n) for n in names]
    empty = [i for i, lab in enumerate(labels) if not np.any(np.asarray(lab) > 0)]
    if empty_is_background or not empty:
        return list(range(len(labels))), None
    if len(empty) == len(labels):
        raise DataError(
            f"None of the {len(labels)} label image(s) contains a nucleus (no value > 0), so "
            "there is nothing to learn. Check that the right masks were given; to train on "
            "them as pure background, say that empty labels mean background "
            "(--empty-is-background, or tick 'empty frames are background')."
        )
    listed = ", ".join(names[i] for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
    note = (
        f"{len(empty)} of {len(labels)} label image(s) contain no nucleus and were left out "
        f"({listed}); say that empty labels mean background to train on them as background."
    )
    return [i for i in range(len(labels)) if i not in set(empty)], note


def check_training_labels(labels: Sequence[np.ndarray], names: Sequence[str]) -> list[str]:
    """Check label values before training; return warnings about suspicious labels.

    Parameters
    ----------
    labels : sequence of numpy.ndarray
        One label image per training image.
    names : sequence of str
        Image names, for the messages.

    Returns
    -------
    list of str
        Sentences for labels that are usable but suspicious: every image without any
        nucleus (the network learns background only), or an image whose pixels are all
        nucleus (nothing to tell nuclei from).

    Raises
    ------
    DataError
        For negative, NaN or infinite label values, or a non-numeric label dtype.
    """
    messages: list[str] = []
    n_empty = 0
    for label, name in zip(labels, names):
        array = _label_array(np.asarray(label), str(name))
        if not array.size or not np.any(array > 0):
            n_empty += 1
        elif bool(np.all(array > 0)):
            messages.append(
                f"Every pixel of the labels of {str(name)!r} is nucleus: there is no background "
                "to learn from in that image; check that the labels are not inverted."
            )
    if len(labels) and n_empty == len(labels):
        messages.append(
            f"None of the {len(labels)} label image(s) contains a nucleus: the network will "
            "learn that everything is background."
        )
    return messages
