"""Training options measured by benchmarks/quality_sweep.py: losses, weight averaging,
threshold calibration, and the validation interval under a time budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet_nuclei import load_model, save_model
from napari_unet_nuclei.evaluate.metrics import segmentation_scores
from napari_unet_nuclei.events import TrainingStarted
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.train.losses import LOSSES, lovasz_hinge, probability_loss
from napari_unet_nuclei.train.training import (
    MIN_STEPS_PER_EPOCH_TIMED,
    TrainingConfig,
    train,
    train_model,
)
from napari_unet_nuclei.train.training_validation import CALIBRATION_THRESHOLDS

SMALL = {"features": 4, "depth": 2, "batch_size": 4, "patch_size": 64}
LEARNS = {"features": 8, "depth": 2, "batch_size": 8, "patch_size": 128}  # F1 > 0.75 in 36 steps


def _lovasz_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """The Lovasz hinge written from its definition: the Lovasz extension of the Jaccard
    loss, i.e. sum_i relu(e_(i)) * (J(first i errors) - J(first i-1 errors))."""
    errors = 1.0 - scores * (2.0 * labels - 1.0)
    order = np.argsort(-errors, kind="stable")
    total, previous = 0.0, 0.0
    positives = labels.sum()
    for i in range(1, len(order) + 1):
        chosen = np.zeros(len(order), bool)
        chosen[order[:i]] = True
        missed = (chosen & (labels == 1)).sum()
        false = (chosen & (labels == 0)).sum()
        jaccard = 1.0 - (positives - missed) / (positives + false)
        total += max(errors[order[i - 1]], 0.0) * (jaccard - previous)
        previous = jaccard
    return total


def test_lovasz_hinge_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 1, 5, 7)).astype(np.float32)
    labels = (rng.random((2, 1, 5, 7)) > 0.6).astype(np.float32)
    weight = np.ones_like(labels)
    weight[1, 0, :2] = 0  # unannotated rows of the second patch are left out
    got = float(lovasz_hinge(*(torch.from_numpy(a) for a in (scores, labels, weight))))
    expected = np.mean(
        [
            _lovasz_reference(scores[0].ravel(), labels[0].ravel()),
            _lovasz_reference(scores[1, :, 2:].ravel(), labels[1, :, 2:].ravel()),
        ]
    )
    assert got == pytest.approx(expected, rel=1e-5)
    perfect = torch.from_numpy(4.0 * (2.0 * labels - 1.0))
    assert float(lovasz_hinge(perfect, torch.from_numpy(labels), torch.ones(2, 1, 5, 7))) == 0


def test_image_dice_averages_patches_and_batch_dice_pools_them() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1.0  # 8 nucleus pixels in the first patch, none in the second
    logits = torch.full((2, 1, 4, 4), -20.0)
    logits[0, 0, :2] = 20.0  # exact on both patches
    weight = torch.ones_like(target)
    bce = float(probability_loss(logits, target, weight, 1.0, "bce"))
    assert float(probability_loss(logits, target, weight, 1.0, "bce+dice")) == pytest.approx(
        bce, abs=1e-4
    )
    # Empty second patch: its own Dice is (0 + 1) / (0 + 0 + 1) = 1, so no loss either.
    assert float(probability_loss(logits, target, weight, 1.0, "bce+image-dice")) == pytest.approx(
        bce, abs=1e-4
    )
    logits[1, 0, 0, 0] = 20.0  # one false pixel in the empty patch
    image_dice = float(probability_loss(logits, target, weight, 1.0, "bce+image-dice")) - float(
        probability_loss(logits, target, weight, 1.0, "bce")
    )
    batch_dice = float(probability_loss(logits, target, weight, 1.0, "bce+dice")) - float(
        probability_loss(logits, target, weight, 1.0, "bce")
    )
    assert image_dice == pytest.approx(0.5 * (1 - 1 / 2), abs=1e-3)  # that patch: 1 - 1/2
    assert batch_dice == pytest.approx(1 - 17 / 18, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_real_data(lab_split, loss) -> None:
    x_train, y_train, x_test, y_test = lab_split
    config = TrainingConfig(**LEARNS, epochs=3, steps_per_epoch=12, seed=0, loss=loss)
    model = train_model(x_train, y_train, config, val_images=x_test, val_labels=y_test)
    assert model.summary["config"]["loss"] == loss
    assert model.summary["best_val_f1"] > 0.75


def test_unknown_loss_and_bad_ema_are_refused(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    with pytest.raises(ValueError, match="Unknown loss 'dice'"):
        next(train(x_train[:2], y_train[:2], TrainingConfig(**SMALL, loss="dice")))
    with pytest.raises(ValueError, match="ema_decay"):
        next(train(x_train[:2], y_train[:2], TrainingConfig(**SMALL, ema_decay=1.0)))


@pytest.mark.slow
def test_weight_averaging_keeps_the_average_not_the_last_weights(lab_split) -> None:
    x_train, y_train, x_test, y_test = lab_split
    common = {**LEARNS, "epochs": 1, "steps_per_epoch": 36, "seed": 3}
    raw = train_model(
        x_train, y_train, TrainingConfig(**common), val_images=x_test, val_labels=y_test
    )
    averaged = train_model(
        x_train,
        y_train,
        TrainingConfig(**common, ema_decay=0.9),
        val_images=x_test,
        val_labels=y_test,
    )
    # Same seed, same steps: the raw trajectories are identical, so any difference in the
    # kept convolution weights comes from the averaging.
    raw_weights = dict(raw.network.named_parameters())
    differences = [
        float((p - raw_weights[name]).detach().abs().max())
        for name, p in averaged.network.named_parameters()
    ]
    assert max(differences) > 1e-4
    assert averaged.summary["best_val_f1"] > 0.75


@pytest.mark.slow
def test_threshold_is_chosen_by_nuclei_on_the_validation_images(lab_split) -> None:
    from napari_unet_nuclei.evaluate.object_metrics import object_scores
    from napari_unet_nuclei.nn.object_targets import instance_labels
    from napari_unet_nuclei.workflows.segmentation import predict_instances

    x_train, y_train, x_test, y_test = lab_split
    config = TrainingConfig(features=8, depth=2, batch_size=8, epochs=3, seed=0)
    model = train_model(x_train, y_train, config, val_images=x_test, val_labels=y_test)
    calibration = model.summary["threshold_calibration"]
    assert calibration["by"] == "object F1" and model.threshold == calibration["threshold"]
    assert calibration["val_object_f1"] >= calibration["val_object_f1_at_start_threshold"]
    # The kept epoch is the one with the best validation nuclei, and the recorded figure is
    # what predict_instances gives on those images in float32, the precision validation
    # runs in on every CPU (a CPU with native bfloat16 segments in bf16 under "auto").
    history = model.summary["history"]
    best = max(
        history,
        key=lambda r: (round(r["val_object_f1"], 3), -r["val_merges"], round(r["val_f1"], 4)),
    )
    assert model.summary["best_epoch"] == best["epoch"]
    got = np.mean(
        [
            object_scores(
                predict_instances(model, x, backend="torch", precision="fp32"),
                instance_labels(y),
            )["f1"]
            for x, y in zip(x_test, y_test)
        ]
    )
    assert got == pytest.approx(calibration["val_object_f1"], abs=2e-3)


@pytest.mark.slow
def test_threshold_is_calibrated_by_pixels_when_asked(lab_split, tmp_path) -> None:
    x_train, y_train, x_test, y_test = lab_split
    config = TrainingConfig(
        features=8, depth=2, batch_size=8, epochs=3, seed=0, choose_by="pixels"
    )
    model = train_model(x_train, y_train, config, val_images=x_test, val_labels=y_test)
    calibration = model.summary["threshold_calibration"]
    assert model.threshold == calibration["threshold"]
    assert calibration["threshold"] in CALIBRATION_THRESHOLDS
    assert calibration["val_f1"] >= calibration["val_f1_at_0.5"]
    if calibration["threshold"] != 0.5:
        assert calibration["val_f1"] >= calibration["val_f1_at_0.5"] + 5e-4

    def mean_f1(threshold: float) -> float:
        return float(
            np.mean(
                [
                    segmentation_scores(predict(model, x, backend="torch") >= threshold, y > 0)[
                        "f1"
                    ]
                    for x, y in zip(x_test, y_test)
                ]
            )
        )

    # The recorded figures are what predict() gives on those images.
    assert mean_f1(model.threshold) == pytest.approx(calibration["val_f1"], abs=2e-3)
    assert mean_f1(0.5) == pytest.approx(calibration["val_f1_at_0.5"], abs=2e-3)
    save_model(model, tmp_path / "calibrated.pt")
    assert load_model(tmp_path / "calibrated.pt").threshold == model.threshold


def test_no_calibration_without_validation_or_when_switched_off(lab_split) -> None:
    x_train, y_train, x_test, y_test = lab_split
    common = {**SMALL, "epochs": 1, "steps_per_epoch": 5}
    off = train_model(
        x_train[:10],
        y_train[:10],
        TrainingConfig(**common, calibrate_threshold=False),
        val_images=x_test[:2],
        val_labels=y_test[:2],
    )
    assert off.threshold == 0.5 and off.summary["threshold_calibration"] is None
    no_validation = train_model(
        x_train[:10], y_train[:10], TrainingConfig(**common, validation_fraction=0.0)
    )
    assert no_validation.threshold == 0.5
    assert no_validation.summary["threshold_calibration"] is None


def test_time_budget_validates_at_most_every_30_steps(lab_split) -> None:
    x_train, y_train, *_ = lab_split
    settings = {**SMALL, "batch_size": 8, "patch_size": 128}
    timed = next(train(x_train, y_train, TrainingConfig(**settings, time_budget=1.0)))
    counted = next(train(x_train, y_train, TrainingConfig(**settings, epochs=1)))
    assert isinstance(timed, TrainingStarted) and isinstance(counted, TrainingStarted)
    # 63 training images of 128 x 128 in batches of 8 whole images: 8 steps make a pass.
    assert counted.steps_per_epoch == 8
    assert timed.steps_per_epoch == MIN_STEPS_PER_EPOCH_TIMED


def test_a_replayed_share_of_each_batch_comes_from_the_replayed_images() -> None:
    from napari_unet_nuclei.train.patches import PatchSampler, ReplayMix

    rng = np.random.default_rng(0)
    own = PatchSampler([np.zeros((64, 64), np.float32)], [np.zeros((64, 64))], 32, rng=rng)
    replay = PatchSampler([np.ones((80, 80), np.float32)], [np.ones((80, 80))], 32, rng=rng)
    images, targets, weights = ReplayMix(own, replay, 0.25).sample(8)
    assert images.shape == (8, 1, 32, 32) and targets.shape == weights.shape == (8, 1, 32, 32)
    np.testing.assert_array_equal(images[:6], 0)
    np.testing.assert_array_equal(images[6:], 1)
    assert ReplayMix(own, replay, 0.01).replayed_per_batch(8) == 1  # at least one patch
    assert ReplayMix(own, replay, 0.9).replayed_per_batch(2) == 1  # never the whole batch
    assert ReplayMix(own, None, 0.25).replayed_per_batch(8) == 0
    assert not ReplayMix(own, None, 0.25).sample(4)[0].any()


def test_fine_tuning_replays_the_generalist_images_and_records_the_nucleus_size(
    lab_split, lab_tiny_model
) -> None:
    from napari_unet_nuclei.data.public_data import replay_sample
    from napari_unet_nuclei.prediction.nucleus_size import diameter_of_masks

    x_train, y_train, x_test, y_test = lab_split
    replayed = replay_sample(3, seed=1)
    assert len(replayed) == 3
    assert {item.name.split("/")[0] for item in replayed} == {
        "kromp2020",
        "dsb2018_train",
        "bbbc039",
    }
    config = TrainingConfig(steps=4, batch_size=4, patch_size=64)
    model = train_model(
        x_train[:6],
        y_train[:6],
        config,
        val_images=x_test[:2],
        val_labels=y_test[:2],
        init_model=lab_tiny_model,
        replay_images=[item.image for item in replayed],
        replay_labels=[item.labels for item in replayed],
    )
    assert model.summary["replayed_images"] == 3 and model.summary["replayed_per_batch"] == 1
    # A fine-tune keeps the nucleus size its start model learned; a new model measures its own.
    assert model.summary["nucleus_diameter"] == lab_tiny_model.summary["nucleus_diameter"]
    assert lab_tiny_model.summary["nucleus_diameter"] > 0
    new = train_model(x_train[:6], y_train[:6], TrainingConfig(steps=1, **SMALL))
    assert new.summary["nucleus_diameter"] == pytest.approx(
        diameter_of_masks(y_train[:5]), rel=0.1
    )
    with pytest.raises(ValueError, match="replay_images and replay_labels must be given"):
        train_model(
            x_train[:2],
            y_train[:2],
            config,
            replay_images=[item.image for item in replayed],
            replay_labels=[replayed[0].labels],
        )
    with pytest.raises(ValueError, match="replay_share must be in"):
        train_model(x_train[:2], y_train[:2], TrainingConfig(steps=1, replay_share=1.0))
