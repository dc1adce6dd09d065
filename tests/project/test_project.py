"""The project folder: a training set on disk that survives the session."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.project.folder import (
    HELD_OUT,
    INDEX_NAME,
    TRAIN,
    ProjectError,
    TrainingProject,
    array_sha256,
    sample_sha256,
)


@pytest.fixture(scope="module")
def kromp_pairs(kromp_root, splits):
    """Three real Kromp images with their instance labels, cropped to 200 x 240."""
    names = splits["lab_70_9"]["test"][:3]
    pairs = []
    for name in names:
        image = tifffile.imread(kromp_root / "images" / f"{name}.tif")[:200, :240]
        labels = tifffile.imread(kromp_root / "masks" / f"{name}.tif")[:200, :240]
        pairs.append((name, image, labels))
    return pairs


def region(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_project_round_trips(tmp_path, kromp_pairs) -> None:
    folder = tmp_path / "project"
    project = TrainingProject.create(folder)
    (n1, im1, lab1), (n2, im2, lab2), (n3, im3, lab3) = kromp_pairs
    annotated = region(im1.shape, (20, 120), (30, 200))
    e1 = project.add(im1, lab1, n1, annotated=annotated)
    e2 = project.add(im2, lab2, n2)
    e3 = project.add(im3, lab3, n3, role=HELD_OUT)
    assert [e.role for e in (e1, e2, e3)] == [TRAIN, TRAIN, HELD_OUT]
    assert e1.annotated_pixels == 100 * 170 and e2.annotated_pixels == 200 * 240
    assert e1.has_annotated_map and not e2.has_annotated_map
    assert e1.sha256 == sample_sha256(im1, lab1, annotated)
    assert e1.image_sha256 == array_sha256(im1)
    for sub in ("images", "labels"):
        assert len(list((folder / sub).glob("*.tif"))) == 3
    assert len(list((folder / "annotated").glob("*.tif"))) == 1

    # A new instance (napari reopened) sees the same entries and the exact arrays.
    reopened = TrainingProject.open(folder)
    assert reopened.entries == project.entries
    assert reopened.names(TRAIN) == [n1, n2] and reopened.names(HELD_OUT) == [n3]
    sample = reopened.load(n1)
    assert sample.image.dtype == im1.dtype and sample.labels.dtype == lab1.dtype
    np.testing.assert_array_equal(sample.image, im1)
    np.testing.assert_array_equal(sample.labels, lab1)
    np.testing.assert_array_equal(sample.annotated, annotated)
    assert reopened.load(n2).annotated is None
    assert [s.entry.name for s in reopened.samples(HELD_OUT)] == [n3]
    assert reopened.held_out_image_hashes() == {array_sha256(im3)}

    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["format"] == "napari-unet-nuclei-project"
    first = index["entries"][0]
    assert first["name"] == n1 and first["shape"] == [200, 240]
    assert first["date_added"][:4].isdigit() and len(first["sha256"]) == 64
    assert "2 training image(s)" in reopened.describe()


def test_adding_again_dedupes_replaces_and_protects_held_out(tmp_path, kromp_pairs) -> None:
    project = TrainingProject.create(tmp_path / "p")
    (n1, im1, lab1), (n2, im2, lab2), _ = kromp_pairs
    first = project.add(im1, lab1, n1)
    assert project.add(im1, lab1, n1) == first and len(project) == 1

    corrected = lab1.copy()
    corrected[:50, :50] = 0
    replaced = project.add(im1, corrected, n1)
    assert len(project) == 1 and replaced.sha256 != first.sha256 and replaced.id == first.id
    np.testing.assert_array_equal(TrainingProject.open(project.folder).load(n1).labels, corrected)

    with pytest.raises(ProjectError, match="cannot be both trained on and held out"):
        project.add(im1, corrected, "same image, other name", role=HELD_OUT)
    project.add(im2, lab2, n2, role=HELD_OUT)
    with pytest.raises(ProjectError, match="frozen"):
        project.add(im2, np.zeros_like(lab2), n2, role=HELD_OUT)
    with pytest.raises(ProjectError, match="2-D"):
        project.add(np.stack([im1, im1]), np.stack([lab1, lab1]), "stack")
    with pytest.raises(ProjectError, match="shape"):
        project.add(im1, lab1[:10], "mismatch")
    with pytest.raises(ProjectError, match="empty"):
        project.add(im1, lab1, "nothing", annotated=np.zeros(im1.shape, bool))

    project.remove(n1)
    assert project.names() == [n2]
    assert not (project.folder / "images" / f"{first.id}.tif").exists()


def test_crop_to_annotated_stores_the_bounding_box(tmp_path, kromp_pairs) -> None:
    project = TrainingProject.create(tmp_path / "p")
    name, image, labels = kromp_pairs[0]
    annotated = region(image.shape, (40, 90), (10, 60)) | region(image.shape, (100, 130), (50, 80))
    entry = project.add(image, labels, name, annotated=annotated, crop_to_annotated=True)
    assert entry.shape == (90, 70)
    sample = project.load(name)
    np.testing.assert_array_equal(sample.image, image[40:130, 10:80])
    np.testing.assert_array_equal(sample.annotated, annotated[40:130, 10:80])
    assert entry.annotated_pixels == int(annotated.sum())


def test_foreign_corrupted_and_tampered_folders_give_clear_errors(tmp_path, kromp_pairs) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my data")
    with pytest.raises(ProjectError, match="not empty and is not a training project"):
        TrainingProject.create(foreign)
    with pytest.raises(ProjectError, match="is not a napari-unet-nuclei training project"):
        TrainingProject.open(foreign)
    with pytest.raises(ProjectError, match="not found"):
        TrainingProject.open(tmp_path / "missing")

    project = TrainingProject.create(tmp_path / "p")
    name, image, labels = kromp_pairs[0]
    entry = project.add(image, labels, name)
    with pytest.raises(ProjectError, match="already holds"):
        TrainingProject.create(project.folder)

    tifffile.imwrite(project.folder / "labels" / f"{entry.id}.tif", np.zeros_like(labels))
    with pytest.raises(ProjectError, match="do not match their recorded hash"):
        project.load(name)
    (project.folder / "labels" / f"{entry.id}.tif").unlink()
    with pytest.raises(ProjectError, match="missing"):
        project.load(name)

    index = project.folder / INDEX_NAME
    index.write_text(index.read_text()[:40])
    with pytest.raises(ProjectError, match="damaged"):
        TrainingProject.open(project.folder)
    index.write_text(json.dumps({"format": "something-else", "entries": []}))
    with pytest.raises(ProjectError, match="not a napari-unet-nuclei project index"):
        TrainingProject.open(project.folder)


def test_an_interrupted_index_write_keeps_the_old_index(
    tmp_path, kromp_pairs, monkeypatch
) -> None:
    from napari_unet_nuclei.project import folder as module

    project = TrainingProject.create(tmp_path / "p")
    (n1, im1, lab1), (n2, im2, lab2), _ = kromp_pairs
    project.add(im1, lab1, n1)
    before = (project.folder / INDEX_NAME).read_bytes()

    def broken_dump(data, stream, **kwargs):
        stream.write('{"format": "napari-unet')
        raise OSError("disk full")

    monkeypatch.setattr(module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        project.add(im2, lab2, n2)
    monkeypatch.undo()
    assert (project.folder / INDEX_NAME).read_bytes() == before
    assert TrainingProject.open(project.folder).names() == [n1] == project.names()
    assert not list(project.folder.glob(".*.tmp"))
