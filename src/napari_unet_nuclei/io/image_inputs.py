"""The inputs of a batch run: finding the images (files, folders, globs, OME-Zarr) and
opening each one, lazily where it is large, with its nuclear channel and its axis names."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io.channels import MAX_UNNAMED_CHANNELS, nuclear_channel
from napari_unet_nuclei.io.image_files import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    read_image_file,
    to_grey,
)
from napari_unet_nuclei.io.labelled import DataError
from napari_unet_nuclei.io.zarr_io import is_zarr_path
from napari_unet_nuclei.nn.normalization import ImageWarning
from napari_unet_nuclei.notices import warn_user

__all__ = ["BatchError", "BatchInput", "discover_inputs", "open_image"]

_GLOB_CHARACTERS = set("*?[")


class BatchError(ValueError):
    """A problem with the inputs or outputs of a batch run, explained in one sentence."""


@dataclass(frozen=True)
class BatchInput:
    """One input image of a batch.

    Attributes
    ----------
    path : pathlib.Path
        The file, or the OME-Zarr / zarr folder.
    name : str
        Base name of the outputs (the file name without suffix and without ``.ome``).
    kind : str
        ``"tiff"``, ``"image"`` (PNG/JPEG) or ``"zarr"``.
    """

    path: Path
    name: str
    kind: str


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _base_name(path: Path) -> str:
    name = path.name
    for suffix in (".zarr", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-4] if name.lower().endswith(".ome") else name


def _as_input(path: Path) -> BatchInput | None:

    if path.name.startswith("."):
        return None
    if path.is_dir():
        return BatchInput(path, _base_name(path), "zarr") if is_zarr_path(path) else None
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return None
    return BatchInput(path, _base_name(path), "tiff" if suffix in TIFF_SUFFIXES else "image")


def discover_inputs(specs: Iterable[str | os.PathLike[str]]) -> list[BatchInput]:
    """Expand files, folders, globs and OME-Zarr folders into a list of input images.

    Parameters
    ----------
    specs : iterable of path-like
        Image files (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg``; multi-page TIFF
        stacks included), OME-Zarr or zarr folders, folders of those (not recursive; hidden
        files are ignored), or glob patterns (``"data/**/*.tif"``).

    Returns
    -------
    list of BatchInput
        In the given order (folders and globs sorted by name), without duplicates.

    Raises
    ------
    BatchError
        For a missing path, an unsupported file, an empty folder or glob, or two inputs
        whose outputs would have the same name.
    """
    found: list[BatchInput] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text)
        if path.exists():
            single = _as_input(path)
            if single is not None:
                found.append(single)
            elif path.is_dir():
                items = [i for i in map(_as_input, sorted(path.iterdir())) if i is not None]
                if not items:
                    raise BatchError(
                        f"No images found in folder {path} (looked for "
                        f"{', '.join(IMAGE_SUFFIXES)} files and *.zarr folders)."
                    )
                found.extend(items)
            else:
                raise BatchError(
                    f"Cannot segment {path}: unsupported file type {path.suffix!r}; give "
                    f"{', '.join(IMAGE_SUFFIXES)} files or OME-Zarr folders."
                )
        elif _GLOB_CHARACTERS & set(text):
            matches = [_as_input(Path(p)) for p in sorted(glob.glob(text, recursive=True))]
            items = [item for item in matches if item is not None]
            if not items:
                raise BatchError(f"No images match the pattern {text!r}.")
            found.extend(items)
        else:
            raise BatchError(f"Input image not found: {path}")
    unique: dict[Path, BatchInput] = {}
    for item in found:
        unique.setdefault(item.path.resolve(), item)
    by_name: dict[str, BatchInput] = {}
    for item in unique.values():
        other = by_name.setdefault(item.name, item)
        if other is not item:
            raise BatchError(
                f"Two inputs would write outputs named {item.name!r}: {other.path} and "
                f"{item.path}; segment them into different output folders."
            )
    return list(unique.values())


class _Squeezed:
    """A lazy view of an array without some of its axes: length-1 axes, or an axis at one
    index (``at``: axis -> index, 0 where not given), as a channel picked from its axis."""

    def __init__(self, array: Any, drop: Sequence[int], at: dict[int, int] | None = None) -> None:
        self.array = array
        self.drop = sorted(drop)
        self.at = dict(at or {})
        self.shape = tuple(n for i, n in enumerate(array.shape) if i not in self.drop)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        full: list[Any] = []
        parts = iter(key)
        for axis in range(self.array.ndim):
            full.append(self.at.get(axis, 0) if axis in self.drop else next(parts))
        return self.array[tuple(full)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = np.asarray(self[...] if self.ndim else self.array)
        return data if dtype is None else data.astype(dtype)


_TIFF_AXES = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x"}


@contextmanager
def open_image(
    source: BatchInput | str | os.PathLike[str],
    lazy_bytes: int = 512 << 20,
    *,
    channel: int | None = None,
    stack_axis: str = "auto",
) -> Iterator[tuple[Any, list[str] | None]]:
    """Open an input image for segmentation, lazily where it is large.

    Parameters
    ----------
    source : BatchInput or path-like
        TIFF (2-D, multi-page stack or hyperstack), PNG/JPEG, or OME-Zarr / zarr folder.
    lazy_bytes : int
        TIFF data larger than this is read through zarr, a band of rows at a time.
    channel : int, optional
        The nuclear channel (see :class:`SegmentOptions`).
    stack_axis : {"auto", "frames", "z"}
        What the user said the first axis of a stack is (an explicit answer lets a short
        unnamed axis be read as frames or slices).

    Yields
    ------
    array-like
        ``(..., H, W)`` grey image or stack: numpy, or a lazy zarr-backed array.
    list of str or None
        Axis names (``t``, ``z``, ``y``, ``x``...) where the file tells them.

    Raises
    ------
    BatchError
        For unreadable files and multi-channel images (keep the nuclear channel only).
    """
    if not isinstance(source, BatchInput):
        item = _as_input(Path(source))
        if item is None:
            raise BatchError(f"Cannot read {source}: not a supported image file or zarr folder.")
        source = item
    from napari_unet_nuclei.io._file_checks import file_problem, one_line

    path = source.path
    if source.kind == "image":
        try:
            image = read_image_file(path)
        except DataError as error:
            raise BatchError(str(error)) from error
        yield image, None
        return
    if source.kind == "zarr":
        from napari_unet_nuclei.io.zarr_io import ZarrFileError, open_zarr_image

        try:
            array, axes = open_zarr_image(path)
        except ZarrFileError as error:
            raise BatchError(str(error)) from error
        yield _drop_channel(array, axes, path, channel, stack_axis)
        return
    problem = file_problem(path)
    if problem:
        raise BatchError(f"{path} is not a readable TIFF file: it {problem}.")
    import tifffile

    from napari_unet_nuclei.io._file_checks import quiet_tifffile

    try:
        with quiet_tifffile():
            tif = tifffile.TiffFile(path)
    except Exception as error:  # tifffile raises several types for bad files
        raise BatchError(
            f"{path} is not a readable TIFF file ({type(error).__name__}: {one_line(error)})."
        ) from error
    try:
        rgb, data, axes = _read_tiff_series(tif, path, lazy_bytes)
        if rgb:  # RGB(A) samples: read whole, convert to grey
            yield data, None
            return
        yield _drop_channel(data, axes, path, channel, stack_axis)
    finally:
        tif.close()


def _read_tiff_series(tif: Any, path: Path, lazy_bytes: int) -> tuple[bool, Any, list[str]]:
    """Check an open TIFF's header, then read its first series (lazily when large).

    Returns whether it was RGB(A) turned grey, the data and the axis names; raises
    :class:`BatchError` with one sentence for a damaged file or a declared size that does
    not fit in memory (checked before anything is allocated).
    """
    from napari_unet_nuclei.io._file_checks import (
        one_line,
        quiet_tifffile,
        read_limit_bytes,
        tiff_problem,
        too_large,
    )

    try:
        with quiet_tifffile():
            problem = tiff_problem(tif, None)
            if problem is None:
                series = tif.series[0]
                letters = series.axes
                rgb = "S" in letters
                eager = rgb or series.nbytes <= lazy_bytes
                if eager:
                    problem = too_large(
                        series.shape, np.dtype(series.dtype).itemsize, read_limit_bytes()
                    )
            if problem is None:
                axes = [_TIFF_AXES.get(letter, letter.lower()) for letter in letters]
                if rgb:
                    data = series.asarray()
                    while data.ndim > 3 and data.shape[0] == 1:
                        data = data[0]
                    data = to_grey(data, name=str(path))
                elif eager:
                    data = series.asarray()
                else:
                    import zarr

                    data = zarr.open(series.aszarr(), mode="r")
    except DataError as error:  # colour samples that are not an image: to_grey says why
        raise BatchError(str(error)) from error
    except Exception as error:  # tifffile raises several types for bad files
        raise BatchError(
            f"{path} is not a readable TIFF file ({type(error).__name__}: {one_line(error)})."
        ) from error
    if problem is not None:
        raise BatchError(f"{path} was refused: the file {problem}.")
    return rgb, data, axes


def _drop_channel(
    array: Any,
    axes: list[str] | None,
    path: Path,
    channel: int | None = None,
    stack_axis: str = "auto",
) -> tuple[Any, list[str] | None]:
    """Keep the nuclear channel and drop length-1 leading axes.

    A named channel axis gives ``channel`` (by default the most nucleus-like channel, said
    in a warning); a short unnamed first axis of a 3-D stack is refused unless the user said
    whether it holds channels (``channel``) or frames/slices (``stack_axis``).
    """

    shape = tuple(array.shape)
    if len(shape) < 2:
        raise BatchError(f"{path} holds a {len(shape)}-D array; expected (..., Y, X).")
    where = axes.index("c") if axes is not None and "c" in axes else None
    named = axes is not None and len(axes) == len(shape) and set(axes) <= set("tczyx")
    if where is None and not named and len(shape) == 3 and 1 < shape[0] <= MAX_UNNAMED_CHANNELS:
        if channel is not None:
            where = 0
        elif stack_axis == "auto":
            raise BatchError(
                f"{path} holds {shape[0]} planes of {shape[1]} x {shape[2]} and does not say "
                "whether they are channels, frames or z-slices: pass --channel N to segment "
                "channel N, or --stack-axis frames / --stack-axis z to segment every plane."
            )
    if where is not None and shape[where] > 1:
        count = shape[where]
        if channel is None:

            def plane(index: int) -> Any:
                key = [0] * (len(shape) - 2)
                key[where] = index
                return array[tuple(key)]

            channel = nuclear_channel([plane(i) for i in range(count)])
            warn_user(
                f"{path.name} has {count} channels: segmenting channel {channel}, the one with "
                "the most nucleus-like contrast (--channel N chooses another).",
                ImageWarning,
                stacklevel=2,
            )
        if channel >= count:
            raise BatchError(
                f"{path} has {count} channels (0-{count - 1}); --channel {channel} is not one."
            )
        array = _Squeezed(array, [where], at={where: channel})
        axes = [a for i, a in enumerate(axes) if i != where] if axes is not None else None
        shape = tuple(array.shape)
    drop = [i for i, n in enumerate(shape[:-2]) if n == 1]
    if not drop:
        return array, axes
    kept = [a for i, a in enumerate(axes) if i not in drop] if axes is not None else None
    return _Squeezed(array, drop), kept
