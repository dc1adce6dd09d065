"""napari sample data: synthetic nuclei, and Kromp 2020 images when present locally.

Each sample opens an image and its ground-truth labels, so the Train and Evaluate widgets
can be tried at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KROMP_ENV", "find_kromp_root", "kromp_nuclei", "synthetic_nuclei"]

#: Environment variable naming the folder of the Kromp 2020 dataset.
KROMP_ENV = "NAPARI_UNET_NUCLEI_KROMP"
#: Where the dataset is looked for when the variable is not set (relative to the cwd).
KROMP_DEFAULT = Path("..") / "shared" / "data" / "kromp2020"
#: Number of same-sized Kromp images stacked by the sample.
KROMP_SAMPLE_SIZE = 4

LayerData = tuple[Any, dict[str, Any], str]


def synthetic_nuclei() -> list[LayerData]:
    """A 512 x 512 synthetic fluorescence image of nuclei and its instance labels."""
    from .sample_data import make_synthetic_nuclei

    image, labels = make_synthetic_nuclei((512, 512), seed=0)
    return [
        (image, {"name": "synthetic nuclei"}, "image"),
        (labels, {"name": "synthetic nuclei labels"}, "labels"),
    ]


def find_kromp_root() -> Path:
    """Folder of the local Kromp 2020 copy.

    Returns
    -------
    pathlib.Path
        ``$NAPARI_UNET_NUCLEI_KROMP`` when set, else ``../shared/data/kromp2020``.

    Raises
    ------
    FileNotFoundError
        With a sentence saying where to put the dataset.
    """
    configured = os.environ.get(KROMP_ENV)
    root = Path(configured).expanduser() if configured else (Path.cwd() / KROMP_DEFAULT).resolve()
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise FileNotFoundError(
            f"The Kromp 2020 dataset was not found in {root}: download it (BioStudies "
            "S-BSST265), put its images/ and masks/ folders there or set the environment "
            f"variable {KROMP_ENV} to the folder that holds them."
        )
    return root


def kromp_nuclei() -> list[LayerData]:
    """A stack of Kromp 2020 images of the same size with their instance labels."""
    from .sample_data import load_kromp

    root = find_kromp_root()
    names = sorted(path.stem for path in (root / "images").glob("*.tif"))
    items: list[Any] = []
    for name in names:
        item = load_kromp(root, names=[name])[0]
        if not items or item.image.shape == items[0].image.shape:
            items.append(item)
        if len(items) == KROMP_SAMPLE_SIZE:
            break
    if not items:
        raise FileNotFoundError(f"No .tif images in {root / 'images'}.")
    meta = {"frame_names": [item.name for item in items], "source": str(root)}
    return [
        (np.stack([i.image for i in items]), {"name": "Kromp 2020", "metadata": meta}, "image"),
        (
            np.stack([i.labels for i in items]).astype(np.int32),
            {"name": "Kromp 2020 labels", "metadata": meta},
            "labels",
        ),
    ]
