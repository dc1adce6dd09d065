"""Bad input in the napari widgets: a notification with one sentence, never a traceback.

Shape mismatches, unlabelled frames without the checkbox and errors inside the worker are
covered by ``test_widgets_workflow.py::test_errors_are_notified_not_raised``; removing the
labels layer or closing the viewer during training by ``test_removing_a_layer_stops_training``
and ``test_closing_the_viewer_stops_training``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import wait_done

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"
N_FRAMES = 6


class WritesSentinel:
    """Unpickling this object calls ``Path.write_text(target, "pwned")``: it runs code."""

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


@pytest.fixture
def notes(monkeypatch) -> dict[str, list[str]]:
    """Messages shown as napari error, info and warning notifications."""
    from napari.utils import notifications

    shown: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(notifications, "show_error", shown["error"].append)
    monkeypatch.setattr(notifications, "show_info", shown["info"].append)
    monkeypatch.setattr(notifications, "show_warning", shown["warning"].append)
    return shown


@pytest.fixture
def viewer(make_napari_viewer, lab_arrays):
    viewer = make_napari_viewer()
    viewer.add_image(lab_arrays[0][:N_FRAMES, 0], name="lab")
    viewer.add_labels(lab_arrays[1][:N_FRAMES, 0].astype(np.int32), name="lab labels")
    return viewer


@pytest.fixture(scope="module")
def tiny_model(untrained_model):
    return untrained_model


def widget(viewer, name: str):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def tiny_settings(train, name: str, epochs: int = 1) -> None:
    settings = train.settings
    settings.features.value, settings.depth.value = 4, 2
    settings.duration.value = "epochs"
    settings.epochs.value, settings.steps_per_epoch.value = epochs, 2
    settings.batch_size.value, settings.patch_size.value = 2, 32
    settings.validation_fraction.value = 0.2
    settings.device.value = "cpu"
    settings.model_name.value = name


def rgb_of(frame: np.ndarray) -> np.ndarray:
    grey = (frame * 255).astype(np.uint8)
    # Nuclei in red, an inverted (cytoplasm-like) green, an empty blue.
    return np.stack([grey, 255 - grey, np.zeros_like(grey)], axis=-1)


# ------------------------------------------------------------------------ colour layers
def test_rgb_layer_is_trained_on_as_grey_and_the_user_is_told(
    qtbot, viewer, lab_arrays, notes
) -> None:
    train = widget(viewer, "Train")
    colour = viewer.add_image(rgb_of(lab_arrays[0][0, 0]), name="colour", rgb=True)
    labels = viewer.add_labels(lab_arrays[1][0, 0].astype(np.int32), name="colour labels")
    tiny_settings(train, "from-rgb")
    train.image_layer.value, train.labels_layer.value = colour, labels
    assert train.frames_info.value == "1 of 1 frame(s) used"
    assert train.start() is not None
    wait_done(qtbot, train)
    assert any("'colour' is a colour (RGB) image: its red channel" in m for m in notes["info"])
    assert any("Split RGB" in m for m in notes["info"])
    assert train.registry.names() == ["from-rgb"] and not notes["error"]


def test_rgb_layer_is_segmented_as_grey(qtbot, viewer, lab_arrays, tiny_model, notes) -> None:
    from napari_unet_nuclei.prediction.inference import predict

    segment = widget(viewer, "Segment")
    segment.registry.add(tiny_model, "tiny")
    pixels = rgb_of(lab_arrays[0][1, 0])
    segment.image_layer.value = viewer.add_image(pixels, name="colour", rgb=True)
    segment.run()
    wait_done(qtbot, segment)
    probabilities = viewer.layers["colour probabilities"].data
    assert probabilities.shape == (128, 128) and viewer.layers["colour nuclei"].data.shape == (
        128,
        128,
    )
    grey = pixels[..., 0]  # the nuclear (red) channel, as rgb_of paints it
    np.testing.assert_allclose(probabilities, predict(tiny_model, grey), atol=1e-5)
    assert any("red channel was used" in m for m in notes["info"]) and not notes["error"]


def test_rgb_layer_is_evaluated_as_grey(qtbot, viewer, lab_arrays, tiny_model, notes) -> None:
    from napari_unet_nuclei._napari.evaluate_widget import PredictionSource
    from napari_unet_nuclei.evaluate.metrics import segmentation_scores
    from napari_unet_nuclei.prediction.inference import predict

    evaluate = widget(viewer, "Evaluate")
    evaluate.registry.add(tiny_model, "tiny")
    pixels = rgb_of(lab_arrays[0][2, 0])
    truth = lab_arrays[1][2, 0].astype(np.int32)
    evaluate.image_layer.value = viewer.add_image(pixels, name="colour", rgb=True)
    evaluate.truth_layer.value = viewer.add_labels(truth, name="colour truth")
    evaluate.source.value = PredictionSource("model", "tiny")
    assert evaluate.evaluate() is not None
    wait_done(qtbot, evaluate)
    expected = segmentation_scores(
        predict(tiny_model, pixels[..., 0]) >= evaluate.registry.threshold, truth > 0
    )
    assert evaluate.last_result.scores["f1"] == pytest.approx(expected["f1"], abs=1e-6)
    assert any("red channel was used" in m for m in notes["info"]) and not notes["error"]


def test_rgb_layer_is_ranked_as_grey(qtbot, viewer, lab_arrays, tiny_model, notes) -> None:
    ranking = widget(viewer, "Annotate next")
    ranking.registry.add(tiny_model, "tiny")
    ranking.image_layer.value = viewer.add_image(
        rgb_of(lab_arrays[0][3, 0]), name="colour", rgb=True
    )
    ranking.tile.value = 64
    assert ranking.run("tiles") is not None
    wait_done(qtbot, ranking)
    assert len(ranking.entries) == 4 and not notes["error"]
    assert any("red channel was used" in m for m in notes["info"])


def test_every_image_layer_includes_rgb_ones(qtbot, viewer, lab_arrays, tiny_model) -> None:
    segment = widget(viewer, "Segment")
    segment.registry.add(tiny_model, "tiny")
    viewer.add_image(rgb_of(lab_arrays[0][4, 0]), name="colour", rgb=True)
    segment.scope.value = "every image layer"
    segment.tile_size.value = 128
    segment.run()
    wait_done(qtbot, segment)
    assert viewer.layers["lab nuclei"].data.shape == (N_FRAMES, 128, 128)
    assert viewer.layers["colour nuclei"].data.shape == (128, 128)


# ------------------------------------------------------------------------- label values
def test_empty_labels_train_only_when_ticked_and_then_warn(qtbot, viewer, notes) -> None:
    train = widget(viewer, "Train")
    empty = viewer.add_labels(np.zeros((N_FRAMES, 128, 128), np.int32), name="empty")
    tiny_settings(train, "background")
    train.image_layer.value, train.labels_layer.value = viewer.layers["lab"], empty
    assert train.frames_info.value == f"0 of {N_FRAMES} frame(s) used"
    assert train.start() is None
    assert "No labelled frame in 'lab'" in notes["error"][-1]
    train.empty_frames_background.value = True
    assert train.frames_info.value == f"{N_FRAMES} of {N_FRAMES} frame(s) used"
    assert train.start() is not None
    wait_done(qtbot, train)
    assert any("learn that everything is background" in m for m in notes["warning"])
    assert train.registry.names() == ["background"]


def test_negative_labels_are_refused_before_training(viewer, notes) -> None:
    train = widget(viewer, "Train")
    negative = -np.asarray(viewer.layers["lab labels"].data)
    train.image_layer.value = viewer.layers["lab"]
    train.labels_layer.value = viewer.add_labels(negative, name="negative")
    assert train.start() is None and not train.running
    assert notes["error"][-1].startswith("Training failed: The labels for 'lab'")
    assert "negative values (min -1)" in notes["error"][-1]


# --------------------------------------------------------------- layers and viewer gone
def test_removing_the_image_layer_stops_training(qtbot, viewer) -> None:
    train = widget(viewer, "Train")
    tiny_settings(train, "removed", epochs=500)
    train.image_layer.value = viewer.layers["lab"]
    train.labels_layer.value = viewer.layers["lab labels"]
    train.start()
    qtbot.waitUntil(lambda: train.progress.value > 0, timeout=30_000)
    viewer.layers.remove("lab")
    wait_done(qtbot, train, timeout=15_000)
    assert train.registry.names() == []
    assert train.status.value == "Training stopped: the layer 'lab' was removed."


def big_stack(viewer, lab_arrays):
    return viewer.add_image(np.tile(lab_arrays[0][:8, 0], (6, 4, 4)), name="big")  # 48 x 512^2


def test_removing_the_image_layer_stops_segmentation(
    qtbot, viewer, lab_arrays, tiny_model, notes
) -> None:
    segment = widget(viewer, "Segment")
    segment.registry.add(tiny_model, "tiny")
    segment.image_layer.value = big_stack(viewer, lab_arrays)
    segment.tile_size.value = 64
    segment.run()
    qtbot.waitUntil(lambda: segment.progress.value > 0, timeout=30_000)
    viewer.layers.remove("big")
    wait_done(qtbot, segment, timeout=15_000)
    assert "Segmentation stopped: the layer 'big' was removed." in notes["info"]
    assert not any(layer.name.startswith("big") for layer in viewer.layers)
    assert not notes["error"]


def test_closing_the_viewer_stops_segmentation(qtbot, viewer, lab_arrays, tiny_model) -> None:
    segment = widget(viewer, "Segment")
    segment.registry.add(tiny_model, "tiny")
    segment.image_layer.value = big_stack(viewer, lab_arrays)
    segment.tile_size.value = 64
    segment.run()
    qtbot.waitUntil(lambda: segment.progress.value > 0, timeout=30_000)
    worker = segment.worker
    viewer.close()
    qtbot.waitUntil(lambda: not segment.running, timeout=15_000)
    assert worker.abort_requested


# ------------------------------------------------------------------- untrusted files
def test_crafted_data_files_are_refused_by_the_napari_reader(viewer, tmp_path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    evil = WritesSentinel(sentinel)
    pck = tmp_path / "evil.pck"
    pck.write_bytes(pickle.dumps((torch.rand(2, 1, 8, 8), evil)))
    npz = tmp_path / "evil.npz"
    np.savez(npz, X=np.array([evil, 1], dtype=object), Y=np.zeros((2, 8, 8)))
    n_layers = len(viewer.layers)
    for path, reason in ((pck, "pathlib.Path.write_text"), (npz, "object arrays")):
        with pytest.raises(Exception, match=f"refused to open {path.name}") as info:
            viewer.open(str(path), plugin=PLUGIN)
        assert (
            reason in str(info.value) and "nothing in it was run" in str(info.value)
        ) or "pickle can run code" in str(info.value)
    assert len(viewer.layers) == n_layers and not sentinel.exists()


def test_crafted_and_damaged_model_files_through_the_widgets(
    viewer, tiny_model, tmp_path, notes
) -> None:
    from napari_unet_nuclei.io.model_io import model_to_dict, save_model
    from napari_unet_nuclei.nn.model import create_model

    sentinel = tmp_path / "sentinel.txt"
    data = model_to_dict(tiny_model)
    data["summary"] = {"note": WritesSentinel(sentinel)}
    crafted = tmp_path / "crafted.pt"
    torch.save(data, crafted)
    fresh = create_model(features=4, depth=2, name="tiny")  # weights in plain layout
    good = save_model(fresh, tmp_path / "good.pt")
    damaged = tmp_path / "damaged.pt"
    raw = bytearray(good.read_bytes())
    weights = max(fresh.network.state_dict().values(), key=lambda t: t.numel())
    offset = raw.find(weights.numpy().tobytes())
    assert offset > 0
    raw[offset + 64] ^= 0x10
    damaged.write_bytes(bytes(raw))
    train, segment = widget(viewer, "Train"), widget(viewer, "Segment")
    assert train.model_files.load_from(crafted) is None
    assert notes["error"][-1].startswith("Loading the model crafted.pt failed:")
    assert "could run code" in notes["error"][-1]
    assert segment.model.load(crafted) is None and "could run code" in notes["error"][-1]
    assert train.model_files.load_from(damaged) is None
    assert "damaged.pt is damaged: its weights do not match the checksum" in notes["error"][-1]
    assert all("\n" not in message for message in notes["error"])
    assert train.registry.names() == [] and not sentinel.exists()
    assert train.model_files.load_from(good) == "tiny"  # a good file still loads afterwards
