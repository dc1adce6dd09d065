"""End-to-end use of the Train, Segment and Evaluate widgets on the lab's real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import wait_done

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"
N_FRAMES = 12


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def lab_viewer(make_napari_viewer, lab_npz):
    """A viewer holding the first frames of the lab file, opened with the plugin's reader."""
    from napari_unet_nuclei._napari.reader import read_lab_file

    (images, _, _), (labels, _, _) = read_lab_file(str(lab_npz))
    viewer = make_napari_viewer()
    viewer.add_image(images[:N_FRAMES], name="lab")
    viewer.add_labels(labels[:N_FRAMES], name="lab labels")
    return viewer


@pytest.fixture
def notifications(monkeypatch) -> list[str]:
    """Messages passed to napari's show_error."""
    from napari.utils import notifications as module

    shown: list[str] = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


@pytest.fixture(scope="module")
def tiny_model(lab_tiny_model):
    return lab_tiny_model


def add_widgets(viewer) -> dict:
    """The three widgets, added through the manifest."""
    return {
        name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        for name in ("Train", "Segment", "Evaluate")
    }


def fast_settings(train, name: str, seed: int = 0) -> None:
    """Tiny training: F=4, depth 2, 2 epochs of 3 steps of 4 patches of 64 pixels."""
    train.settings.features.value = 4
    train.settings.depth.value = 2
    train.settings.duration.value = "epochs"
    train.settings.epochs.value = 2
    train.settings.steps_per_epoch.value = 3
    train.settings.batch_size.value = 4
    train.settings.patch_size.value = 64
    train.settings.validation_fraction.value = 0.2
    train.settings.device.value = "cpu"
    train.settings.seed.value = seed
    train.settings.model_name.value = name


def count_network_runs(monkeypatch) -> list[int]:
    """Count calls of the engine's iter_frame_logits (the network running on an image:
    ``iter_predict`` and the segment workflow both run it)."""
    from napari_unet_nuclei.prediction import inference

    calls: list[int] = []
    original = inference.iter_frame_logits

    def counting(*args, **kwargs):
        calls.append(1)
        return (yield from original(*args, **kwargs))

    monkeypatch.setattr(inference, "iter_frame_logits", counting)
    return calls


def click_curve(qtbot, plot, name: str) -> float:
    """Click a point of ``name``'s curve that resolves to itself; return its threshold."""
    from qtpy.QtCore import QPoint, Qt

    curve = plot.curves[name]
    for index in range(len(curve.thresholds) - 20, 0, -1):
        x, y = plot.to_screen(curve.recall[index], curve.precision[index])
        found = plot.nearest_point(round(x), round(y))
        if found[:2] == (name, index) and abs(curve.thresholds[index] - plot.threshold) > 0.05:
            qtbot.mouseClick(
                plot.canvas, Qt.MouseButton.LeftButton, pos=QPoint(round(x), round(y))
            )
            return float(curve.thresholds[index])
    raise AssertionError("no pickable point found")


# ----------------------------------------------------------------------------- tests
def test_train_segment_threshold_evaluate(qtbot, lab_viewer, monkeypatch) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei._napari.evaluate_widget import PredictionSource
    from napari_unet_nuclei.evaluate.metrics import error_map, segmentation_scores

    viewer = lab_viewer
    widgets = add_widgets(viewer)
    train, segment, evaluate = widgets["Train"], widgets["Segment"], widgets["Evaluate"]
    image, truth = viewer.layers["lab"], viewer.layers["lab labels"]

    # Train: the model appears in the other widgets' pickers.
    fast_settings(train, "small-a")
    train.image_layer.value, train.labels_layer.value = image, truth
    assert train.start() is not None
    wait_done(qtbot, train)
    assert train.last_result.reason == "completed"
    assert train.registry.names() == ["small-a"]
    assert train.frames_info.value == f"Training on {N_FRAMES} of {N_FRAMES} frames."
    assert len(train.loss_plot.epochs) == 2
    # Every step's loss is drawn between the epoch points (issue 22: 2 points for a run).
    plot = train.loss_plot
    assert len(plot.step_loss) == train.last_result.steps > len(plot.epochs)
    assert plot.step_positions == sorted(plot.step_positions)
    assert 0 < plot.step_positions[0] <= 1 and plot.step_positions[-1] == pytest.approx(2.0)
    plot.canvas.grab()  # paints it, shown or not
    assert plot.drawn_steps == len(plot.step_loss)  # all drawn at the end
    assert segment.model.model_name == "small-a"
    assert evaluate.source.value == PredictionSource("model", "small-a")

    # Segment all frames.
    runs = count_network_runs(monkeypatch)
    segment.image_layer.value = image
    segment.scope.value = "all frames"
    segment.tile_size.value = 128
    segment.run()
    wait_done(qtbot, segment)
    probabilities = viewer.layers["lab probabilities"]
    nuclei = viewer.layers["lab nuclei"]
    assert probabilities.data.shape == nuclei.data.shape == (N_FRAMES, 128, 128)
    assert probabilities.data.dtype == np.float32 and nuclei.data.dtype == np.uint8
    assert nuclei.metadata[OWNER_KEY]["role"] == "nuclei"
    assert len(runs) == 1 and segment.runs_started == 1

    # The threshold slider re-thresholds without running the network.
    probs = np.asarray(probabilities.data)
    for value in (0.3, 0.7):
        segment.threshold.value = value
        np.testing.assert_array_equal(nuclei.data, (probs >= value).astype(np.uint8))
    assert len(runs) == 1 and segment.runs_started == 1
    assert evaluate.registry.threshold == pytest.approx(0.7)

    # Evaluate the model: the cached probabilities are reused, the table matches the engine.
    evaluate.image_layer.value, evaluate.truth_layer.value = image, truth
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    assert len(runs) == 1
    expected = segmentation_scores(probs >= 0.7, truth.data)
    for key, value in expected.items():
        assert evaluate.table.value(key, "all frames") == pytest.approx(value)
    errors = viewer.layers["lab errors"]
    np.testing.assert_array_equal(errors.data, error_map(probs >= 0.7, truth.data))
    assert viewer.layers[-1] is errors
    assert type(errors.colormap).__name__ == "DirectLabelColormap"
    assert evaluate.pr_plot.line_count() == 1

    # A second, different model: one more line on the precision-recall plot.
    fast_settings(train, "small-b", seed=1)
    train.start()
    wait_done(qtbot, train)
    assert evaluate.source.value == PredictionSource("model", "small-b")
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    assert len(runs) == 2  # small-b had never run on this image
    assert evaluate.pr_plot.line_count() == 2
    stack = f"lab ({N_FRAMES} frames)"
    assert set(evaluate.pr_plot.curves) == {f"small-a on {stack}", f"small-b on {stack}"}

    # Clicking a curve sets Segment's threshold and its mask.
    picked = click_curve(qtbot, evaluate.pr_plot, f"small-a on {stack}")
    assert segment.threshold.value == pytest.approx(picked, abs=0.006)
    np.testing.assert_array_equal(nuclei.data, (probs >= segment.threshold.value).astype(np.uint8))
    assert len(runs) == 2 and segment.runs_started == 1

    # The same model on another image adds a curve; on the same image again, replaces it.
    part = viewer.add_image(image.data[:3], name="part")
    part_truth = viewer.add_labels(truth.data[:3], name="part truth")
    evaluate.image_layer.value, evaluate.truth_layer.value = part, part_truth
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    assert set(evaluate.pr_plot.curves) == {
        f"small-a on {stack}",
        f"small-b on {stack}",
        "small-b on part (3 frames)",
    }
    legend = evaluate.pr_plot.legend_labels()
    assert [entry.split(" (AP")[0] for entry in legend] == list(evaluate.pr_plot.curves)
    evaluate.clear_curves_button.native.click()
    assert evaluate.pr_plot.line_count() == 0


def test_current_frame_fills_only_that_frame(qtbot, lab_viewer, tiny_model) -> None:
    viewer = lab_viewer
    segment = add_widgets(viewer)["Segment"]
    segment.registry.add(tiny_model, "tiny")
    segment.image_layer.value = viewer.layers["lab"]
    segment.scope.value = "current frame"
    for frame in (5, 7):
        viewer.dims.set_current_step(0, frame)
        segment.run()
        wait_done(qtbot, segment)
    probabilities = viewer.layers["lab probabilities"].data
    assert probabilities.shape == (N_FRAMES, 128, 128)
    computed = [i for i in range(N_FRAMES) if probabilities[i].any()]
    assert computed == [5, 7]
    nuclei = viewer.layers["lab nuclei"].data
    assert not nuclei[[0, 1, 2, 3, 4, 6, 8, 9, 10, 11]].any()


def test_every_image_layer_and_user_layers_untouched(qtbot, lab_viewer, tiny_model) -> None:
    viewer = lab_viewer
    segment = add_widgets(viewer)["Segment"]
    segment.registry.add(tiny_model, "tiny")
    viewer.add_image(viewer.layers["lab"].data[:3, :64, :96].copy(), name="crop")
    user = viewer.add_labels(np.zeros((N_FRAMES, 128, 128), np.int32), name="lab nuclei")
    user.data[0, :4, :4] = 9
    segment.scope.value = "every image layer"
    for _ in range(2):  # the second run replaces the outputs
        segment.run()
        wait_done(qtbot, segment)
    names = [layer.name for layer in viewer.layers]
    assert names.count("lab nuclei [2]") == 1 and names.count("crop nuclei") == 1
    assert names.count("lab probabilities") == 1 and names.count("crop probabilities") == 1
    assert user.data[0, 0, 0] == 9 and int(user.data.sum()) == 9 * 16
    assert viewer.layers["crop nuclei"].data.shape == (3, 64, 96)


def test_evaluate_a_labels_layer_and_the_current_frame(qtbot, lab_viewer) -> None:
    from napari_unet_nuclei._napari.evaluate_widget import PredictionSource
    from napari_unet_nuclei.evaluate.metrics import per_frame_scores, segmentation_scores

    viewer = lab_viewer
    evaluate = add_widgets(viewer)["Evaluate"]
    truth = viewer.layers["lab labels"].data
    guess = np.roll(truth, 3, axis=-1)
    viewer.add_labels(guess, name="guess")
    evaluate.reset_choices()
    evaluate.source.value = PredictionSource("layer", "guess")
    evaluate.truth_layer.value = viewer.layers["lab labels"]
    evaluate.image_layer.value = viewer.layers["lab"]
    viewer.dims.set_current_step(0, 4)
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    for key, value in segmentation_scores(guess, truth).items():
        assert evaluate.table.value(key) == pytest.approx(value)
    frame4 = per_frame_scores(guess, truth)[4]
    assert evaluate.table.value("f1", "current frame") == pytest.approx(frame4["f1"])
    viewer.dims.set_current_step(0, 2)
    frame2 = per_frame_scores(guess, truth)[2]
    assert evaluate.table.value("f1", "current frame") == pytest.approx(frame2["f1"])
    assert evaluate.pr_plot.line_count() == 0  # a layer has no threshold to sweep


def test_cancel_stops_training(qtbot, lab_viewer) -> None:
    widgets = add_widgets(lab_viewer)
    train, segment = widgets["Train"], widgets["Segment"]
    picked_before = segment.model.value
    fast_settings(train, "cancelled")
    train.settings.duration.value = "time budget"
    train.settings.time_budget.value = 120
    train.settings.steps_per_epoch.value = 2
    train.start()
    qtbot.waitUntil(
        lambda: train.progress.value > 0 or "epoch" in train.status.value, timeout=30_000
    )
    qtbot.waitUntil(lambda: len(train.loss_plot.epochs) >= 1, timeout=30_000)
    # The plot shows what training chooses by: the validation nuclei.
    assert train.loss_plot.f1_label == "validation F1 (nuclei)"
    train.cancel()
    wait_done(qtbot, train, timeout=10_000)
    assert train.last_result.reason == "cancelled"
    assert train.registry.names() == ["cancelled"]  # best weights so far are kept
    # ... but a cancelled run never becomes the model Segment works with.
    assert segment.model.value == picked_before != "cancelled"
    assert "cancelled" in [value for _, value in segment.model._choices()]


def test_cancel_stops_a_stack_segmentation(qtbot, lab_viewer, tiny_model) -> None:
    viewer = lab_viewer
    segment = add_widgets(viewer)["Segment"]
    segment.registry.add(tiny_model, "tiny")
    big = np.tile(viewer.layers["lab"].data, (4, 4, 4))  # 48 frames of 512 x 512
    segment.image_layer.value = viewer.add_image(big, name="big")
    segment.scope.value = "all frames"
    segment.tile_size.value = 64
    segment.run()
    qtbot.waitUntil(lambda: segment.progress.value > 0, timeout=30_000)
    segment.cancel()
    wait_done(qtbot, segment, timeout=10_000)
    assert segment.progress.value < 1000
    assert "big nuclei" not in [layer.name for layer in viewer.layers]


def _segment_stack(qtbot, segment, viewer):
    """Segment every frame of the lab stack with the tiny model; return the output copies."""
    segment.image_layer.value = viewer.layers["lab"]
    segment.scope.value = "all frames"
    segment.run()
    wait_done(qtbot, segment)
    return (
        np.array(viewer.layers["lab nuclei"].data, copy=True),
        np.array(viewer.layers["lab probabilities"].data, copy=True),
    )


def test_a_cancelled_rerun_keeps_the_earlier_complete_result(qtbot, lab_viewer, tiny_model):
    from napari_unet_nuclei._napari._jobs import SegmentFrame
    from napari_unet_nuclei._napari._layers import OWNER_KEY

    viewer = lab_viewer
    segment = add_widgets(viewer)["Segment"]
    segment.registry.add(tiny_model, "tiny")
    nuclei, probabilities = _segment_stack(qtbot, segment, viewer)
    assert nuclei.shape == (N_FRAMES, 128, 128) and nuclei.any()

    segment.threshold.value = 0.3  # the re-run differs: its frames would change the masks
    segment.run()
    frames_seen: list[int] = []

    running_names: list[list[str]] = []

    def cancel_after_two_frames(event) -> None:
        if isinstance(event, SegmentFrame):
            frames_seen.append(event.frame)
            running_names.append([layer.name for layer in viewer.layers])
            if len(frames_seen) == 2:
                segment.cancel()

    segment.worker.yielded.connect(cancel_after_two_frames)
    wait_done(qtbot, segment)

    # While it ran, its frames filled the layers the user guide names, beside the result.
    assert "lab nuclei (running)" in running_names[-1] and "lab nuclei" in running_names[-1]
    assert not [n for n in running_names[-1] if n.endswith("]")], running_names[-1]
    names = [layer.name for layer in viewer.layers]
    np.testing.assert_array_equal(viewer.layers["lab probabilities"].data, probabilities)
    # The earlier masks follow only the threshold slider: same probabilities, new threshold.
    np.testing.assert_array_equal(viewer.layers["lab nuclei"].data, probabilities >= 0.3)
    kept = [name for name in names if name.startswith("lab nuclei (unfinished run")]
    assert len(kept) == 1, names
    unfinished = viewer.layers[kept[0]]
    owner = unfinished.metadata[OWNER_KEY]
    assert owner["role"] == "unfinished nuclei" and 2 <= owner["frames_done"] < N_FRAMES
    assert unfinished.data[: owner["frames_done"]].any()
    assert not np.asarray(unfinished.data[owner["frames_done"] :]).any()
    assert not [name for name in names if "(running)" in name]
    assert "earlier result of 'lab' is unchanged" in segment.status.value
    assert kept[0] in segment.status.value

    # A re-run that completes replaces the result and leaves no running layers behind.
    segment.run()
    wait_done(qtbot, segment)
    names = [layer.name for layer in viewer.layers]
    assert names.count("lab nuclei") == 1 and not [n for n in names if "(running)" in n]
    np.testing.assert_allclose(viewer.layers["lab probabilities"].data, probabilities, atol=1e-5)
    assert segment.status.value.startswith("Segmented 1 image(s)")


def test_errors_are_notified_not_raised(qtbot, lab_viewer, notifications) -> None:
    viewer = lab_viewer
    widgets = add_widgets(viewer)
    train, segment, evaluate = widgets["Train"], widgets["Segment"], widgets["Evaluate"]
    wrong = viewer.add_labels(np.zeros((N_FRAMES, 64, 64), np.int32), name="wrong")
    train.image_layer.value, train.labels_layer.value = viewer.layers["lab"], wrong
    assert train.start() is None
    assert "do not match" in notifications[-1] and "Traceback" not in notifications[-1]
    assert not train.running

    train.labels_layer.value = viewer.add_labels(np.zeros((N_FRAMES, 128, 128), np.int32))
    assert train.start() is None
    assert "No labelled frame" in notifications[-1]

    # Segment is never without a model: the built-in one is selected at start.
    assert segment.model.model_name == "fluo-nuclei"

    evaluate.truth_layer.value = wrong
    evaluate.reset_choices()
    assert evaluate.evaluate() is None
    assert "Evaluation failed" in notifications[-1]

    # An engine error raised inside the worker is notified too (CUDA is absent here).
    train.labels_layer.value = viewer.layers["lab labels"]
    fast_settings(train, "no-gpu")
    train.settings.device.value = "cuda"
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert train.start() is not None
    wait_done(qtbot, train)
    assert "CUDA" in notifications[-1] and notifications[-1].startswith("Training failed")
    assert train.registry.names() == []


def saved(qtbot, files, path: Path) -> Path | None:
    """Save with the Train dock's *Save model...* row and wait for the background save."""
    worker = files.save_to(path)
    if worker is None:
        return None
    assert files.saving and files.save_button.text == "Cancel saving"
    assert not files.load_button.enabled
    qtbot.waitUntil(lambda: not files.saving, timeout=60_000)
    assert files.save_button.text == "Save model..." and files.load_button.enabled
    return files.last_saved


def test_save_and_load_model(qtbot, lab_viewer, tiny_model, tmp_path: Path, notifications):
    import torch

    train = add_widgets(lab_viewer)["Train"]
    assert saved(qtbot, train.model_files, tmp_path / "none.pt") is None
    assert "no model yet" in notifications[-1]
    train.model_files.current_name = train.registry.add(tiny_model, "tiny")
    written = saved(qtbot, train.model_files, tmp_path / "tiny.pt")
    assert written == tmp_path / "tiny.pt" and written.is_file()
    assert train.status.value == f"Saved tiny to {written}."
    name = train.model_files.load_from(written)
    assert name == "tiny (2)" and train.start_from.model_name == name
    loaded = train.registry.get(name)
    for a, b in zip(tiny_model.network.parameters(), loaded.network.parameters()):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert train.model_files.load_from(tmp_path / "bad.pt") is None
    assert "Loading the model bad.pt failed" in notifications[-1]
    # A folder where the file should go: one sentence, nothing written.
    (tmp_path / "taken.pt").mkdir()
    assert saved(qtbot, train.model_files, tmp_path / "taken.pt") is None
    assert notifications[-1].startswith("Saving the model failed:")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.pt", "taken.pt", "tiny.pt"]


def test_save_as_other_formats(qtbot, lab_viewer, tiny_model, tmp_path: Path) -> None:
    """Save as... by file ending: bioimage.io package, ONNX, TorchScript."""
    import zipfile

    import torch

    from napari_unet_nuclei.io.bioimageio_package import import_bioimageio

    train = add_widgets(lab_viewer)["Train"]
    train.model_files.current_name = train.registry.add(tiny_model, "tiny")
    package = saved(qtbot, train.model_files, tmp_path / "tiny.zip")
    assert package is not None and "rdf.yaml" in zipfile.ZipFile(package).namelist()
    imported = import_bioimageio(package)
    for a, b in zip(tiny_model.network.parameters(), imported.network.parameters()):
        assert torch.equal(a, b)
    onnx_file = saved(qtbot, train.model_files, tmp_path / "tiny.onnx")
    assert onnx_file is not None and onnx_file.read_bytes()[:2] != b""
    scripted = saved(qtbot, train.model_files, tmp_path / "tiny.torchscript")
    assert scripted is not None
    module = torch.jit.load(str(scripted))
    assert module(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_cancelled_save_leaves_the_file_as_it_was(
    qtbot, lab_viewer, tiny_model, tmp_path: Path, notifications
) -> None:
    """Cancel saving (the Save button while a save runs): the earlier file at the chosen
    path is kept byte for byte and no temporary file is left."""
    train = add_widgets(lab_viewer)["Train"]
    files = train.model_files
    files.current_name = train.registry.add(tiny_model, "tiny")
    target = tmp_path / "tiny.zip"
    target.write_bytes(b"the user's earlier package")
    assert files.save_to(target) is not None
    files.save_button.changed.emit(True)  # the button reads "Cancel saving" now
    qtbot.waitUntil(lambda: not files.saving, timeout=60_000)
    assert target.read_bytes() == b"the user's earlier package"
    assert [path.name for path in tmp_path.iterdir()] == ["tiny.zip"]
    assert files.last_saved is None
    assert train.status.value == "Saving cancelled: the file was left as it was."
    assert notifications == []  # a cancel is not an error
    # Saving again completes and replaces the file.
    assert saved(qtbot, files, target) == target
    assert target.read_bytes()[:2] == b"PK"


def test_removing_a_layer_stops_training(qtbot, lab_viewer) -> None:
    viewer = lab_viewer
    train = add_widgets(viewer)["Train"]
    fast_settings(train, "removed")
    train.settings.duration.value = "time budget"
    train.settings.time_budget.value = 120
    train.start()
    qtbot.waitUntil(lambda: train.progress.value > 0, timeout=30_000)
    viewer.layers.remove("lab labels")
    wait_done(qtbot, train, timeout=10_000)
    assert train.registry.names() == []
    assert "was removed" in train.status.value


def test_closing_the_viewer_stops_training(qtbot, lab_viewer) -> None:
    train = add_widgets(lab_viewer)["Train"]
    fast_settings(train, "closed")
    train.settings.duration.value = "time budget"
    train.settings.time_budget.value = 120
    train.start()
    qtbot.waitUntil(lambda: train.progress.value > 0, timeout=30_000)
    worker = train.worker
    lab_viewer.close()
    qtbot.waitUntil(lambda: not train.running, timeout=10_000)
    assert worker.abort_requested


def test_segment_reads_the_layer_without_copying_it(qtbot, lab_viewer, tiny_model) -> None:
    """The GUI path costs no more than the engine: the worker gets a read-only view of the
    image layer, not a copy, and the result equals the engine's own prediction."""
    from napari_unet_nuclei.prediction.inference import predict

    viewer = lab_viewer
    segment = add_widgets(viewer)["Segment"]
    segment.registry.add(tiny_model, "tiny")
    layer = viewer.layers["lab"]
    tasks, lazy = segment._make_tasks([layer])
    assert not lazy and len(tasks) == 1
    assert np.shares_memory(tasks[0].image, layer.data)
    assert not tasks[0].image.flags.writeable
    segment.image_layer.value = layer
    segment.run()
    wait_done(qtbot, segment)
    np.testing.assert_allclose(
        viewer.layers["lab probabilities"].data, predict(tiny_model, layer.data), atol=1e-6
    )


def test_training_on_partly_painted_nuclei_says_so(
    qtbot, make_napari_viewer, kromp_root, monkeypatch
):
    """5 of 26 nuclei painted: the Train dock names the problem and the fix."""
    import tifffile
    from napari.utils import notifications as module

    warned: list[str] = []
    monkeypatch.setattr(module, "show_warning", warned.append)
    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")[:256, :256]
    labels = tifffile.imread(kromp_root / "masks" / "Ganglioneuroblastoma_0.tif")[:256, :256]
    ids = np.unique(labels)[1:]
    painted = np.where(np.isin(labels, ids[:: max(1, len(ids) // 5)][:5]), labels, 0)
    viewer = make_napari_viewer()
    viewer.add_image(image.mean(-1) if image.ndim == 3 else image, name="crop")
    viewer.add_labels(painted, name="five nuclei")
    train = add_widgets(viewer)["Train"]
    # Said as soon as the layers are chosen, before Start (checked off the GUI thread).
    qtbot.waitUntil(lambda: "only part of the nuclei" in train.frames_info.value, timeout=20_000)
    assert "annotated regions" in train.frames_info.value and not warned
    fast_settings(train, "partial")
    train.start()
    wait_done(qtbot, train)
    assert "only part of the nuclei" in train.frames_info.value
    assert "annotated regions" in train.frames_info.value
    assert any("only part of the nuclei" in message for message in warned)
