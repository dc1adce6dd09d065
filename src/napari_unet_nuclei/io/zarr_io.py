"""OME-Zarr in and out: lazy reading, chunked writing, atomic finishing.

Outputs are OME-NGFF 0.4 images (a zarr group in zarr format 2 with ``multiscales``
metadata and one full-resolution level ``"0"``), which ome-zarr-py, napari-ome-zarr, Fiji
(MoBIE / n5-viewer) and dask read. Works with zarr-python 3 (and the zarr 2 API). Inputs may be OME-Zarr 0.4 or 0.5 groups, or plain zarr
arrays. A group is written under a hidden temporary name and renamed when complete, so an
interrupted run never leaves a half-written output under the final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import one_line

__all__ = [
    "ZARR_FORMAT_NAME",
    "ZarrFileError",
    "create_ome_zarr",
    "default_axes",
    "finish_atomic",
    "is_zarr_path",
    "open_zarr_image",
    "partial_path",
    "read_ome_zarr_lazy",
]

#: Key under which this package stores its own attributes in the group.
ZARR_FORMAT_NAME = "napari_unet_nuclei"

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


class ZarrFileError(ValueError):
    """A folder could not be read as an OME-Zarr image or zarr array."""


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a zarr group or array (v2 or v3)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if path.name.lower().endswith(".zarr"):
        return True
    return any((path / name).is_file() for name in (".zgroup", ".zarray", "zarr.json"))


def partial_path(target: str | os.PathLike[str]) -> Path:
    """Hidden temporary name next to ``target`` used while it is being written."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def finish_atomic(partial: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move a completely written file or folder to its final name.

    An existing ``target`` is replaced: it is first moved aside, so the final name always
    holds either the old or the new complete output.

    Parameters
    ----------
    partial : path-like
        The complete temporary file or folder.
    target : path-like
        The final name.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    partial, target = Path(partial), Path(target)
    if partial.is_dir() and target.exists():
        old = target.with_name(f".{target.name}.old")
        _remove(old)
        os.replace(target, old)
        os.replace(partial, target)
        _remove(old)
    else:
        os.replace(partial, target)
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def default_axes(ndim: int) -> list[str]:
    """OME axis names for an array of ``ndim`` dimensions ending in y, x.

    2-D: ``y, x``; 3-D: ``z, y, x``; 4-D: ``t, z, y, x``; 5-D: ``t, c, z, y, x``.
    """
    names = {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["t", "z", "y", "x"]}
    if ndim in names:
        return names[ndim]
    if ndim == 5:
        return ["t", "c", "z", "y", "x"]
    raise ValueError(
        f"OME-Zarr images have 2 to 5 dimensions; got {ndim}. Split the data into stacks of "
        "at most (t, c, z, y, x) or write TIFF (--format tiff)."
    )


def _axes_metadata(axes: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for name in axes:
        entry = {"name": name}
        if name in _AXIS_TYPES:
            entry["type"] = _AXIS_TYPES[name]
        out.append(entry)
    return out


def create_ome_zarr(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    *,
    axes: Sequence[str] | None = None,
    chunks: Sequence[int] | None = None,
    attributes: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Create an empty OME-Zarr 0.4 image and return its full-resolution zarr array.

    Parameters
    ----------
    path : path-like
        Folder to create (conventionally ``<name>.ome.zarr``).
    shape : sequence of int
        ``(..., Y, X)``, 2 to 5 dimensions.
    dtype : numpy dtype
        Data type of the array.
    axes : sequence of str, optional
        Axis names (``t``, ``c``, ``z``, ``y``, ``x`` get their OME types); see
        :func:`default_axes` for the default.
    chunks : sequence of int, optional
        Chunk shape; by default one frame of up to 1024 x 1024 pixels per chunk.
    attributes : dict, optional
        Plain data stored under the group's ``napari_unet_nuclei`` attribute.
    overwrite : bool
        Replace an existing group at ``path``.

    Returns
    -------
    zarr.Array
        The writable array at ``<path>/0``.
    """
    import zarr

    shape = tuple(int(n) for n in shape)
    axes = list(axes) if axes is not None else default_axes(len(shape))
    if len(axes) != len(shape):
        raise ValueError(f"Got {len(axes)} axis names {axes} for an array of shape {shape}.")
    if chunks is None:
        chunks = (1,) * (len(shape) - 2) + tuple(max(1, min(n, 1024)) for n in shape[-2:])
    mode = "w" if overwrite else "w-"
    spec = {"shape": shape, "chunks": tuple(chunks), "dtype": np.dtype(dtype), "fill_value": 0}
    if hasattr(zarr.Group, "create_array"):  # zarr 3: write format 2, read everywhere
        group = zarr.open_group(str(path), mode=mode, zarr_format=2)
        array = group.create_array("0", **spec)
    else:  # zarr 2
        group = zarr.open_group(str(path), mode=mode)
        array = group.create_dataset("0", **spec)
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": Path(path).name.removesuffix(".zarr").removesuffix(".ome"),
            "axes": _axes_metadata(axes),
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(shape)}],
                }
            ],
        }
    ]
    if attributes:
        group.attrs[ZARR_FORMAT_NAME] = attributes
    return array


def ome_multiscales(attributes: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``multiscales`` list of a zarr group's attributes (OME-NGFF 0.4 or 0.5), or None."""
    if "multiscales" in attributes:  # OME-NGFF 0.4
        return attributes["multiscales"]
    ome = attributes.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:  # OME-NGFF 0.5
        return ome["multiscales"]
    return None


def open_zarr_image(path: str | os.PathLike[str]) -> tuple[Any, list[str] | None]:
    """Open an OME-Zarr image (its full resolution) or a plain zarr array, lazily.

    Parameters
    ----------
    path : path-like
        OME-Zarr group folder (``*.ome.zarr``) or zarr array folder.

    Returns
    -------
    zarr.Array
        Read-only array; nothing is loaded until it is indexed.
    list of str or None
        Axis names from the OME metadata, None for a plain array.

    Raises
    ------
    ZarrFileError
        When the path is not a folder holding a readable zarr image (a ``ValueError``):
        damaged metadata, a group without one image, an array without (Y, X) axes or
        without numbers. Chunks are read only when the array is indexed.
    """
    import zarr

    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a folder"
        raise ZarrFileError(
            f"{path} is not a readable zarr folder: it {what}; give an OME-Zarr image "
            "(*.ome.zarr) or a zarr array folder."
        )
    special = _special_entry(path)
    if special is not None:
        raise ZarrFileError(
            f"{path} is not a readable zarr folder: {special} in it is not a regular file (a "
            "device, pipe or socket, which may never end)."
        )
    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Array):
            return _checked(node, None, path)
        multiscales = ome_multiscales(dict(node.attrs))
        if not multiscales:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) == 1:
                return _checked(node[arrays[0]], None, path)
            raise ZarrFileError(
                f"{path} is a zarr group without OME 'multiscales' metadata and holds "
                f"{len(arrays)} arrays; give the OME-Zarr image or one array's folder."
            )
        first = multiscales[0]
        dataset = first["datasets"][0]["path"]
        axes = [
            axis["name"] if isinstance(axis, dict) else str(axis) for axis in first.get("axes", [])
        ]
        return _checked(node[str(dataset)], axes, path)
    except ZarrFileError:
        raise
    except Exception as error:  # zarr raises many types for bad stores and metadata
        raise ZarrFileError(
            f"{path} is not a readable zarr folder ({type(error).__name__}: "
            f"{one_line(error)}); give an OME-Zarr image (*.ome.zarr) or a zarr array."
        ) from error


def _special_entry(folder: Path, limit: int = 200_000) -> str | None:
    """The first entry under ``folder`` that is neither a folder nor a regular file (links
    followed), or None; reading such an entry (a pipe, ``/dev/zero``) could block forever.
    Gives up quietly after ``limit`` entries."""
    import stat

    pending, seen = [folder], 0
    while pending and seen < limit:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:  # zarr says what is wrong when it reads this folder
            continue
        for entry in entries:
            seen += 1
            try:
                mode = os.stat(entry.path).st_mode  # follows links
            except OSError:  # a dangling link or a loop: zarr treats it as missing
                continue
            if stat.S_ISDIR(mode):
                if not entry.is_symlink():
                    pending.append(Path(entry.path))
            elif not stat.S_ISREG(mode):
                return str(Path(entry.path).relative_to(folder))
    return None


def _checked(array: Any, axes: list[str] | None, path: Path) -> tuple[Any, list[str] | None]:
    """Refuse arrays that are not images: not an array, fewer than 2 axes, no numbers."""
    import zarr

    if not isinstance(array, zarr.Array):
        raise ZarrFileError(f"{path} holds a zarr group where an image array was expected.")
    if array.ndim < 2 or min(array.shape) < 1:
        raise ZarrFileError(
            f"{path} holds an array of shape {tuple(array.shape)}; an image needs (..., Y, X) "
            "with at least one pixel."
        )
    if np.dtype(array.dtype).kind not in "biuf":
        raise ZarrFileError(
            f"{path} holds an array of type {array.dtype}, not numbers (expected integer or "
            "floating-point grey values)."
        )
    if axes is not None and (
        len(axes) != array.ndim or not all(isinstance(axis, str) for axis in axes)
    ):
        axes = None
    return array, axes


def read_ome_zarr_lazy(path: str | os.PathLike[str]) -> Any:
    """Open an OME-Zarr image or zarr array as a dask array (chunks as stored).

    Parameters
    ----------
    path : path-like
        OME-Zarr group or zarr array folder.

    Returns
    -------
    dask.array.Array
        Lazy array; chunks are read when computed.
    """
    import dask.array as da

    array, _ = open_zarr_image(path)
    return da.from_zarr(array)
