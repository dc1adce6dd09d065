"""Training on real data: events, cancel, reproducibility, fine-tuning, budgets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import drain
from napari_unet_nuclei.evaluate.metrics import segmentation_scores
from napari_unet_nuclei.events import (
    BestModel,
    EpochEnd,
    TrainingFinished,
    TrainingStarted,
    TrainingStep,
)
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.train.augmentation import AugmentationConfig, augment_batch
from napari_unet_nuclei.train.training import TrainingConfig, train, train_model

SMALL = {"features": 4, "depth": 2, "batch_size": 4, "patch_size": 64}


def test_events_sequence_and_best_model(lab_split) -> None:
    x_train, y_train, x_test, y_test = lab_split
    config = TrainingConfig(**SMALL, epochs=2, steps_per_epoch=3, seed=1)
    events, model = drain(
        train(x_train[:10], y_train[:10], config, val_images=x_test[:2], val_labels=y_test[:2])
    )
    assert isinstance(events[0], TrainingStarted)
    assert events[0].total_steps == 6 and events[0].n_val_images == 2
    steps = [e for e in events if isinstance(e, TrainingStep)]
    assert [s.global_step for s in steps] == list(range(1, 7))
    assert all(math.isfinite(s.loss) for s in steps)
    assert steps[-1].fraction_done == pytest.approx(1.0)
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epochs] == [1, 2]
    assert all(0 <= e.val_f1 <= 1 for e in epochs)
    assert any(isinstance(e, BestModel) for e in events)
    finished = events[-1]
    assert isinstance(finished, TrainingFinished) and finished.model is model
    assert finished.reason == "completed" and finished.steps == 6
    best = max(e.val_f1 for e in epochs)
    assert model.summary["best_val_f1"] == pytest.approx(best)
    json.dumps(model.summary)  # plain data


def test_cancel_stops_within_one_step(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    events, model = drain(
        train(
            x_train[:6], y_train[:6], TrainingConfig(**SMALL, epochs=50), should_stop=should_stop
        )
    )
    steps = [e for e in events if isinstance(e, TrainingStep)]
    assert len(steps) == 2
    assert events[-1].reason == "cancelled"
    assert model is not None


def test_generator_close_is_clean(lab_split) -> None:
    """Closing mid-run (what napari's worker.quit() amounts to) ends the run at once and
    leaves torch's global settings as they were."""
    import inspect
    import threading

    x_train, y_train, *_ = lab_split
    before = (torch.get_num_threads(), torch.is_grad_enabled(), threading.active_count())
    generator = train(x_train[:4], y_train[:4], TrainingConfig(**SMALL, epochs=100))
    steps = 0
    for event in generator:
        if isinstance(event, TrainingStep):
            steps += 1
            if steps == 2:
                break
    generator.close()
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED
    with pytest.raises(StopIteration):
        next(generator)
    after = (torch.get_num_threads(), torch.is_grad_enabled(), threading.active_count())
    assert after == before


def test_reproducible_with_seed(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    config = TrainingConfig(**SMALL, epochs=1, steps_per_epoch=3, seed=7, validation_fraction=0.2)
    a = train_model(x_train[:8], y_train[:8], config)
    b = train_model(x_train[:8], y_train[:8], config)
    for (key, wa), wb in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert np.array_equal(wa.numpy(), wb.numpy()), key
    assert a.summary["val_names"] == b.summary["val_names"]


@pytest.mark.slow
def test_short_training_beats_untrained_model(lab_split) -> None:
    x_train, y_train, x_test, y_test = lab_split
    config = TrainingConfig(features=8, depth=2, batch_size=8, epochs=4, seed=0)
    model = train_model(x_train, y_train, config, val_images=x_test, val_labels=y_test)
    untrained = create_model(8, 2)
    f1_trained = np.mean(
        [segmentation_scores(predict(model, x) >= 0.5, y)["f1"] for x, y in zip(x_test, y_test)]
    )
    f1_untrained = np.mean(
        [
            segmentation_scores(predict(untrained, x) >= 0.5, y)["f1"]
            for x, y in zip(x_test, y_test)
        ]
    )
    assert f1_trained > 0.75
    assert f1_trained > f1_untrained + 0.2


def test_fine_tuning_starts_from_weights_and_keeps_original(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    base = train_model(
        x_train[:10], y_train[:10], TrainingConfig(**SMALL, epochs=1, steps_per_epoch=2)
    )
    before = {k: v.clone() for k, v in base.network.state_dict().items()}
    tuned = train_model(
        x_train[10:20],
        y_train[10:20],
        TrainingConfig(**{**SMALL, "features": 16}, epochs=1, steps_per_epoch=2),
        init_model=base,
    )
    assert tuned.config == base.config  # the architecture of the model being tuned wins
    assert all(
        np.array_equal(before[k].numpy(), v.numpy()) for k, v in base.network.state_dict().items()
    )
    assert tuned.summary["fine_tuned_from"] == base.name
    assert len(tuned.summary["rounds"]) == 2


def test_time_budget(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    events, _ = drain(
        train(
            x_train[:8], y_train[:8], TrainingConfig(**SMALL, time_budget=3.0, steps_per_epoch=4)
        )
    )
    finished = events[-1]
    assert finished.reason == "time_budget"
    assert finished.elapsed >= 3.0
    # It stopped at the first step (or epoch end) past the budget, however busy the CPU.
    steps = [e for e in events if isinstance(e, TrainingStep)]
    assert all(step.elapsed < 3.0 for step in steps[:-1])
    assert isinstance(events[0], TrainingStarted) and events[0].total_steps is None


def test_single_large_image_and_partial_annotation(kromp_root) -> None:
    import tifffile

    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")
    labels = tifffile.imread(kromp_root / "masks" / "Ganglioneuroblastoma_0.tif")
    annotated = np.zeros(image.shape, bool)
    annotated[:300, :300] = True
    events, model = drain(
        train(
            [image],
            [labels],
            TrainingConfig(**SMALL, epochs=1, steps_per_epoch=2),
            annotated=[annotated],
        )
    )
    started = events[0]
    assert started.n_train_images == 1 and started.n_val_images == 1  # a band of rows held out
    assert model.summary["val_names"] == ["image_000 (bottom)"]


def test_nan_loss_keeps_last_good_weights(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    events, model = drain(
        train(
            x_train[:4],
            y_train[:4],
            TrainingConfig(**SMALL, epochs=2, steps_per_epoch=2, learning_rate=1e30),
        )
    )
    finished = events[-1]
    assert finished.reason == "diverged"
    assert "last good weights" in finished.message
    assert all(
        np.isfinite(v.numpy()).all()
        for v in model.network.state_dict().values()
        if v.is_floating_point()
    )


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="label image must match"):
        drain(train([np.zeros((32, 32))], [np.zeros((16, 16))], TrainingConfig(**SMALL, epochs=1)))
    with pytest.raises(ValueError, match="No training images"):
        drain(train([], [], TrainingConfig(**SMALL)))
    with pytest.raises(ValueError, match="give 2-D frames"):
        drain(train([np.zeros((2, 32, 32))], [np.zeros((2, 32, 32))], TrainingConfig(**SMALL)))


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(6, 1, 64, 64)
    mask[:, :, 10:30, 20:50] = 1
    image = mask * 0.8 + 0.1
    weight = torch.ones_like(mask)
    config = AugmentationConfig(intensity=False, affine=True, affine_probability=1.0)
    aug_image, aug_mask, _ = augment_batch(image, mask, weight, config, generator)
    assert aug_image.shape == image.shape and set(aug_mask.unique().tolist()) <= {0.0, 1.0}
    # Geometry moved the object, but image and mask moved together.
    assert not torch.equal(aug_mask, mask)
    inside = aug_image[aug_mask > 0.5]
    outside = aug_image[aug_mask < 0.5]
    assert inside.mean() > 0.7 and outside.mean() < 0.2
    noisy, _, _ = augment_batch(
        image,
        mask,
        weight,
        AugmentationConfig.disabled().__class__(
            flips=False, rotations90=False, affine=False, intensity=True
        ),
        generator,
    )
    assert not torch.equal(noisy, image)


def test_validation_by_names(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    names = [f"img{i}" for i in range(6)]
    config = TrainingConfig(
        **SMALL, epochs=1, steps_per_epoch=1, validation_names=("img2", "img4")
    )
    model = train_model(x_train[:6], y_train[:6], config, names=names)
    assert model.summary["val_names"] == ["img2", "img4"]
    assert model.summary["train_names"] == ["img0", "img1", "img3", "img5"]
    with pytest.raises(ValueError, match="not among the training images"):
        train_model(x_train[:2], y_train[:2], TrainingConfig(**SMALL, validation_names=("x",)))


def test_few_images_each_lend_a_band_to_validation_many_lend_whole_images() -> None:
    """Two corrected images are both trained on and both judged on (a bottom band of each);
    from five images on, whole images are held out."""
    from napari_unet_nuclei.train.training_data import (
        BAND_FRACTION,
        BANDS_BELOW_IMAGES,
        TrainingSplit,
        split_validation,
    )

    def split_of(n: int) -> TrainingSplit:
        images = [np.full((200, 64), i, np.float32) for i in range(n)]
        masks = [np.zeros((200, 64), bool) for _ in range(n)]
        return TrainingSplit(images, masks, [None] * n, [f"im{i}" for i in range(n)])

    rng = np.random.default_rng(0)
    train, val = split_validation(split_of(2), 0.2, rng, 16)
    assert train.names == ["im0 (top)", "im1 (top)"] and val.names == [
        "im0 (bottom)",
        "im1 (bottom)",
    ]
    assert val.images[0].shape == (int(round(BAND_FRACTION * 200)), 64)
    assert train.images[1].shape[0] + val.images[1].shape[0] == 200
    assert (val.images[1] == 1).all()  # each band comes from its own image
    train, val = split_validation(split_of(BANDS_BELOW_IMAGES), 0.2, rng, 16)
    assert len(val.names) == 1 and len(train.names) == BANDS_BELOW_IMAGES - 1
    assert "(" not in val.names[0]
