"""Bad input through the engine and the command line: each case ends in a clear sentence.

Every case of issue 6 "Bad input" that is not already proven elsewhere (see
``/tmp/notes/issue6_table.md`` for the table with the tests that cover each row).
"""

from __future__ import annotations

import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.io.datasets import select_labelled
from napari_unet_nuclei.io.image_files import to_grey
from napari_unet_nuclei.io.labelled import DataError, LabelledImage, check_training_labels
from napari_unet_nuclei.io.model_io import load_model, save_model
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.nn.normalization import ImageWarning
from napari_unet_nuclei.prediction.inference import iter_predict, predict
from napari_unet_nuclei.train.training import TrainingConfig, train, train_model

TINY = {
    "features": 4,
    "depth": 2,
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "patch_size": 32,
    "device": "cpu",
}
CLI_TINY = ["--features", "4", "--depth", "2", "--epochs", "1", "--batch-size", "2"]
CLI_TINY += ["--patch-size", "32", "--device", "cpu", "--no-augment"]


@pytest.fixture(scope="module")
def model(untrained_model):
    return untrained_model


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def real_image(lab_arrays) -> np.ndarray:
    """One real 128 x 128 nucleus image as uint8."""
    return (lab_arrays[0][5, 0] * 255).astype(np.uint8)


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Run the command in-process; return the exit status and the lines on stderr."""
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if "napari-unet-nuclei" in line]


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, X=images, Y=labels)
    return path


def messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ImageWarning)]


# ------------------------------------------------------------------------ colour images
def test_rgb_and_rgba_give_their_nuclear_channel_and_say_which(real_image) -> None:
    # Nuclei in blue, a dim copy in red, an inverted (cytoplasm-like) green: blue is used,
    # where luminance kept 11 % of it.
    blue, red, green = real_image, real_image // 3, 255 - real_image
    rgb = np.stack([red, green, blue], axis=-1)
    rgba = np.concatenate([rgb, np.full((*real_image.shape, 1), 255, np.uint8)], axis=-1)
    for colour, kind in ((rgb, "RGB"), (rgba, "RGBA")):
        with pytest.warns(ImageWarning, match=rf"colour \({kind}\) image: its blue channel"):
            grey = to_grey(colour, name="cells.png")
        assert grey.dtype == np.uint8
        np.testing.assert_array_equal(grey, blue)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # grey stored as RGB: used as is, nothing to say
        np.testing.assert_array_equal(to_grey(np.stack([red] * 3, -1)), red)


def test_rgb_array_given_to_the_network_is_refused(model, real_image) -> None:
    with pytest.raises(ValueError, match=r"looks like RGB colour channels.*to_grey"):
        predict(model, np.stack([real_image] * 3, axis=-1))
    with pytest.raises(ValueError, match="looks like RGBA colour channels"):
        predict(model, np.zeros((2, 30, 30, 4), np.uint8))


def test_cli_segments_the_nuclear_channel_of_an_rgb_tiff_and_says_so(
    model_file, real_image, tmp_path, capsys
) -> None:
    rgb = np.stack([real_image // 3, 255 - real_image, real_image], axis=-1)
    tifffile.imwrite(tmp_path / "colour.tif", rgb, photometric="rgb")
    status, err = run_cli(
        ["segment", "--model", model_file, tmp_path / "colour.tif", "--out", tmp_path / "out"],
        capsys,
    )
    assert status == 0
    assert any("warning:" in line and "its blue channel was used" in line for line in err)
    assert tifffile.imread(tmp_path / "out" / "colour.tif").shape == real_image.shape


# -------------------------------------------------------------------- multichannel stacks
def test_multichannel_images_are_refused_with_the_channel_count(
    model_file, real_image, tmp_path, capsys
) -> None:
    with pytest.raises(DataError, match="pick the nuclear channel"):
        to_grey(np.zeros((20, 20, 5)), name="five channels")
    with pytest.raises(DataError, match="a 2-D \\(H, W\\) image is expected"):
        LabelledImage("stack", np.zeros((2, 20, 20)), np.zeros((2, 20, 20)))
    two = np.stack([255 - real_image, real_image])  # the nuclei in the second channel
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    command = ["segment", "--model", str(model_file), str(tmp_path / "two.tif"), "--out"]
    assert main([*command, str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "has 2 channels: segmenting channel 1" in err
    assert tifffile.imread(tmp_path / "o" / "two.tif").shape == real_image.shape
    # The same planes without axis names: refused with the two ways out, unless one is taken.
    tifffile.imwrite(tmp_path / "bare.tif", two)
    bare = ["segment", "--model", str(model_file), str(tmp_path / "bare.tif"), "--out"]
    assert main([*bare, str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "does not say whether they are channels, frames or z-slices" in err
    assert "--channel N" in err and "--stack-axis frames" in err
    assert main([*bare, str(tmp_path / "c1"), "--channel", "1"]) == 0
    assert tifffile.imread(tmp_path / "c1" / "bare.tif").shape == real_image.shape
    assert main([*bare, str(tmp_path / "f"), "--stack-axis", "frames"]) == 0
    assert tifffile.imread(tmp_path / "f" / "bare.tif").shape == two.shape
    capsys.readouterr()
    npz = write_npz(tmp_path / "c3.npz", np.zeros((2, 3, 32, 32)), np.zeros((2, 1, 32, 32)))
    status, err = run_cli(["train", "--data", npz, "--out", tmp_path / "m.pt"], capsys)
    assert status == 2 and "one grey channel per image" in err[0] and len(err) == 1


# ------------------------------------------------------------------------- shape mismatch
def test_cli_image_and_labels_of_different_shapes(tmp_path, capsys) -> None:
    npz = write_npz(tmp_path / "bad.npz", np.zeros((3, 32, 32)), np.zeros((3, 32, 16)))
    status, err = run_cli(["train", "--data", npz, "--out", tmp_path / "m.pt"], capsys)
    assert status == 2 and len(err) == 1 and "(3, 32, 32) but the labels (3, 32, 16)" in err[0]
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------- label contents
def test_labels_without_nucleus_are_left_out_unless_told(lab_arrays) -> None:
    labels = [lab_arrays[1][i, 0] for i in range(3)]
    empty = np.zeros_like(labels[0])
    keep, note = select_labelled([labels[0], empty, labels[1]], ["a", "b", "c"])
    assert keep == [0, 2] and "1 of 3 label image(s) contain no nucleus" in note and "(b)" in note
    assert select_labelled([labels[0], empty], ["a", "b"], empty_is_background=True) == (
        [0, 1],
        None,
    )
    with pytest.raises(DataError, match=r"None of the 2 label image.*--empty-is-background"):
        select_labelled([empty, empty], ["a", "b"])
    warned = check_training_labels([empty, empty], ["a", "b"])
    assert warned == [
        "None of the 2 label image(s) contains a nucleus: the network will learn that "
        "everything is background."
    ]


def test_training_on_empty_labels_warns_and_finishes(lab_arrays) -> None:
    images = [lab_arrays[0][i, 0, :64, :64] for i in range(3)]
    empty = [np.zeros((64, 64), np.uint8)] * 3
    with pytest.warns(ImageWarning, match="learn that everything is background"):
        trained = train_model(images, empty, TrainingConfig(**TINY))
    assert trained.summary["stop_reason"] == "completed"
    assert np.isfinite(trained.summary["history"][0]["train_loss"])


def test_cli_empty_labels_need_empty_is_background(lab_arrays, tmp_path, capsys) -> None:
    images = lab_arrays[0][:4, 0, :32, :32]
    labels = np.zeros((4, 32, 32), np.uint8)
    npz = write_npz(tmp_path / "empty.npz", images, labels)
    out = tmp_path / "m.pt"
    status, err = run_cli(["train", "--data", npz, "--out", out, *CLI_TINY], capsys)
    assert status == 2 and len(err) == 1 and "None of the 4 label image(s)" in err[0]
    assert not out.exists()
    status, err = run_cli(
        ["train", "--data", npz, "--out", out, *CLI_TINY, "--empty-is-background"], capsys
    )
    assert status == 0 and out.is_file()
    assert any("learn that everything is background" in line for line in err)
    # Some empty images: left out with a warning, the others train.
    labels = lab_arrays[1][:4, 0, :32, :32].astype(np.uint8)
    labels[2] = 0
    npz = write_npz(tmp_path / "some.npz", images, labels)
    status, err = run_cli(["train", "--data", npz, "--out", out, *CLI_TINY], capsys)
    assert status == 0
    assert any("1 of 4 label image(s) contain no nucleus and were left out" in x for x in err)
    assert "image_002" not in load_model(out).summary["train_names"]


def test_labels_that_are_all_nucleus_warn(lab_arrays, tmp_path, capsys) -> None:
    images = lab_arrays[0][:4, 0, :32, :32]
    full = np.ones((4, 32, 32), np.uint8)
    with pytest.warns(ImageWarning, match="Every pixel of the labels of 'image_000' is nucleus"):
        trained = train_model(list(images), list(full), TrainingConfig(**TINY))
    assert trained.summary["stop_reason"] == "completed"
    npz = write_npz(tmp_path / "full.npz", images, full)
    status, err = run_cli(["train", "--data", npz, "--out", tmp_path / "m.pt", *CLI_TINY], capsys)
    assert status == 0
    assert any("warning:" in line and "not inverted" in line for line in err)


def test_float_and_negative_labels(lab_arrays, tmp_path, capsys) -> None:
    truth = lab_arrays[1][0, 0]
    soft = truth * np.float32(0.7)  # a soft mask: any value > 0 is nucleus
    item = LabelledImage("soft", lab_arrays[0][0, 0], soft)
    assert item.labels.dtype == np.uint8
    np.testing.assert_array_equal(item.mask, truth > 0)
    ids = LabelledImage("ids", lab_arrays[0][0, 0], truth * np.float32(3))  # whole numbers
    assert ids.labels.dtype == np.uint8 and set(np.unique(ids.labels)) == {0, 3}
    with pytest.raises(DataError, match="NaN or infinite"):
        LabelledImage("nan", np.zeros((4, 4)), np.full((4, 4), np.nan))
    negative = -truth.astype(np.int32)
    with pytest.raises(DataError, match=r"contain negative values \(min -1\)"):
        next(train([lab_arrays[0][0, 0]], [negative], TrainingConfig(**TINY)))
    npz = write_npz(tmp_path / "neg.npz", lab_arrays[0][:2, 0], -lab_arrays[1][:2, 0])
    status, err = run_cli(["train", "--data", npz, "--out", tmp_path / "m.pt"], capsys)
    assert status == 2 and len(err) == 1 and "negative values" in err[0]


# ------------------------------------------------------------------------- pixel values
def test_nan_and_inf_pixels_warn_and_give_finite_output(model, real_image) -> None:
    image = real_image.astype(np.float32)
    image[10:20, 10:20] = np.nan
    image[0, 0], image[1, 1] = np.inf, -np.inf
    with pytest.warns(ImageWarning, match="102 of 16384 pixels .* NaN or infinite"):
        probabilities = predict(model, image)
    assert probabilities.shape == image.shape and np.isfinite(probabilities).all()
    with pytest.warns(ImageWarning) as record:
        trained = train_model(
            [image[:64, :64]] * 3, [np.ones((64, 64), np.uint8)] * 3, TrainingConfig(**TINY)
        )
    assert any("NaN or infinite" in m for m in messages(record))
    assert np.isfinite(trained.summary["history"][0]["train_loss"])


def test_constant_image_warns(model) -> None:
    for image in (np.full((40, 50), 7, np.uint16), np.full((40, 50), np.nan)):
        with pytest.warns(ImageWarning, match="An image frame is constant"):
            probabilities = predict(model, image)
        assert probabilities.shape == (40, 50) and np.isfinite(probabilities).all()
        blank = predict(model, np.zeros((40, 50), np.float32))  # what the network saw
        np.testing.assert_array_equal(probabilities, blank)


def test_a_job_gets_the_notices_of_its_own_thread_whatever_the_warning_state(model) -> None:
    """Inside ``notices_to`` the same sentence comes as a Notice, not as a Python warning,
    even with every warning filtered out; another thread (no sink) still gets a warning."""
    import warnings

    from napari_unet_nuclei.notices import notices_to

    constant = np.full((40, 50), 7, np.uint16)
    notices, elsewhere = [], []

    def other_thread() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            predict(model, constant)
        elsewhere.extend(str(w.message) for w in record)

    with notices_to(notices.append), warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning here would raise
        predict(model, constant)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert [(n.category, n.message.split(":")[0]) for n in notices] == [
        (ImageWarning, "An image frame is constant (every pixel is 7)")
    ]
    assert any("An image frame is constant" in m for m in elsewhere)


def test_cli_nan_and_constant_images_are_segmented_with_a_warning(
    model_file, real_image, tmp_path, capsys
) -> None:
    with_nan = real_image.astype(np.float32)
    with_nan[:5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", with_nan)
    tifffile.imwrite(tmp_path / "flat.tif", np.full((33, 47), 100, np.uint16))
    status, err = run_cli(
        [
            "segment",
            "--model",
            model_file,
            tmp_path / "nan.tif",
            tmp_path / "flat.tif",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert status == 0
    assert any("640 of 16384 pixels of an image frame are NaN or infinite" in x for x in err)
    assert any("An image frame is constant (every pixel is 100)" in x for x in err)
    assert tifffile.imread(tmp_path / "out" / "flat.tif").shape == (33, 47)


def test_pixels_that_are_not_numbers_are_refused(model) -> None:
    for dtype in (np.complex64, object, "U3"):
        with pytest.raises(ValueError, match="images must hold real numbers"):
            predict(model, np.zeros((16, 16), dtype))


# --------------------------------------------------------------------------- image sizes
@pytest.mark.parametrize("depth", [2, 4])
def test_images_smaller_than_the_pooling_grid(depth: int, real_image) -> None:
    torch.manual_seed(depth)
    model = create_model(features=4, depth=depth)
    assert model.config.size_multiple == 2**depth
    for shape in ((7, 9), (1, 1), (3, 5), (2, 7, 9)):
        image = np.resize(real_image, shape)
        probabilities = predict(model, image)
        assert probabilities.shape == shape and probabilities.dtype == np.float32
        assert np.isfinite(probabilities).all()


def test_model_trained_with_one_depth_on_odd_sized_images(
    lab_arrays, real_image, tmp_path, capsys
) -> None:
    config = TrainingConfig(**{**TINY, "depth": 3, "patch_size": 48})
    images = [lab_arrays[0][i, 0] for i in range(3)]
    trained = train_model(images, [lab_arrays[1][i, 0] for i in range(3)], config)
    path = save_model(trained, tmp_path / "depth3.pt")
    loaded = load_model(path)
    for shape in ((37, 53), (127, 9), (7, 9)):
        image = real_image[: shape[0], : shape[1]]
        np.testing.assert_array_equal(predict(loaded, image), predict(trained, image))
        assert predict(loaded, image, tile_size=32).shape == shape
    tifffile.imwrite(tmp_path / "odd.tif", real_image[:37, :53])
    status, _ = run_cli(
        ["segment", "--model", path, tmp_path / "odd.tif", "--out", tmp_path / "out"], capsys
    )
    assert status == 0 and tifffile.imread(tmp_path / "out" / "odd.tif").shape == (37, 53)


def test_very_large_image_runs_in_tiles_with_bounded_memory(model, real_image) -> None:
    import inspect

    from napari_unet_nuclei.events import TileDone

    image = np.tile(real_image, (16, 12))  # 2048 x 1536
    # The PyTorch runtime, so that the hook below sees every network call.
    torch_only = "backend" in inspect.signature(iter_predict).parameters
    options = {"backend": "torch"} if torch_only else {}
    seen: list[tuple[int, ...]] = []
    tiles: list[TileDone] = []
    hook = model.network.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    try:
        tracemalloc.start()
        probabilities = predict(
            model,
            image,
            tile_size=256,
            overlap=32,
            batch_size=2,
            progress=lambda e: tiles.append(e) if isinstance(e, TileDone) else None,
            **options,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        hook.remove()
    assert probabilities.shape == image.shape and probabilities.dtype == np.float32
    assert tiles[-1].n_tiles >= 48  # cut into tiles...
    assert seen and max(s[-1] for s in seen) <= 256 and max(s[-2] for s in seen) <= 256
    assert max(s[0] for s in seen) <= 2  # ...that go through the network two at a time
    # numpy memory: the float32 frame, its blend sums and the output, never per-feature maps.
    frame_bytes = image.size * 4
    assert peak < 6 * frame_bytes, peak / frame_bytes


# -------------------------------------------------------------------------- pixel types
DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.uint16,
    np.int16,
    np.uint32,
    np.int32,
    np.uint64,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_integer_and_float_dtype(dtype, model, real_image) -> None:
    values = real_image.astype(np.float64) / 2  # 0 .. 127: fits every type
    if np.dtype(dtype).kind in "if":
        values -= 30  # negative values for signed types
    image = real_image > 100 if dtype is np.bool_ else values.astype(dtype)
    probabilities = predict(model, image)
    assert probabilities.shape == image.shape and probabilities.dtype == np.float32
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    # Only the values matter, not how they are stored.
    reference = predict(model, image.astype(np.float64))
    np.testing.assert_allclose(probabilities, reference, atol=1e-5)


def test_training_on_mixed_dtypes(lab_arrays) -> None:
    base = lab_arrays[0][:4, 0, :64, :64]
    images = [base[0] > 0.3, base[1].astype(np.float16), (base[2] * 4000).astype(np.uint16)]
    images.append((base[3] * 100 - 50).astype(np.int8))
    labels = [lab_arrays[1][i, 0, :64, :64] for i in range(4)]
    trained = train_model(images, labels, TrainingConfig(**TINY))
    assert trained.summary["stop_reason"] == "completed"
    assert np.isfinite(trained.summary["history"][0]["train_loss"])
