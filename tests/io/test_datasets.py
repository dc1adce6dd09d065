"""Dataset readers on the real Kromp 2020 data and the lab's 128x128 files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.io.datasets import load_dataset, parse_split, read_folder, select_by_names
from napari_unet_nuclei.io.image_files import read_image_file, to_grey
from napari_unet_nuclei.io.lab_files import read_lab_pickle, read_npz, stack_to_items
from napari_unet_nuclei.io.labelled import DataError, LabelledImage
from napari_unet_nuclei.io.safe_pickle import UnsafeFileError
from napari_unet_nuclei.nn.normalization import ImageWarning


def _smallest(kromp_root: Path, count: int = 3) -> list[str]:
    sizes = sorted((p.stat().st_size, p.stem) for p in (kromp_root / "images").glob("*.tif"))
    return [stem for _size, stem in sizes[:count]]


@pytest.fixture
def small_folder(tmp_path: Path, kromp_root: Path) -> tuple[Path, list[str]]:
    """A dataset folder with copies of three real Kromp images and masks."""
    names = _smallest(kromp_root)
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in names:
            shutil.copy(kromp_root / sub / f"{name}.tif", tmp_path / sub / f"{name}.tif")
    return tmp_path, names


def test_read_folder_real_images(small_folder, kromp_root: Path) -> None:
    folder, names = small_folder
    items = read_folder(folder)
    assert [item.name for item in items] == sorted(names)
    for item in items:
        original = tifffile.imread(kromp_root / "masks" / f"{item.name}.tif")
        assert item.image.ndim == 2
        assert item.image.dtype == np.uint8
        assert item.labels.dtype == np.uint16
        np.testing.assert_array_equal(item.labels, original)  # instance ids kept
        assert len(np.unique(item.labels)) > 2  # real instance labels, not a binary mask
        assert item.mask.dtype == bool
        assert 0.02 < item.mask.mean() < 0.7
    assert load_dataset(folder)[0].name == items[0].name


def test_read_folder_png_image_with_tif_mask(small_folder) -> None:
    folder, names = small_folder
    name = sorted(names)[0]
    tif = folder / "images" / f"{name}.tif"
    image = tifffile.imread(tif)
    iio.imwrite(folder / "images" / f"{name}.png", image)
    tif.unlink()
    items = read_folder(folder)
    assert [item.name for item in items] == sorted(names)
    np.testing.assert_array_equal(items[0].image, image)


def test_read_folder_rgb_png_becomes_grey(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    grey = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    iio.imwrite(tmp_path / "images" / "a.png", np.stack([grey] * 3, axis=-1))
    tifffile.imwrite(tmp_path / "masks" / "a.tif", (grey > 100).astype(np.uint16) * 7)
    (item,) = read_folder(tmp_path)
    np.testing.assert_array_equal(item.image, grey)
    assert set(np.unique(item.labels)) == {0, 7}


def test_read_folder_shape_mismatch(small_folder) -> None:
    folder, names = small_folder
    name = sorted(names)[1]
    mask = tifffile.imread(folder / "masks" / f"{name}.tif")
    tifffile.imwrite(folder / "masks" / f"{name}.tif", mask[:-5])
    with pytest.raises(DataError) as info:
        read_folder(folder)
    message = str(info.value)
    assert name in message
    assert str(mask.shape) in message
    assert str(mask[:-5].shape) in message


def test_read_folder_missing_mask_and_subfolder(small_folder, tmp_path: Path) -> None:
    folder, names = small_folder
    name = sorted(names)[2]
    (folder / "masks" / f"{name}.tif").unlink()
    with pytest.raises(DataError, match=f"{name}.*no mask"):
        read_folder(folder)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="masks/"):
        read_folder(empty)


def test_read_image_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(DataError, match="Cannot read"):
        read_image_file(bad)
    with pytest.raises(DataError, match="unsupported"):
        read_image_file(tmp_path / "x.bmp")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"\(5, 8, 8\)"):
        read_image_file(stack)


def test_npz_round_trip(lab_npz: Path, lab_arrays) -> None:
    X, Y, names = lab_arrays
    items = read_npz(lab_npz)
    assert len(items) == 79
    assert [item.name for item in items] == [str(n) for n in names]
    assert items[5].image.shape == (128, 128)
    assert items[5].image.dtype == np.float32
    np.testing.assert_array_equal(items[5].image, X[5, 0])
    assert items[5].labels.dtype == np.uint8  # float {0, 1} mask -> integers
    np.testing.assert_array_equal(items[5].mask, Y[5, 0] > 0)
    assert [item.name for item in load_dataset(lab_npz)] == [item.name for item in items]


def test_npz_without_names_and_other_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "plain.npz"
    np.savez(path, X=rng.random((4, 16, 16)), Y=rng.random((4, 16, 16)) > 0.5)
    items = read_npz(path)
    assert [item.name for item in items] == ["image_000", "image_001", "image_002", "image_003"]
    single = tmp_path / "single.npz"
    np.savez(single, X=rng.random((16, 16)), Y=np.zeros((16, 16)))
    assert len(read_npz(single)) == 1
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"X.*images"):
        read_npz(wrong)


def test_object_array_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    X = np.empty(2, dtype=object)
    X[0], X[1] = np.zeros((4, 4)), np.zeros((5, 5))
    np.savez(path, X=X, Y=X)
    with pytest.raises(DataError, match="pickle"):
        read_npz(path)


def test_read_lab_pickle_matches_npz(lab_pickle: Path, lab_arrays) -> None:
    X, Y, _names = lab_arrays
    items = read_lab_pickle(lab_pickle)
    assert len(items) == 79
    assert items[0].name == "image_000" and items[78].name == "image_078"
    np.testing.assert_array_equal(items[42].image, X[42, 0])
    np.testing.assert_array_equal(items[42].mask, Y[42, 0] > 0)
    assert len(load_dataset(lab_pickle)) == 79


def test_lab_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pck"
    path.write_bytes(pickle.dumps(print))
    with pytest.raises(UnsafeFileError, match=r"builtins\.print"):
        load_dataset(path)


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope.npz")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError, match=r"images/.*\.npz.*\.pck"):
        load_dataset(other)


def test_parse_split_real_file(kromp_root: Path, splits: dict) -> None:
    train, test = parse_split(f"{kromp_root / 'splits.json'}:lab_70_9")
    assert (len(train), len(test)) == (70, 9)
    assert train == splits["lab_70_9"]["train"]
    train, test = parse_split(f"{kromp_root / 'splits.json'}:paper_42_37")
    assert (len(train), len(test)) == (42, 37)
    assert not set(train) & set(test)


def test_parse_split_errors(kromp_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lab_70_9.*paper_42_37"):
        parse_split(f"{kromp_root / 'splits.json'}:nope")
    with pytest.raises(DataError, match="FILE:KEY"):
        parse_split(str(kromp_root / "splits.json"))
    with pytest.raises(DataError, match="not found"):
        parse_split(f"{tmp_path / 'missing.json'}:lab_70_9")
    bad = tmp_path / "bad.json"
    bad.write_text('{"s": {"train": ["a"]}}')
    with pytest.raises(DataError, match="'test' list"):
        parse_split(f"{bad}:s")
    # A colon inside the path is fine: the key follows the last colon.
    odd = tmp_path / "a:b.json"
    odd.write_text('{"k": {"train": ["x"], "test": ["y"]}}')
    assert parse_split(f"{odd}:k") == (["x"], ["y"])


def test_select_by_names_with_real_split(lab_npz: Path, splits: dict) -> None:
    items = read_npz(lab_npz)
    test_names = splits["paper_42_37"]["test"]
    chosen = select_by_names(items, test_names)
    assert [item.name for item in chosen] == test_names
    reversed_names = list(reversed(test_names[:3]))
    assert [i.name for i in select_by_names(items, reversed_names)] == reversed_names
    with pytest.raises(DataError, match=r"2 of 3.*missing_a, missing_b"):
        select_by_names(items, [test_names[0], "missing_a", "missing_b"])
    pickle_like = stack_to_items(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="npz"):
        select_by_names(pickle_like, test_names[:1])


def test_stack_to_items_shapes() -> None:
    images = np.random.default_rng(1).random((3, 1, 8, 9)).astype(np.float32)
    labels = np.zeros((3, 8, 9), np.int32)
    labels[1, 2:4, 2:4] = 5
    items = stack_to_items(images, labels, names=["a", "b", "c"])
    assert [i.name for i in items] == ["a", "b", "c"]
    assert items[1].labels.max() == 5 and items[1].mask.sum() == 4
    with pytest.raises(DataError, match="names for 3"):
        stack_to_items(images, labels, names=["a"])
    with pytest.raises(DataError, match="labels"):
        stack_to_items(images, labels[:, :4])


def test_labelled_image_label_conversion() -> None:
    image = np.zeros((4, 4), np.uint16)
    soft = np.zeros((4, 4), np.float32)
    soft[0, 0] = 0.3
    item = LabelledImage("soft", image, soft)
    assert item.labels.dtype == np.uint8 and item.mask[0, 0] and item.mask.sum() == 1
    ids = np.zeros((4, 4))
    ids[1, 1] = 300.0
    assert LabelledImage("ids", image, ids).labels[1, 1] == 300
    assert LabelledImage("bool", image, ids > 0).labels.dtype == np.uint8
    with pytest.raises(DataError, match="negative"):
        LabelledImage("neg", image, -np.ones((4, 4), np.int32))
    with pytest.raises(DataError, match="2-D"):
        LabelledImage("3d", np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_to_grey() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    with pytest.warns(ImageWarning, match="channel was used"):
        grey = to_grey(rgb)
    assert grey.dtype == np.uint8 and grey.shape == (6, 7)
    assert any(np.array_equal(grey, rgb[..., k]) for k in range(3))  # one channel, as it is
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 7, np.uint8)], axis=-1)
    with pytest.warns(ImageWarning):
        np.testing.assert_array_equal(to_grey(rgba), grey)  # alpha ignored
    same = np.repeat(rng.integers(0, 4000, (5, 5, 1), dtype=np.uint16), 3, axis=-1)
    out = to_grey(same)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, same[..., 0])
    plain = rng.random((5, 5))
    assert to_grey(plain) is plain
    for shape in ((3, 5, 5), (5, 5, 2), (2, 5, 5, 3)):
        with pytest.raises(DataError, match=r"\(H, W, 3\)"):
            to_grey(np.zeros(shape), name="thing")
