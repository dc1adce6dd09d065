"""The CUDA path on a real GPU: training, inference, precision and model files.

Skipped where no CUDA GPU is present (as on CI); run on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def lab_stacks(lab_split):
    """``lab_70_9`` as (N, H, W) arrays: x_train, y_train, x_test, y_test."""
    return tuple(np.stack(part) for part in lab_split)


@pytest.fixture(scope="module")
def cuda_model(lab_stacks):
    from napari_unet_nuclei.train.training import TrainingConfig, train

    x_train, y_train, x_test, y_test = lab_stacks
    config = TrainingConfig(features=8, depth=4, epochs=6, steps_per_epoch=30, seed=0)
    events = list(
        train(
            list(x_train), list(y_train), config, val_images=list(x_test), val_labels=list(y_test)
        )
    )
    return events


def test_auto_device_and_precision_on_cuda(cuda_model):
    from napari_unet_nuclei.events import TrainingStarted

    started = next(e for e in cuda_model if isinstance(e, TrainingStarted))
    assert started.device.startswith("cuda")
    assert started.precision == "fp16-mixed"


def test_cuda_training_learns_and_returns_a_cpu_model(cuda_model, lab_stacks):
    from napari_unet_nuclei.events import EpochEnd, TrainingFinished

    finished = cuda_model[-1]
    assert isinstance(finished, TrainingFinished)
    epochs = [e for e in cuda_model if isinstance(e, EpochEnd)]
    assert all(np.isfinite(e.train_loss) for e in epochs)
    assert epochs[-1].train_loss < epochs[0].train_loss
    assert max(e.val_f1 for e in epochs) > 0.85  # Otsu gives about 0.90 after 180 steps
    parameters = list(finished.model.network.parameters())
    assert all(p.device.type == "cpu" for p in parameters)


def test_cuda_inference_matches_cpu(cuda_model, lab_stacks):
    from napari_unet_nuclei.evaluate.metrics import segmentation_scores
    from napari_unet_nuclei.prediction.inference import predict

    model = cuda_model[-1].model
    _, _, x_test, _ = lab_stacks
    cpu = predict(model, x_test, device="cpu", precision="fp32", backend="torch")
    gpu32 = predict(model, x_test, device="cuda", precision="fp32")
    gpu16 = predict(model, x_test, device="cuda")  # auto: float16 autocast
    assert gpu32.dtype == np.float32 and gpu32.shape == x_test.shape
    assert gpu16.dtype == np.float32 and gpu16.shape == x_test.shape
    assert np.abs(gpu32 - cpu).max() < 1e-3
    assert np.abs(gpu16 - cpu).max() < 0.05
    assert segmentation_scores(gpu16 >= 0.5, cpu >= 0.5)["iou"] > 0.995


def test_cuda_tiled_large_image_and_tta(cuda_model, kromp_root):
    import tifffile

    from napari_unet_nuclei.prediction.inference import predict

    model = cuda_model[-1].model
    image = tifffile.imread(kromp_root / "images" / "Neuroblastoma_0.tif")
    if image.ndim == 3:
        image = image[..., 0]
    gpu = predict(model, image, device="cuda", tile_size=256, batch_size=4)
    cpu = predict(model, image, device="cpu", precision="fp32", tile_size=256)
    assert gpu.shape == image.shape and gpu.dtype == np.float32
    assert np.mean((gpu >= 0.5) == (cpu >= 0.5)) > 0.999
    tta = predict(model, image[:300, :301], device="cuda", test_time_augmentation=True)
    assert tta.shape == (300, 301) and np.isfinite(tta).all()


def test_lazy_inference_on_cuda(cuda_model, lab_stacks):
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.prediction.lazy import predict_lazy

    model = cuda_model[-1].model
    _, _, x_test, _ = lab_stacks
    lazy = np.asarray(predict_lazy(model, x_test[:3], device="cuda", precision="fp32"))
    eager = predict(model, x_test[:3], device="cuda", precision="fp32")
    assert lazy.shape == eager.shape
    assert np.abs(lazy - eager).max() < 1e-3


def test_cuda_model_file_round_trip(cuda_model, lab_stacks, tmp_path):
    from napari_unet_nuclei import load_model, predict, save_model

    model = cuda_model[-1].model
    _, _, x_test, _ = lab_stacks
    save_model(model, tmp_path / "cuda.pt")
    loaded = load_model(tmp_path / "cuda.pt")
    a = predict(model, x_test[:2], device="cuda", precision="fp32")
    b = predict(loaded, x_test[:2], device="cuda", precision="fp32")
    # cuDNN may pick other (TF32) algorithms for another module instance: equal to
    # rounding here; the CPU test checks bit-identical outputs.
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_fine_tuning_on_cuda_from_a_cpu_model(kromp_tiny_model, lab_stacks):
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    x_train, y_train, _, _ = lab_stacks
    tuned = train_model(
        list(x_train[:8]),
        list(y_train[:8]),
        TrainingConfig(epochs=1, steps_per_epoch=5, device="cuda", validation_fraction=0.25),
        init_model=kromp_tiny_model,
    )
    assert tuned.config == kromp_tiny_model.config
    assert all(p.device.type == "cpu" for p in tuned.network.parameters())
    assert all(p.device.type == "cpu" for p in kromp_tiny_model.network.parameters())
