"""The ledger of retraining rounds: records, held-out scores, rollback, regressions."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet_nuclei.evaluate.metrics import confusion_counts, precision_recall_curve
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.project.folder import HELD_OUT, ProjectError, TrainingProject
from napari_unet_nuclei.project.ledger import (
    HeldOutScores,
    Ledger,
    data_item,
    score_held_out,
    weights_sha256,
)
from napari_unet_nuclei.train.training import TrainingConfig, train_model

TRAIN_FRAMES, HELD_FRAMES = range(0, 6), range(70, 73)


def tiny(seed: int, **changes) -> TrainingConfig:
    settings = {
        "features": 4,
        "depth": 2,
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "patch_size": 64,
        "device": "cpu",
        "seed": seed,
    }
    settings.update(changes)
    return TrainingConfig(**settings)


@pytest.fixture(scope="module")
def two_models(lab_arrays):
    """Two tiny models trained on the same real frames with different seeds."""
    x, y, _ = lab_arrays
    images, labels = [x[i, 0] for i in TRAIN_FRAMES], [y[i, 0] for i in TRAIN_FRAMES]
    return [train_model(images, labels, tiny(seed)) for seed in (0, 1)]


@pytest.fixture(scope="module")
def held_out(lab_arrays):
    x, y, names = lab_arrays
    return (
        [x[i, 0] for i in HELD_FRAMES],
        [y[i, 0] for i in HELD_FRAMES],
        [str(names[i]) for i in HELD_FRAMES],
    )


def test_held_out_scores_match_the_engine_metrics(two_models, held_out) -> None:
    model = two_models[0]
    images, labels, names = held_out
    scores = score_held_out(model, images, labels, names=names)
    probabilities = [predict(model, image) for image in images]
    # At the model's default threshold (calibrated on its validation images).
    cut = model.threshold
    expected = sum(confusion_counts(p >= cut, t) for p, t in zip(probabilities, labels))
    assert scores.counts == {
        "tp": expected.tp,
        "fp": expected.fp,
        "fn": expected.fn,
        "tn": expected.tn,
    }
    assert scores.f1 == pytest.approx(expected.f1)
    assert scores.annotated_pixels == 3 * 128 * 128 and scores.names == names
    curve = precision_recall_curve(np.stack(probabilities), np.stack(labels))
    np.testing.assert_allclose(scores.precision_recall_curve().precision, curve.precision)
    assert scores.precision_recall_curve().average_precision == pytest.approx(
        curve.average_precision
    )

    # Annotated maps restrict the scored pixels.
    maps = [np.zeros((128, 128), bool) for _ in images]
    for m in maps:
        m[:64] = True
    half = score_held_out(model, images, labels, maps)
    top = sum(confusion_counts(p[:64] >= cut, t[:64]) for p, t in zip(probabilities, labels))
    assert half.counts["tp"] == top.tp and half.annotated_pixels == 3 * 64 * 128
    assert half.fingerprint != scores.fingerprint
    with pytest.raises(ValueError, match="No held-out images"):
        score_held_out(model, [], [])


def test_ledger_records_rounds_and_rollback_restores_exact_weights(
    tmp_path, two_models, held_out, lab_arrays
) -> None:
    x, y, names = lab_arrays
    project = TrainingProject.create(tmp_path / "p")
    images, labels, held_names = held_out
    for image, label, name in zip(images, labels, held_names):
        project.add(image, label, name, role=HELD_OUT)
    data = [data_item(str(names[i]), x[i, 0], y[i, 0], source="layer") for i in TRAIN_FRAMES]
    ledger = Ledger(project.folder)
    assert len(ledger) == 0 and not ledger.path.exists()
    rounds = []
    for number, model in enumerate(two_models, start=1):
        scores = score_held_out(model, images, labels, names=held_names)
        item = ledger.record(
            model,
            data=data,
            settings=tiny(number - 1).to_dict(),
            training={"stop_reason": "completed", "best_val_f1": float("nan")},
        )
        assert item.number == number and item.held_out is None
        item = ledger.set_held_out(number, scores)
        rounds.append(item)
        assert (project.folder / f"models/round-{number:03d}.pt").is_file()

    reopened = Ledger(project.folder)
    assert [r.number for r in reopened.rounds] == [1, 2]
    first = reopened.round(1)
    assert first.n_images == 6 and first.annotated_pixels == 6 * 128 * 128
    assert first.data[0]["name"] == str(names[0]) and len(first.data[0]["sha256"]) == 64
    assert first.settings["seed"] == 0 and reopened.round(2).settings["seed"] == 1
    assert first.training["best_val_f1"] is None  # NaN is stored as null
    assert first.held_out.f1 == pytest.approx(rounds[0].held_out.f1)
    assert first.model_file == "models/round-001.pt"
    stored = json.loads(ledger.path.read_text())
    assert stored["format"] == "napari-unet-nuclei-ledger" and len(stored["rounds"]) == 2

    for number, model in enumerate(two_models, start=1):
        restored = reopened.rollback(number)
        assert weights_sha256(restored) == weights_sha256(model)
        for key, tensor in model.network.state_dict().items():
            assert torch.equal(restored.network.state_dict()[key], tensor), key
        np.testing.assert_array_equal(predict(restored, images[0]), predict(model, images[0]))
    assert weights_sha256(two_models[0]) != weights_sha256(two_models[1])

    curve = reopened.curve(2)
    np.testing.assert_array_equal(curve.recall, rounds[1].held_out.precision_recall_curve().recall)
    with pytest.raises(KeyError, match="no round 7"):
        reopened.rollback(7)

    # A model file changed after recording is refused.
    path = project.folder / "models/round-001.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ProjectError, match="changed after it was recorded"):
        reopened.rollback(1)


def make_scores(f1: float, fingerprint: str = "set-a") -> HeldOutScores:
    curve = {"thresholds": [0.5], "precision": [f1], "recall": [f1], "average_precision": f1}
    return HeldOutScores(
        names=["a"],
        fingerprint=fingerprint,
        threshold=0.5,
        counts={"tp": 1, "fp": 0, "fn": 0, "tn": 0},
        scores={"precision": f1, "recall": f1, "f1": f1, "iou": f1, "accuracy": f1},
        annotated_pixels=1,
        curve=curve,
    )


def test_a_worse_round_is_flagged(tmp_path, two_models) -> None:
    project = TrainingProject.create(tmp_path / "p")
    ledger = Ledger(project.folder)
    model = two_models[0]
    for f1 in (0.60, 0.80, 0.70):
        item = ledger.record(model, data=[], settings={})
        ledger.set_held_out(item.number, make_scores(f1))
    assert [ledger.is_regression(n) for n in (1, 2, 3)] == [False, False, True]
    warning = ledger.regression_warning(3)
    assert "Round 3" in warning and "0.700" in warning and "round 2 (0.800)" in warning
    assert ledger.regression_warning(2) is None
    assert ledger.best_earlier(3).number == 2

    # Rounds scored on another held-out set are not compared.
    item = ledger.record(model, data=[], settings={})
    ledger.set_held_out(item.number, make_scores(0.1, fingerprint="set-b"))
    assert not ledger.is_regression(4) and ledger.best_earlier(4) is None
    # A round without held-out scores is never flagged.
    item = ledger.record(model, data=[], settings={})
    assert not ledger.is_regression(item.number)
    assert replace(ledger.round(3), held_out=None).held_out is None


def test_a_damaged_ledger_gives_a_clear_error(tmp_path) -> None:
    project = TrainingProject.create(tmp_path / "p")
    (project.folder / "ledger.json").write_text("{ not json")
    with pytest.raises(ProjectError, match="damaged"):
        Ledger(project.folder)
    (project.folder / "ledger.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ProjectError, match="not a napari-unet-nuclei ledger"):
        Ledger(project.folder)
