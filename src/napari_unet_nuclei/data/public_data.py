"""The public nuclei collections the built-in model is trained and scored on.

Three CC0 collections of fluorescence nuclei, each a folder with ``images/``, ``masks/``
(instance labels) and ``splits.json``:

- ``kromp2020``: Kromp et al. 2020, 79 tissue and cell images (split ``paper_42_37``);
- ``dsb2018_train``: Data Science Bowl 2018 stage 1 (split ``fluo_90_10``: fluorescence);
- ``bbbc039``: BBBC039 U2OS nuclei (split ``split_100_50_50``: train / val / test).

The data folder is ``$NAPARI_UNET_NUCLEI_DATA`` when set, else ``shared/data`` beside the
project checkout (where the tests and benchmarks find it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unet_nuclei.io.datasets import load_dataset, read_pairs, select_by_names
from napari_unet_nuclei.io.labelled import DataError, LabelledImage

__all__ = [
    "GENERALIST_TEST_PARTS",
    "GENERALIST_TRAINING_PARTS",
    "DataPart",
    "data_root",
    "load_part",
    "load_parts",
    "part_names",
    "replay_sample",
]

#: Images replayed beside a fine-tune's own (see :func:`replay_sample`).
REPLAY_IMAGES = 12


@dataclass(frozen=True)
class DataPart:
    """Named images of one collection: ``collection``'s ``split`` key, ``parts`` of it."""

    collection: str
    split: str
    parts: tuple[str, ...]

    @property
    def label(self) -> str:
        """Short name for tables, e.g. ``dsb2018_train fluo_90_10 test``."""
        return f"{self.collection} {self.split} {'+'.join(self.parts)}"


GENERALIST_TRAINING_PARTS = (
    DataPart("kromp2020", "paper_42_37", ("train",)),
    DataPart("dsb2018_train", "fluo_90_10", ("train",)),
    DataPart("bbbc039", "split_100_50_50", ("train", "val")),
)
GENERALIST_TEST_PARTS = (
    DataPart("kromp2020", "paper_42_37", ("test",)),
    DataPart("dsb2018_train", "fluo_90_10", ("test",)),
    DataPart("bbbc039", "split_100_50_50", ("test",)),
)


def data_root() -> Path:
    """The folder holding the collections (see the module docstring)."""
    configured = os.environ.get("NAPARI_UNET_NUCLEI_DATA")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def part_names(part: DataPart, root: str | os.PathLike | None = None) -> list[str]:
    """Image names of ``part``, read from the collection's ``splits.json``."""
    folder = Path(root or data_root()) / part.collection
    path = folder / "splits.json"
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        entry = splits[part.split]
        return [str(name) for p in part.parts for name in entry[p]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"Cannot read the {part.split!r} {'/'.join(part.parts)} names from {path} "
            f"({error}); check NAPARI_UNET_NUCLEI_DATA."
        ) from error


def load_part(
    part: DataPart, root: str | os.PathLike | None = None, limit: int | None = None
) -> list[LabelledImage]:
    """Load the images and instance labels of ``part``.

    Parameters
    ----------
    part : DataPart
        Which collection, split and parts.
    root : path-like, optional
        The data folder; :func:`data_root` when omitted.
    limit : int, optional
        Keep only the first ``limit`` images (in split order).

    Returns
    -------
    list of LabelledImage
    """
    names = part_names(part, root)
    if limit is not None:
        names = names[:limit]
    folder = Path(root or data_root()) / part.collection
    return select_by_names(load_dataset(folder), names)


def load_parts(
    parts: Sequence[DataPart], root: str | os.PathLike | None = None
) -> list[LabelledImage]:
    """Load several parts, one list (names prefixed with the collection)."""
    items = []
    for part in parts:
        for item in load_part(part, root):
            items.append(LabelledImage(f"{part.collection}/{item.name}", item.image, item.labels))
    return items


def replay_sample(
    n_images: int = REPLAY_IMAGES,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    exclude: Sequence[str] = (),
) -> list[LabelledImage]:
    """A seeded sample of the built-in model's training images, to replay in a fine-tune.

    The images are drawn in turn from each part of :data:`GENERALIST_TRAINING_PARTS`
    (so every collection the model learned from is represented) and read alone, not
    with their whole collection.

    Parameters
    ----------
    n_images : int
        How many images.
    seed : int
        Seed of the draw.
    root : path-like, optional
        The data folder; :func:`data_root` when omitted.
    exclude : sequence of str
        ``collection/name`` images never to draw (e.g. the images being fine-tuned on).

    Returns
    -------
    list of LabelledImage
        Named ``collection/name``.

    Raises
    ------
    DataError
        If the collections are not in the data folder, with the folder named.
    """
    folder = Path(root or data_root())
    rng = np.random.default_rng(seed)
    skip = set(exclude)
    queues = []
    for part in GENERALIST_TRAINING_PARTS:
        names = [n for n in part_names(part, folder) if f"{part.collection}/{n}" not in skip]
        queues.append((part.collection, list(rng.permutation(names))))
    drawn: dict[str, list[str]] = {collection: [] for collection, _ in queues}
    while sum(map(len, drawn.values())) < n_images and any(names for _, names in queues):
        for collection, names in queues:
            if names and sum(map(len, drawn.values())) < n_images:
                drawn[collection].append(str(names.pop()))
    items = []
    for collection, names in drawn.items():
        if names:
            base = folder / collection
            for item in read_pairs(base / "images", base / "masks", sorted(names)):
                items.append(LabelledImage(f"{collection}/{item.name}", item.image, item.labels))
    return items
