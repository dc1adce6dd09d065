"""napari sample data: synthetic nuclei, and Kromp 2020 images when present locally.

Each sample opens an image and its ground-truth labels, so the Train and Evaluate widgets
can be tried at once.

napari calls a sample on the GUI thread and adds its layers at once. Each sample therefore
makes its arrays in a background thread, together with the warm-up of napari's first layers
(:func:`~._warmup.warm_up_layer_display`), while the window keeps answering
(:func:`~._live_call.call_with_live_window`). The synthetic generator (and scipy.ndimage,
0.4 s to import) is imported in that thread too, not when napari loads this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei._napari._live_call import call_with_live_window
from napari_unet_nuclei._napari._warmup import warm_up_layer_display
from napari_unet_nuclei.data.public_data import data_root

__all__ = [
    "DATA_ENV",
    "KROMP_ENV",
    "find_kromp_root",
    "kromp_candidates",
    "kromp_nuclei",
    "synthetic_nuclei",
]

#: Environment variable naming the folder of the Kromp 2020 dataset itself.
KROMP_ENV = "NAPARI_UNET_NUCLEI_KROMP"
#: Environment variable naming the data folder holding ``kromp2020/`` (as in the tests).
DATA_ENV = "NAPARI_UNET_NUCLEI_DATA"
#: Number of same-sized Kromp images stacked by the sample.
KROMP_SAMPLE_SIZE = 4

LayerData = tuple[Any, dict[str, Any], str]


def synthetic_nuclei() -> list[LayerData]:
    """A 512 x 512 synthetic fluorescence image of nuclei and its instance labels."""
    return call_with_live_window(_make_synthetic_sample, "napari-unet-nuclei-sample")


def _make_synthetic_sample() -> list[LayerData]:
    # Imported here, off the GUI thread (see the module's docstring).
    from napari_unet_nuclei.data.sample_data import make_synthetic_nuclei

    image, labels = make_synthetic_nuclei((512, 512), seed=0)
    warm_up_layer_display()
    return [
        (image, {"name": "synthetic nuclei"}, "image"),
        (labels, {"name": "synthetic nuclei labels"}, "labels"),
    ]


def kromp_candidates() -> list[tuple[str, Path]]:
    """Where the Kromp 2020 dataset is looked for, in order, each with where it comes from.

    1. ``$NAPARI_UNET_NUCLEI_KROMP`` (the dataset folder itself);
    2. ``$NAPARI_UNET_NUCLEI_DATA/kromp2020`` (the data folder the tests and benchmarks use);
    3. ``kromp2020`` in the project's shared data folder (``../shared/data`` beside a source
       checkout);
    4. the user data folder where :func:`~napari_unet_nuclei.data.sample_data.fetch_kromp` unpacks
       the download.
    The folder the viewer was started from plays no part.
    """
    from napari_unet_nuclei.data import sample_data

    found: list[tuple[str, Path]] = []
    if os.environ.get(KROMP_ENV):
        found.append((KROMP_ENV, Path(os.environ[KROMP_ENV]).expanduser()))
    if os.environ.get(DATA_ENV):
        found.append((DATA_ENV, Path(os.environ[DATA_ENV]).expanduser() / "kromp2020"))
    else:
        found.append(("the shared data folder", data_root() / "kromp2020"))
    found.append(
        ("the user data folder", sample_data.user_cache_folder() / sample_data.KROMP_FOLDER)
    )
    return found


def find_kromp_root() -> Path:
    """Folder of the local Kromp 2020 copy (the first of :func:`kromp_candidates` holding it).

    Returns
    -------
    pathlib.Path
        A folder with ``images/`` + ``masks/`` (or the archive's ``rawimages/`` +
        ``groundtruth/``), possibly one folder down.

    Raises
    ------
    FileNotFoundError
        With a sentence naming the folders looked in and how to get the data.
    """
    from napari_unet_nuclei.data.sample_data import kromp_folders

    candidates = kromp_candidates()
    for _, root in candidates:
        if root.is_dir() and kromp_folders(root) is not None:
            return root
    looked = "; ".join(f"{root} ({origin})" for origin, root in candidates)
    raise FileNotFoundError(
        f"The Kromp 2020 dataset was not found (looked in: {looked}). Download it once with "
        '`python -c "from napari_unet_nuclei.data.sample_data import fetch_kromp; fetch_kromp()"` '
        f"(about 1 GB, checked by SHA-256), or set {KROMP_ENV} to a folder holding its "
        "images/ and masks/. The synthetic sample needs no download."
    )


def kromp_nuclei() -> list[LayerData]:
    """A stack of Kromp 2020 images of the same size with their instance labels."""
    return call_with_live_window(_read_kromp_sample, "napari-unet-nuclei-sample")


def _read_kromp_sample() -> list[LayerData]:
    from napari_unet_nuclei.data.sample_data import kromp_folders, load_kromp

    root = find_kromp_root()
    image_folder, _ = kromp_folders(root)
    names = sorted(path.stem for path in image_folder.glob("*.tif"))
    items: list[Any] = []
    for name in names:
        item = load_kromp(root, names=[name])[0]
        if not items or item.image.shape == items[0].image.shape:
            items.append(item)
        if len(items) == KROMP_SAMPLE_SIZE:
            break
    if not items:
        raise FileNotFoundError(f"No .tif images in {image_folder}.")
    meta = {"frame_names": [item.name for item in items], "source": str(root)}
    warm_up_layer_display()
    return [
        (np.stack([i.image for i in items]), {"name": "Kromp 2020", "metadata": meta}, "image"),
        (
            np.stack([i.labels for i in items]).astype(np.int32),
            {"name": "Kromp 2020 labels", "metadata": meta},
            "labels",
        ),
    ]
