"""The lab's labelled stacks: its ``.npz`` (read without pickle) and its pickle of torch
tensors (read with the restricted loader of :mod:`napari_unet_nuclei.io.safe_pickle`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import (
    file_problem,
    format_bytes,
    one_line,
    read_limit_bytes,
    too_large,
)
from napari_unet_nuclei.io.labelled import DataError, LabelledImage, RefusedFileError
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError, load_tensor_pickle

__all__ = ["PICKLE_SUFFIXES", "read_lab_pickle", "read_npz", "stack_to_items"]

#: File suffixes read as the lab's pickle of tensors.
PICKLE_SUFFIXES = (".pck", ".pkl", ".pickle")


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
