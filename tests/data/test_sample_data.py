"""Synthetic nuclei, the local Kromp reader and the verified (offline) download."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.filters import threshold_otsu

from napari_unet_nuclei.data.sample_data import (
    KROMP_HASH,
    KROMP_URL,
    fetch_kromp,
    load_kromp,
    make_synthetic_nuclei,
    synthetic_dataset,
)
from napari_unet_nuclei.io.labelled import DataError


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[touch], b[touch])}
    return pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_image_is_realistic(seed: int) -> None:
    image, labels = make_synthetic_nuclei((256, 256), seed=seed)
    assert image.dtype == np.uint16 and image.shape == (256, 256)
    assert labels.dtype == np.int32 and labels.shape == (256, 256)
    ids = np.unique(labels)
    assert ids[0] == 0
    assert 20 <= len(ids) - 1 <= 120
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))  # consecutive ids
    assert 0.05 < (labels > 0).mean() < 0.6
    assert len(_touching_pairs(labels)) >= 1
    # Nuclei are brighter than background, yet noise/blur/gradient make it non-trivial.
    dice = _dice(image > threshold_otsu(image), labels > 0)
    assert 0.7 < dice < 0.995
    # Shot noise: neighbouring background pixels differ.
    assert np.std(np.diff(image[labels == 0].astype(float))) > 1.0


def test_synthetic_is_deterministic_and_varies_with_seed() -> None:
    a_img, a_lab = make_synthetic_nuclei(seed=3)
    b_img, b_lab = make_synthetic_nuclei(seed=3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _c_lab = make_synthetic_nuclei(seed=4)
    assert not np.array_equal(a_img, c_img)


def test_synthetic_options() -> None:
    image, labels = make_synthetic_nuclei((64, 96), n_nuclei=3, seed=0)
    assert image.shape == (64, 96) and 1 <= labels.max() <= 3
    _image, empty = make_synthetic_nuclei((32, 32), n_nuclei=0)
    assert empty.max() == 0
    with pytest.raises(ValueError, match="16"):
        make_synthetic_nuclei((8, 8))


def test_synthetic_dataset() -> None:
    items = synthetic_dataset(n_images=3, shape=(64, 64), seed=5)
    assert [item.name for item in items] == ["synthetic_000", "synthetic_001", "synthetic_002"]
    assert not np.array_equal(items[0].image, items[1].image)
    again = synthetic_dataset(n_images=3, shape=(64, 64), seed=5)
    np.testing.assert_array_equal(items[2].labels, again[2].labels)


def test_load_kromp_real_names(kromp_root: Path, splits: dict) -> None:
    names = splits["lab_70_9"]["test"][:2]
    items = load_kromp(kromp_root, names=names)
    assert [item.name for item in items] == names
    for item in items:
        assert item.image.dtype == np.uint8 and item.image.ndim == 2
        assert item.labels.dtype == np.uint16
        expected = tifffile.imread(kromp_root / "masks" / f"{item.name}.tif")
        np.testing.assert_array_equal(item.labels, expected)
    with pytest.raises(DataError, match="not_a_name"):
        load_kromp(kromp_root, names=["not_a_name"])


def _archive(tmp_path: Path, kromp_root: Path, name: str) -> Path:
    """A small zip laid out like the BioStudies archive (rawimages/, groundtruth/)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(kromp_root / "images" / f"{name}.tif", f"rawimages/{name}.tif")
        archive.write(kromp_root / "masks" / f"{name}.tif", f"groundtruth/{name}.tif")
        archive.writestr("readme.txt", "test archive")
    path = tmp_path / "dataset.zip"
    path.write_bytes(buffer.getvalue())
    return path


def test_fetch_kromp_offline(tmp_path: Path, kromp_root: Path) -> None:
    name = "Ganglioneuroblastoma_9"  # the smallest image of the set
    archive = _archive(tmp_path, kromp_root, name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"

    folder = fetch_kromp(cache_dir=cache, url=archive.as_uri(), known_hash=digest)
    assert (folder / "rawimages" / f"{name}.tif").is_file()
    (item,) = load_kromp(folder)
    assert item.name == name
    np.testing.assert_array_equal(
        item.labels, tifffile.imread(kromp_root / "masks" / f"{name}.tif")
    )
    # A second call reuses the verified archive, even if the source has gone.
    archive.unlink()
    assert fetch_kromp(cache_dir=cache, url=archive.as_uri(), known_hash=digest) == folder


def test_fetch_kromp_refuses_wrong_or_missing_hash(tmp_path: Path, kromp_root: Path) -> None:
    archive = _archive(tmp_path, kromp_root, "Ganglioneuroblastoma_9")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match"):
        fetch_kromp(cache_dir=cache, url=archive.as_uri(), known_hash="0" * 64)
    assert not (cache / "kromp2020").exists()
    assert not list(cache.glob("*.zip"))  # the unverified file was discarded
    with pytest.raises(DataError, match="without a pinned SHA-256"):
        fetch_kromp(cache_dir=cache, url=archive.as_uri(), known_hash=None)


def test_kromp_constants() -> None:
    assert KROMP_URL.startswith("https://") and "S-BSST265" in KROMP_URL
    # Pinned: fetch_kromp refuses to download without it (tested above).
    assert isinstance(KROMP_HASH, str) and len(KROMP_HASH) == 64
    assert set(KROMP_HASH) <= set("0123456789abcdef")
