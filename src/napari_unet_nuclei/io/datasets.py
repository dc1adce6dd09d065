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

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_unet_nuclei.io._file_checks import (
    one_line,
    read_json,
)
from napari_unet_nuclei.io.image_files import IMAGE_SUFFIXES, read_image_file, read_mask_file
from napari_unet_nuclei.io.lab_files import PICKLE_SUFFIXES, read_lab_pickle, read_npz
from napari_unet_nuclei.io.labelled import DataError, LabelledImage

__all__ = [
    "load_dataset",
    "parse_split",
    "read_folder",
    "read_pairs",
    "select_by_names",
    "select_labelled",
]


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
        labels = read_mask_file(masks[stem])
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
