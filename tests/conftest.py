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


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> None:
    """Exported ONNX graphs go to a folder of this test session, not the user's cache
    (subprocesses inherit it)."""
    from napari_unet_nuclei.nn.acceleration import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))


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


@pytest.fixture(scope="session")
def lab_split(lab_arrays, splits) -> tuple[list, list, list, list]:
    """``lab_70_9`` of the 128x128 data as lists of 2-D frames: (x_train, y_train,
    x_test, y_test)."""
    x, y, names = lab_arrays
    index = {str(n): i for i, n in enumerate(names)}
    split = splits["lab_70_9"]
    train = [index[n] for n in split["train"]]
    test = [index[n] for n in split["test"]]
    return (
        [x[i, 0] for i in train],
        [y[i, 0] for i in train],
        [x[i, 0] for i in test],
        [y[i, 0] for i in test],
    )


@pytest.fixture(scope="session")
def kromp_tiny_model(kromp_root):
    """A tiny U-Net (F=4, depth 2) trained for 40 steps on 256 x 256 crops of four real
    Kromp images, on one torch thread (the same weights on every machine)."""
    import tifffile
    import torch

    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    names = ("Ganglioneuroblastoma_0", "normal_16", "Neuroblastoma_10", "otherspecimen_9")
    crop = (slice(256, 512), slice(256, 512))
    images = [tifffile.imread(kromp_root / "images" / f"{n}.tif")[crop] for n in names]
    labels = [tifffile.imread(kromp_root / "masks" / f"{n}.tif")[crop] for n in names]
    config = TrainingConfig(
        features=4,
        depth=2,
        epochs=1,
        steps_per_epoch=40,
        batch_size=4,
        patch_size=128,
        learning_rate=1e-2,
        validation_fraction=0.0,
        device="cpu",
        seed=0,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_model(images, labels, config)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: faster on a shared 2-core machine, and the same
    numbers everywhere."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ shared helpers
def wait_done(qtbot, widget, timeout: int = 120_000) -> None:
    """Wait until a dock's background job has finished (its ``running`` is False).

    Imported by the widget tests: ``from conftest import wait_done``.
    """
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def drain(generator) -> tuple[list, object]:
    """Run an engine generator to the end: its yielded events and its return value.

    Imported by the engine tests: ``from conftest import drain``.
    """
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


@pytest.fixture(scope="module")
def untrained_model():
    """An untrained U-Net (F=4, depth 2, seed 0) named "tiny": shapes, errors, plumbing."""
    import torch

    from napari_unet_nuclei.nn.model import create_model

    torch.manual_seed(0)
    return create_model(features=4, depth=2, name="tiny")


@pytest.fixture(scope="module")
def lab_tiny_model(lab_arrays):
    """A tiny U-Net (F=4, depth 2) trained for a few steps on 6 lab images, named "tiny"."""
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    x, y, _ = lab_arrays
    config = TrainingConfig(
        features=4,
        depth=2,
        epochs=1,
        steps_per_epoch=4,
        batch_size=4,
        patch_size=64,
        device="cpu",
        name="tiny",
    )
    return train_model(list(x[:6, 0]), list(y[:6, 0]), config)
