"""The built-in generalist model: loads by name offline, is checked by SHA-256, segments real
nuclei as objects above a fixed floor, and is the command line's default model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.evaluate.object_metrics import object_scores
from napari_unet_nuclei.io import builtin_models
from napari_unet_nuclei.io.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL, builtin_model_path
from napari_unet_nuclei.io.model_io import ModelFileError, load_model
from napari_unet_nuclei.workflows.segmentation import predict_instances

# Mean object F1 at IoU 0.5 of the built-in model on the first images of each test part
# (benchmarks/generalist.py measures all of them), minus a margin of 0.05: a broken or
# swapped model fails here.
FLOORS = {"dsb2018_train": 0.80, "bbbc039": 0.80}
IMAGES_PER_PART = 6


@pytest.fixture(scope="module")
def builtin():
    return load_model(DEFAULT_MODEL)


def test_builtin_model_loads_by_name_and_ships_in_the_package(builtin) -> None:
    entry = BUILTIN_MODELS[DEFAULT_MODEL]
    path = builtin_model_path(DEFAULT_MODEL)
    assert path.parent.name == "models" and path.parent.parent.name == "napari_unet_nuclei"
    assert path.stat().st_size <= 10 * 1024 * 1024
    assert builtin.name == DEFAULT_MODEL
    assert builtin.object_maps == ("centre", "boundary")
    assert builtin.threshold == pytest.approx(entry.threshold)
    assert builtin.summary["instance_config"]["seeds"] in ("centre", "boundary", "distance")
    # The same file loaded by its path is checked as well.
    assert load_model(path).summary == builtin.summary


def test_a_changed_byte_is_refused_with_a_sentence(tmp_path, monkeypatch) -> None:
    entry = BUILTIN_MODELS[DEFAULT_MODEL]
    copy = tmp_path / entry.filename
    shutil.copy(builtin_model_path(DEFAULT_MODEL), copy)
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    monkeypatch.setattr(builtin_models, "MODELS_FOLDER", tmp_path)
    with pytest.raises(ModelFileError, match=r"damaged or was modified.*reinstall"):
        load_model(DEFAULT_MODEL)
    copy.unlink()
    with pytest.raises(ModelFileError, match="missing from this installation"):
        load_model(DEFAULT_MODEL)
    with pytest.raises(FileNotFoundError, match="built-in models: fluo-nuclei"):
        load_model("fluo-nuclei-typo")


@pytest.mark.parametrize(
    "collection, split", [("dsb2018_train", "fluo_90_10"), ("bbbc039", "split_100_50_50")]
)
def test_builtin_model_finds_real_nuclei_above_a_floor(
    builtin, kromp_root, one_torch_thread, collection, split
) -> None:
    from napari_unet_nuclei.data.public_data import DataPart, load_part

    items = load_part(DataPart(collection, split, ("test",)), kromp_root.parent, IMAGES_PER_PART)
    scores = []
    for item in items:
        labels = predict_instances(builtin, item.image)
        assert labels.dtype == np.int32 and labels.shape == item.image.shape
        scores.append(object_scores(labels, item.labels)["f1"])
    assert np.mean(scores) >= FLOORS[collection], scores


def test_segment_without_model_uses_the_builtin_model(kromp_root, tmp_path, capsys) -> None:
    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")[:256, :320]
    tifffile.imwrite(tmp_path / "crop.tif", image)
    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[25:31, :96, :96]
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    out = tmp_path / "out"
    code = main(
        ["segment", str(tmp_path / "crop.tif"), "--out", str(out), "--instances", "--measure"]
    )
    assert code == 0
    labels = tifffile.imread(out / "crop.tif")
    assert labels.shape == image.shape and labels.max() > 5
    assert (out / "crop_nuclei.csv").read_text().count("\n") == labels.max() + 1
    code = main(
        [
            "segment",
            str(tmp_path / "stack.tif"),
            "--out",
            str(out),
            "--instances",
            "--stack-axis",
            "z",
            "--measure",
        ]
    )
    assert code == 0
    volume = tifffile.imread(out / "stack.tif")
    per_frame = predict_instances(load_model(DEFAULT_MODEL), stack)
    assert volume.shape == stack.shape and 0 < volume.max() < per_frame.max()
    header = (out / "stack_nuclei.csv").read_text().splitlines()[0]
    assert "volume_voxels" in header and "centroid_z_px" in header and "z_slices" in header
    assert main(["segment", str(tmp_path / "crop.tif"), "--out", str(out), "--model", "nope"]) == 2
    assert "built-in models: fluo-nuclei" in capsys.readouterr().err
