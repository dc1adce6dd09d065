"""The Train widget's partial annotations, project folder and ledger, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gui

N_FRAMES = 6
HELD_OUT_FRAMES = (4, 5)


@pytest.fixture
def shown(monkeypatch) -> dict[str, list[str]]:
    """Messages of napari's info, warning and error notifications."""
    from napari.utils import notifications as module

    messages: dict[str, list[str]] = {"info": [], "warning": [], "error": []}
    for kind in messages:
        monkeypatch.setattr(module, f"show_{kind}", messages[kind].append)
    return messages


@pytest.fixture
def lab_stack(lab_arrays):
    x, y, _ = lab_arrays
    return x[:N_FRAMES, 0].copy(), y[:N_FRAMES, 0].astype(np.int32)


def make_train(make_napari_viewer, images=None, labels=None):
    from napari_unet_nuclei._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    if images is not None:
        viewer.add_image(images, name="lab")
        viewer.add_labels(labels, name="lab labels")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train")
    if images is not None:
        train.image_layer.value = viewer.layers["lab"]
        train.labels_layer.value = viewer.layers["lab labels"]
    settings = train.settings
    settings.features.value, settings.depth.value = 4, 2
    settings.epochs.value, settings.steps_per_epoch.value = 2, 3
    settings.batch_size.value, settings.patch_size.value = 4, 64
    settings.device.value = "cpu"
    return viewer, train


def run(qtbot, train, name: str) -> None:
    train.settings.model_name.value = name
    assert train.start() is not None
    qtbot.waitUntil(lambda: not train.running, timeout=90_000)
    assert train.last_result is not None and train.last_result.history, train.status.value


def test_shapes_layer_limits_training_to_annotated_regions(
    qtbot, make_napari_viewer, lab_stack, shown
) -> None:
    from napari_unet_nuclei.project.ledger import weights_sha256

    images, labels = lab_stack
    viewer, train = make_train(make_napari_viewer, images, labels)
    # Rectangles drawn on frames 1 and 3 of the stack (their first coordinate is the frame).
    regions = [
        np.array([[1, 10, 20], [1, 10, 100], [1, 80, 100], [1, 80, 20]]),
        np.array([[3, 40, 0], [3, 40, 90], [3, 120, 90], [3, 120, 0]]),
    ]
    shapes = viewer.add_shapes(regions, shape_type="rectangle", name="corrected")
    train.reset_choices()
    train.annotated_layer.value = shapes
    assert train.frames_info.value.startswith("2 of 6 frame(s) with annotated regions")

    run(qtbot, train, "regions")
    first = train.registry.get("regions")
    used = first.summary["train_names"] + first.summary["val_names"]
    # Two annotated frames: each lends a band of its rows to validation.
    assert sorted(used) == [f"lab [{i}] ({band})" for i in (1, 3) for band in ("bottom", "top")]
    pixels = 71 * 81 + 81 * 91
    assert train.frames_info.value == (
        f"Training on the annotated regions of 2 of 6 frame(s) ({pixels:,} px)."
    )

    # Labels changed outside the rectangles (and on the other frames): the same weights.
    layer = viewer.layers["lab labels"]
    changed = layer.data.copy()
    changed[1, 90:, :] = 7
    changed[3, :30, :] = 0
    changed[0] = 0
    layer.data = changed
    run(qtbot, train, "regions again")
    assert weights_sha256(train.registry.get("regions again")) == weights_sha256(first)

    # Without the shapes layer the whole frames count: different weights.
    train.annotated_layer.value = None
    run(qtbot, train, "whole frames")
    assert weights_sha256(train.registry.get("whole frames")) != weights_sha256(first)
    assert not shown["error"]


def test_project_folder_is_reopened_by_a_new_widget(
    qtbot, make_napari_viewer, lab_stack, tmp_path, shown
) -> None:
    from napari_unet_nuclei.project.folder import TrainingProject

    images, labels = lab_stack
    folder = tmp_path / "my project"
    viewer, train = make_train(make_napari_viewer, images, labels)
    assert train.projects.open_project(folder) is not None
    assert (folder / "project.json").is_file()

    shapes = viewer.add_shapes(
        [np.array([[0, 0], [0, 63], [63, 63], [63, 0]])], shape_type="rectangle", name="done"
    )
    train.reset_choices()
    train.annotated_layer.value = shapes
    viewer.dims.set_current_step(0, 2)
    entry = train.projects.add_to_training_set()
    assert entry is not None and entry.name == "lab [2]" and entry.annotated_pixels == 64 * 64
    train.annotated_layer.value = None
    viewer.dims.set_current_step(0, 4)
    held = train.projects.add_to_training_set(role="held-out")
    assert held.role == "held-out" and held.annotated_pixels == 128 * 128
    assert "1 training image(s)" in train.projects.panel.summary.value

    index = json.loads((folder / "project.json").read_text())
    assert [e["name"] for e in index["entries"]] == ["lab [2]", "lab [4]"]
    assert len(list((folder / "images").glob("*.tif"))) == 2
    assert len(list((folder / "annotated").glob("*.tif"))) == 1

    # napari reopened: an empty viewer, a new widget, the same folder.
    _, again = make_train(make_napari_viewer)
    project = again.projects.open_project(folder)
    assert project.names("train") == ["lab [2]"] and project.names("held-out") == ["lab [4]"]
    sample = project.load("lab [2]")
    np.testing.assert_array_equal(sample.image, images[2])
    np.testing.assert_array_equal(sample.labels, labels[2])
    assert sample.annotated[:64, :64].all() and not sample.annotated[64:].any()
    assert again.projects.table.rowCount() == 0

    # Training on the project set alone (no layers open) records round 1, scored on
    # the held-out image.
    run(qtbot, again, "from project")
    assert again.projects.table.rowCount() == 1
    item = again.projects.last_round
    assert item.number == 1 and [d["source"] for d in item.data] == ["project"]
    assert item.annotated_pixels == 64 * 64 and item.held_out.names == ["lab [4]"]
    assert again.projects.table.text(0, "annotated px") == "4,096"
    assert again.projects.table.text(0, "held-out F1") == f"{item.held_out.f1:.3f}"
    assert TrainingProject.open(folder).entries == project.entries
    assert not shown["error"]


def test_rounds_ledger_rollback_compare_and_worse_round_warning(
    qtbot, make_napari_viewer, lab_stack, tmp_path, shown
) -> None:
    from napari_unet_nuclei.project.ledger import Ledger

    images, labels = lab_stack
    viewer, train = make_train(make_napari_viewer, images, labels)
    train.projects.open_project(tmp_path / "p")
    for frame in HELD_OUT_FRAMES:
        viewer.dims.set_current_step(0, frame)
        assert train.projects.add_to_training_set(role="held-out") is not None

    # Round 1: the held-out frames of the open stack are left out of training; enough
    # steps for the network to find nuclei (36 steps of 8 patches).
    settings = train.settings
    settings.features.value, settings.batch_size.value, settings.patch_size.value = 8, 8, 128
    settings.epochs.value, settings.steps_per_epoch.value = 3, 12
    run(qtbot, train, "round-one")
    assert any("held-out images of the project" in m for m in shown["info"])
    first = train.projects.last_round
    assert sorted(d["name"] for d in first.data) == [f"lab [{i}]" for i in range(4)]
    # The recorded held-out F1 is the round's model on the held-out frames, pixels pooled.
    from napari_unet_nuclei.evaluate.metrics import segmentation_scores
    from napari_unet_nuclei.prediction.inference import predict

    model = train.registry.get("round-one")
    frames = list(HELD_OUT_FRAMES)
    predicted = predict(model, images[frames]) >= model.threshold
    expected = segmentation_scores(predicted, labels[frames] > 0)["f1"]
    assert first.held_out is not None
    assert first.held_out.f1 == pytest.approx(expected, abs=1e-6)

    # Round 2 on labels wiped by mistake: worse on the held-out set, with a warning.
    viewer.layers["lab labels"].data = np.zeros_like(labels)
    train.empty_frames_background.value = True
    train.settings.epochs.value = 2
    run(qtbot, train, "round-two")
    second = train.projects.last_round
    assert second.number == 2 and second.held_out.f1 < first.held_out.f1
    assert (
        train.projects.last_warning is not None
        and "worse than round 1" in train.projects.last_warning
    )
    assert train.projects.last_warning in shown["warning"]
    assert train.projects.table.rowCount() == 2
    assert [train.projects.table.text(r, "round") for r in (0, 1)] == ["1", "2"]
    assert Ledger(tmp_path / "p").is_regression(2)

    # Roll back to round 1: its exact weights become the current model.
    train.projects.table.select_rounds([1])
    name = train.projects.rollback()
    assert name == "round-one round 1" and train.model_files.current_name == name
    assert train.start_from.model_name == name
    restored = train.registry.get(name).network.state_dict()
    original = train.registry.get("round-one").network.state_dict()
    assert restored.keys() == original.keys()
    assert all(torch.equal(restored[k], original[k]) for k in original)

    # Compare rounds 1 and 2: both held-out curves in the Evaluate plot.
    train.projects.table.select_rounds([1, 2])
    curves = train.projects.compare_rounds()
    assert curves == ["round 1 (held-out)", "round 2 (held-out)"]
    _, evaluate = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "Evaluate")
    assert set(curves) <= set(evaluate.pr_plot.curves)
    np.testing.assert_allclose(
        evaluate.pr_plot.curves["round 1 (held-out)"].precision,
        first.held_out.precision_recall_curve().precision,
    )
    assert train.projects.compare_rounds([2]) == ["round 2 (held-out)"]
    assert "round 1 (held-out)" not in evaluate.pr_plot.curves
    assert not shown["error"]


def test_stored_images_are_listed_and_removed_after_confirmation(
    make_napari_viewer, lab_stack, tmp_path, shown, monkeypatch
) -> None:
    from napari_unet_nuclei._napari import project_controller
    from napari_unet_nuclei.project.folder import TrainingProject

    images, labels = lab_stack
    folder = tmp_path / "project"
    viewer, train = make_train(make_napari_viewer, images, labels)
    panel = train.projects.panel
    assert not panel.remove_button.enabled  # no project yet
    train.projects.open_project(folder)
    for frame, role in ((1, "train"), (3, "train"), (5, "held-out")):
        viewer.dims.set_current_step(0, frame)
        assert train.projects.add_to_training_set(role=role) is not None
    box = panel.stored.native
    assert [box.itemText(i) for i in range(1, box.count())] == [  # 0: "-----" (none)
        "lab [1] (train)",
        "lab [3] (train)",
        "lab [5] (held-out)",
    ]

    # The user says No: nothing is removed.
    answers = []
    monkeypatch.setattr(
        project_controller,
        "confirm_removal",
        lambda name, parent=None: answers.append(name) or False,
    )
    panel.stored.value = "lab [3]"
    panel.remove_button.native.click()
    assert answers == ["lab [3]"] and len(TrainingProject.open(folder).entries) == 3

    # Yes: the entry and its files go; the list and the summary follow.
    monkeypatch.setattr(project_controller, "confirm_removal", lambda name, parent=None: True)
    panel.remove_button.native.click()
    project = TrainingProject.open(folder)
    assert project.names("train") == ["lab [1]"] and project.names("held-out") == ["lab [5]"]
    assert len(list((folder / "images").glob("*.tif"))) == 2
    assert [value for value in panel.stored.choices if value] == ["lab [1]", "lab [5]"]
    assert panel.summary.value.startswith("1 training image(s)")
    assert "Removed 'lab [3]'" in train.status.value and not shown["error"]

    # A name that is not (or no longer) there: one sentence, nothing else changes.
    assert train.projects.remove_from_project("lab [3]") is False
    assert "No image named 'lab [3]'" in shown["error"][-1]
    assert len(TrainingProject.open(folder).entries) == 2
