"""Precision and runtime choice, ONNX Runtime against PyTorch, balanced tiles, grad mode."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile
import torch

from napari_unet_nuclei.events import TrainingStarted
from napari_unet_nuclei.nn.acceleration import (
    make_runner,
    onnxruntime_available,
    resolve_backend,
    resolve_precision,
)
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.prediction.inference import iter_predict, predict_logits
from napari_unet_nuclei.prediction.tiling import TileGrid, balanced_tile_size, tile_positions
from napari_unet_nuclei.train.training import TrainingConfig, train

CPU = torch.device("cpu")
needs_onnxruntime = pytest.mark.skipif(
    not onnxruntime_available(), reason="onnx/onnxruntime not installed"
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return create_model(features=4, depth=2)


@pytest.fixture(scope="module")
def kromp_crop(kromp_root) -> np.ndarray:
    path = sorted((kromp_root / "images").glob("*.tif"))[0]
    return tifffile.imread(path)[:300, :420]


@pytest.mark.parametrize("native_bf16", [True, False], ids=["bf16-cpu", "avx2-cpu"])
def test_precision_choice(native_bf16, monkeypatch) -> None:
    """Both kinds of CPU, whichever this one is: bf16 inference only where it is native,
    float32 training on both."""
    import napari_unet_nuclei.nn.acceleration as acceleration

    monkeypatch.setattr(acceleration, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16 else "fp32")
    assert resolve_precision("auto", CPU, training=True) == "fp32"
    assert resolve_precision("bf16", CPU, training=True) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_precision("int8", CPU)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("tensorrt", CPU, "fp32")


def test_backend_choice() -> None:
    expected = "onnxruntime" if onnxruntime_available() else "torch"
    assert resolve_backend("auto", CPU, "fp32") == expected
    assert resolve_backend("auto", CPU, "bf16") == "torch"  # ONNX Runtime runs float32 only
    assert resolve_backend("torch", CPU, "fp32") == "torch"


@needs_onnxruntime
@pytest.mark.parametrize("tile_size", [128, 512])
def test_onnxruntime_equals_torch_on_real_image(model, kromp_crop, tile_size: int) -> None:
    reference = predict_logits(
        model, kromp_crop, backend="torch", precision="fp32", tile_size=tile_size
    )
    fast = predict_logits(model, kromp_crop, backend="onnxruntime", tile_size=tile_size)
    assert fast.shape == reference.shape == kromp_crop.shape
    assert np.abs(fast - reference).max() < 1e-4 * max(1.0, np.abs(reference).max())


@needs_onnxruntime
def test_onnxruntime_tiny_image_keeps_shape(model) -> None:
    image = np.random.default_rng(0).integers(0, 255, (7, 9)).astype(np.uint8)
    deep = create_model(features=4, depth=4)  # 7 x 9 is smaller than 2**4
    for net in (model, deep):
        reference = predict_logits(net, image, backend="torch", precision="fp32")
        fast = predict_logits(net, image, backend="onnxruntime")
        assert fast.shape == (7, 9)
        np.testing.assert_allclose(fast, reference, atol=1e-4)


@needs_onnxruntime
def test_onnxruntime_session_follows_new_weights(kromp_crop) -> None:
    torch.manual_seed(2)
    model = create_model(features=4, depth=2)
    before = predict_logits(model, kromp_crop, backend="onnxruntime")
    torch.manual_seed(3)
    other = create_model(features=4, depth=2)
    model.network.load_state_dict(other.network.state_dict())  # in place, same module
    after = predict_logits(model, kromp_crop, backend="onnxruntime")
    expected = predict_logits(other, kromp_crop, backend="torch", precision="fp32")
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, atol=1e-4)


@needs_onnxruntime
def test_an_exported_graph_is_kept_and_read_back_without_importing_onnx(
    kromp_crop, tmp_path, monkeypatch
) -> None:
    """The exporter imports ``onnx`` (about a second holding Python's lock, a frozen
    window): a model exported once on this machine starts from the cache folder, in a new
    process that never imports ``onnx``."""
    import subprocess
    import sys

    from napari_unet_nuclei.io.model_io import save_model
    from napari_unet_nuclei.nn import acceleration

    monkeypatch.setenv(acceleration.CACHE_ENV, str(tmp_path))
    torch.manual_seed(4)
    model = create_model(features=4, depth=2)
    first = predict_logits(model, kromp_crop, backend="onnxruntime")
    graphs = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_size > 10_000
    save_model(model, tmp_path / "model.pt")
    np.save(tmp_path / "crop.npy", kromp_crop)
    script = (
        "import sys, numpy as np\n"
        "from napari_unet_nuclei.io.model_io import load_model\n"
        "from napari_unet_nuclei.prediction.inference import predict_logits\n"
        f"model = load_model({str(tmp_path / 'model.pt')!r})\n"
        f"crop = np.load({str(tmp_path / 'crop.npy')!r})\n"
        f"np.save({str(tmp_path / 'again.npy')!r}, "
        "predict_logits(model, crop, backend='onnxruntime'))\n"
        "print('onnx imported:', 'onnx' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "onnx imported: False" in run.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), first)
    # Other weights are another graph: exported, not confused with the kept one.
    torch.manual_seed(5)
    other = create_model(features=4, depth=2)
    expected = predict_logits(other, kromp_crop, backend="torch", precision="fp32")
    np.testing.assert_allclose(
        predict_logits(other, kromp_crop, backend="onnxruntime"), expected, atol=1e-4
    )
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


@needs_onnxruntime
def test_an_unwritable_cache_folder_only_costs_the_export(
    kromp_crop, tmp_path, monkeypatch
) -> None:
    from napari_unet_nuclei.nn import acceleration

    blocker = tmp_path / "a file, not a folder"
    blocker.write_text("x")
    monkeypatch.setenv(acceleration.CACHE_ENV, str(blocker))
    torch.manual_seed(6)
    model = create_model(features=4, depth=2)
    expected = predict_logits(model, kromp_crop, backend="torch", precision="fp32")
    np.testing.assert_allclose(
        predict_logits(model, kromp_crop, backend="onnxruntime"), expected, atol=1e-4
    )
    assert blocker.read_text() == "x"


def test_bf16_is_close_to_fp32(model, kromp_crop) -> None:
    reference = predict_logits(model, kromp_crop, backend="torch", precision="fp32")
    half = predict_logits(model, kromp_crop, backend="torch", precision="bf16")
    assert half.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: logits agree to a few percent of their range.
    assert np.abs(half - reference).max() < 0.05 * np.abs(reference).max() + 0.05


def test_runner_keeps_batch_shape(model) -> None:
    run = make_runner(model.network.eval(), CPU, "fp32", "torch")
    tiles = np.random.default_rng(0).normal(size=(3, 64, 48)).astype(np.float32)
    logits = run(tiles)
    assert logits.shape == (3, 64, 48) and logits.dtype == np.float32


@pytest.mark.parametrize(
    ("length", "max_tile", "overlap", "multiple"),
    [
        (2048, 512, 64, 16),
        (1360, 512, 64, 16),
        (1024, 512, 64, 8),
        (300, 128, 48, 4),
        (528, 512, 64, 16),
    ],
)
def test_balanced_tiles_cover_with_as_few_tiles(
    length: int, max_tile: int, overlap: int, multiple: int
) -> None:
    side = balanced_tile_size(length, max_tile, overlap, multiple)
    assert side % multiple == 0 and side <= max_tile
    balanced = tile_positions(length, side, overlap, multiple)
    fixed = tile_positions(length, max_tile, overlap, multiple)
    assert len(balanced) <= len(fixed)
    assert balanced[0] == 0 and balanced[-1] + side == length
    assert all(b - a <= side - overlap for a, b in itertools.pairwise(balanced))
    assert len(balanced) * side <= len(fixed) * max_tile


def test_2048_needs_fewer_computed_pixels() -> None:
    grid = TileGrid.for_frame(2048, 2048, 512, 64, 16)
    fixed = tile_positions(2048, 512, 64, 16)
    assert len(grid.rows) == len(fixed) == 5
    assert grid.tile_h * len(grid.rows) < 0.95 * 512 * len(fixed)  # 2320 instead of 2560
    assert grid.window.min() > 0


def test_abandoned_prediction_leaves_grad_mode_alone(model, kromp_crop) -> None:
    events = iter_predict(model, kromp_crop, tile_size=128, overlap=32)
    next(events)  # suspended in the middle of the tiles, as a cancelled worker is
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    events.close()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_training_reports_its_precision(lab_arrays) -> None:
    images, labels = lab_arrays[0][:4, 0], lab_arrays[1][:4, 0]
    config = TrainingConfig(features=4, depth=2, epochs=1, steps_per_epoch=2, batch_size=2)
    started = next(e for e in train(images, labels, config) if isinstance(e, TrainingStarted))
    assert started.precision == "fp32"  # on every CPU, native bfloat16 or not
    bf16 = TrainingConfig(**{**config.__dict__, "precision": "bf16"})
    started = next(e for e in train(images, labels, bf16) if isinstance(e, TrainingStarted))
    assert started.precision == "bf16-mixed"


def test_training_precision_holds_across_epochs(lab_arrays, monkeypatch) -> None:
    """Regression: the epoch's validation scores once overwrote the compute precision, so
    from the second epoch on the CPU trained in emulated float16, ten times slower."""
    import napari_unet_nuclei.train.training_loop as training_loop

    seen: list[str] = []
    real_autocast = training_loop.autocast

    def recording_autocast(device, precision):
        seen.append(precision)
        return real_autocast(device, precision)

    monkeypatch.setattr(training_loop, "autocast", recording_autocast)
    images, labels = lab_arrays[0][:6, 0], lab_arrays[1][:6, 0]
    config = TrainingConfig(
        features=4, depth=2, epochs=3, steps_per_epoch=2, batch_size=2, precision="fp32"
    )
    for _ in train(images, labels, config):
        pass
    assert seen == ["fp32"] * 6
