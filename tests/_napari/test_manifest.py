"""The napari manifest: validation, widgets through the plugin machinery, reader, samples."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-unet-nuclei"
WIDGETS = ("Train", "Segment", "Evaluate", "Annotate next")


def test_manifest_is_valid_and_complete() -> None:
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert manifest.name == PLUGIN
    assert manifest.display_name == "U-Net Nuclei"
    contributions = manifest.contributions
    assert sorted(w.display_name for w in contributions.widgets) == sorted(WIDGETS)
    assert {p for r in contributions.readers for p in r.filename_patterns} == {"*.pck", "*.npz"}
    assert {s.key for s in contributions.sample_data} == {"synthetic_nuclei", "kromp2020"}


def test_manifest_symlink_is_kept() -> None:
    link = Path(__file__).resolve().parents[2] / "src" / "napari_unet_nuclei" / "napari.yaml"
    assert link.is_symlink()
    assert link.resolve() == (Path(__file__).resolve().parents[2] / "napari.yaml")


@pytest.mark.gui
@pytest.mark.parametrize("name", WIDGETS)
def test_widget_is_added_through_the_manifest(make_napari_viewer, name: str) -> None:
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert dock is not None
    assert type(widget).__name__ == f"{name.title().replace(' ', '')}Widget"


@pytest.mark.parametrize("fixture", ["lab_pickle", "lab_npz"])
def test_reader_opens_image_and_labels_stacks(request, fixture: str) -> None:
    from napari_unet_nuclei._napari.reader import get_reader

    path = str(request.getfixturevalue(fixture))
    reader = get_reader(path)
    assert callable(reader)
    (images, image_meta, image_kind), (labels, labels_meta, labels_kind) = reader(path)
    assert (image_kind, labels_kind) == ("image", "labels")
    assert images.shape == labels.shape == (79, 128, 128)
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= {0, 1}
    assert labels_meta["name"] == f"{image_meta['name']} labels"


def test_reader_matches_the_npz(lab_npz, lab_pickle, lab_arrays) -> None:
    from napari_unet_nuclei._napari.reader import read_lab_file

    x, y, _ = lab_arrays
    for path in (lab_npz, lab_pickle):
        (images, _, _), (labels, _, _) = read_lab_file(str(path))
        np.testing.assert_array_equal(images, x[:, 0])
        np.testing.assert_array_equal(labels, y[:, 0].astype(np.int32))


def test_reader_declines_other_files(tmp_path: Path) -> None:
    from napari_unet_nuclei._napari.reader import get_reader, read_lab_file

    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    assert get_reader(str(other)) is None
    text = tmp_path / "notes.pck"
    text.write_text("not a pickle")
    assert get_reader(str(text)) is None
    assert get_reader(str(tmp_path / "missing.npz")) is None
    assert get_reader(str(tmp_path / "image.tif")) is None
    wrong = tmp_path / "wrong.pck"
    wrong.write_bytes(pickle.dumps({"x": 1}, protocol=4))
    assert read_lab_file(str(wrong)) is None


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_reader_refuses_an_unsafe_pickle_with_a_clear_error(tmp_path: Path) -> None:
    from napari_unet_nuclei._napari.reader import get_reader
    from napari_unet_nuclei.io.safe_pickle import UnsafeFileError

    path = tmp_path / "evil.pck"
    path.write_bytes(pickle.dumps((_RunsCode(), np.zeros((2, 4, 4))), protocol=4))
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(UnsafeFileError, match=r"refused to open evil\.pck"):
        reader(str(path))


@pytest.mark.gui
def test_viewer_opens_the_lab_file(make_napari_viewer, lab_npz) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(lab_npz), plugin=PLUGIN)
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    assert all(layer.data.shape == (79, 128, 128) for layer in viewer.layers)


def test_synthetic_sample_gives_image_and_labels() -> None:
    from napari_unet_nuclei._napari.samples import synthetic_nuclei

    (image, _, image_kind), (labels, _, labels_kind) = synthetic_nuclei()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (512, 512)
    assert labels.max() > 10


def test_kromp_sample_gives_image_and_labels(kromp_root, monkeypatch) -> None:
    from napari_unet_nuclei._napari.samples import KROMP_ENV, kromp_nuclei

    monkeypatch.setenv(KROMP_ENV, str(kromp_root))
    (image, meta, image_kind), (labels, _, labels_kind) = kromp_nuclei()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.ndim == 3 and image.shape == labels.shape
    assert image.shape[0] == len(meta["metadata"]["frame_names"]) == 4
    assert (labels > 0).any()


def test_kromp_sample_is_found_from_any_folder(kromp_root, tmp_path, monkeypatch) -> None:
    """The data folder the tests use, not the folder napari was started from."""
    from napari_unet_nuclei._napari import samples as samples

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(samples.KROMP_ENV, raising=False)
    monkeypatch.setenv(samples.DATA_ENV, str(kromp_root.parent))
    assert samples.find_kromp_root() == kromp_root
    monkeypatch.delenv(samples.DATA_ENV)  # the shared folder beside this checkout
    assert samples.find_kromp_root().resolve() == kromp_root.resolve()


def test_kromp_sample_in_the_user_data_folder_in_the_archive_layout(
    kromp_root, tmp_path, monkeypatch
) -> None:
    """Where fetch_kromp() unpacks the BioStudies archive: rawimages/ and groundtruth/."""
    from napari_unet_nuclei._napari import samples as samples
    from napari_unet_nuclei.data import sample_data

    archive = tmp_path / "cache" / "kromp2020" / "dataset"
    (archive / "rawimages").mkdir(parents=True)
    (archive / "groundtruth").mkdir()
    for name in ("normal_16", "normal_17"):
        for sub, target in (("images", "rawimages"), ("masks", "groundtruth")):
            (archive / target / f"{name}.tif").write_bytes(
                (kromp_root / sub / f"{name}.tif").read_bytes()
            )
    monkeypatch.delenv(samples.KROMP_ENV, raising=False)
    monkeypatch.setenv(samples.DATA_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(sample_data, "user_cache_folder", lambda: tmp_path / "cache")
    (image, meta, _), (labels, _, _) = samples.kromp_nuclei()
    assert meta["metadata"]["source"] == str(tmp_path / "cache" / "kromp2020")
    assert image.shape == labels.shape and image.shape[0] >= 1


def test_kromp_sample_says_where_it_looked_and_how_to_get_the_data(tmp_path, monkeypatch) -> None:
    from napari_unet_nuclei._napari import samples as samples
    from napari_unet_nuclei.data import sample_data

    monkeypatch.setenv(samples.KROMP_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv(samples.DATA_ENV, str(tmp_path / "no data"))
    monkeypatch.setattr(sample_data, "user_cache_folder", lambda: tmp_path / "no cache")
    with pytest.raises(FileNotFoundError) as caught:
        samples.kromp_nuclei()
    message = str(caught.value)
    assert str(tmp_path / "nowhere") in message and str(tmp_path / "no cache") in message
    assert "fetch_kromp()" in message and samples.KROMP_ENV in message
    assert "synthetic sample" in message


@pytest.mark.gui
def test_samples_open_through_the_manifest(make_napari_viewer, kromp_root, monkeypatch) -> None:
    from napari_unet_nuclei._napari.samples import KROMP_ENV

    monkeypatch.setenv(KROMP_ENV, str(kromp_root))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_nuclei")
    viewer.open_sample(PLUGIN, "kromp2020")
    kinds = [type(layer).__name__ for layer in viewer.layers]
    assert kinds.count("Image") == 2 and kinds.count("Labels") == 2
