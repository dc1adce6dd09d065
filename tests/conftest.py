"""Shared fixtures: the real nuclei data in ../shared/data (read-only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

DATA_ROOT = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()
KROMP_ROOT = DATA_ROOT / "kromp2020"


@pytest.fixture(scope="session")
def kromp_root() -> Path:
    """Folder of the Kromp 2020 dataset (images/, masks/, splits.json, nuclei_128.npz)."""
    if not (KROMP_ROOT / "images").is_dir():
        pytest.fail(f"The shared nuclei data is missing: expected {KROMP_ROOT}")
    return KROMP_ROOT


@pytest.fixture(scope="session")
def lab_npz(kromp_root: Path) -> Path:
    """The lab's 128x128 dataset as .npz."""
    return kromp_root / "nuclei_128.npz"


@pytest.fixture(scope="session")
def lab_pickle(kromp_root: Path) -> Path:
    """The lab's 128x128 dataset in its own pickle format."""
    return kromp_root / "nuclei_cells_segmentations.pck"


@pytest.fixture(scope="session")
def splits(kromp_root: Path) -> dict:
    """The fixed splits by image name."""
    return json.loads((kromp_root / "splits.json").read_text())


@pytest.fixture(scope="session")
def lab_arrays(lab_npz: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, names) of the lab's 128x128 dataset."""
    with np.load(lab_npz, allow_pickle=False) as data:
        return data["X"], data["Y"], data["names"]
