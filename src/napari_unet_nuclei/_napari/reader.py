"""napari reader for the lab's labelled data: ``.npz`` (X, Y, names) and the ``.pck`` pickle.

Each file opens as two layers: an image stack and a labels stack (79 x 128 x 128 for the
lab's files), frame ``i`` of the labels going with frame ``i`` of the image, ready for the
Train and Evaluate widgets. Files are read through the engine's safe readers: the pickle
with a restricted unpickler that refuses any file that would run code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io.lab_files import read_lab_pickle, read_npz
from napari_unet_nuclei.io.labelled import DataError
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError

__all__ = ["get_reader", "read_lab_file"]

PathOrPaths = str | Sequence[str]
LayerData = tuple[Any, dict[str, Any], str]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2_PLUS = b"\x80"


def _looks_readable(path: str) -> bool:
    """Cheap check (no unpickling) that ``path`` may be one of the lab's files."""
    suffix = Path(path).suffix.lower()
    if not os.path.isfile(path):
        return False
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as archive:
                names = {Path(name).stem for name in archive.namelist()}
        except (OSError, zipfile.BadZipFile):
            return False
        return {"X", "Y"} <= names
    if suffix == ".pck":
        try:
            with open(path, "rb") as handle:
                head = handle.read(4)
        except OSError:
            return False
        return head[:1] == _PICKLE_PROTOCOL_2_PLUS or head == _ZIP_MAGIC
    return False


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return :func:`read_lab_file` for lab ``.npz``/``.pck`` files, else None.

    Parameters
    ----------
    path : str or list of str
        Path(s) napari wants to open.

    Returns
    -------
    callable or None
        None for anything that is not such a file, so that napari tries other readers.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_looks_readable(os.fspath(p)) for p in paths):
        return None
    return read_lab_file


def _read_items(path: str) -> list[Any]:

    return read_npz(path) if path.lower().endswith(".npz") else read_lab_pickle(path)


def read_lab_file(path: PathOrPaths) -> list[LayerData] | None:
    """Read lab files into an image stack and a labels stack per file.

    Parameters
    ----------
    path : str or list of str

    Returns
    -------
    list of (data, metadata, layer type) or None
        ``(images, {...}, "image")`` and ``(labels, {...}, "labels")`` per file; None when a
        file is not in the expected layout, so that napari tries other readers.

    Raises
    ------
    napari_unet_nuclei.io.safe_pickle.UnsafeFileError
        For a pickle that names code it could run: it is refused, nothing in it runs.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for one in paths:
        one = os.fspath(one)
        try:
            items = _read_items(one)
        except UnsafeFileError as error:
            raise UnsafeFileError(
                f"napari-unet-nuclei refused to open {Path(one).name}: {error}"
            ) from error
        except (DataError, OSError, ValueError):
            return None
        if not items or len({item.image.shape for item in items}) != 1:
            return None
        stem = Path(one).stem
        images = np.stack([item.image for item in items])
        labels = np.stack([item.labels for item in items]).astype(np.int32, copy=False)
        names = [item.name for item in items]
        layers.append((images, {"name": stem, "metadata": {"frame_names": names}}, "image"))
        layers.append(
            (labels, {"name": f"{stem} labels", "metadata": {"frame_names": names}}, "labels")
        )
    return layers
