"""Interrupted work: killed saves, cancelled training / inference / batches, NaN losses.

Nothing the user made is lost: a model file survives a save killed halfway, a cancel keeps
the last good model, and outputs are either complete or absent.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.events import TrainingFinished, TrainingStep
from napari_unet_nuclei.io.model_io import load_model, save_model
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.prediction.inference import InferenceCancelled, iter_predict, predict
from napari_unet_nuclei.train import training_loop
from napari_unet_nuclei.train.training import TrainingConfig, train

SMALL = {"features": 4, "depth": 2, "batch_size": 2, "patch_size": 32, "device": "cpu"}
PLUGIN = "napari-unet-nuclei"


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(process.stderr.read() if process.stderr else "exited")
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.02)


# ------------------------------------------------------------------------ killed saves
def test_save_killed_halfway_through_the_write_keeps_the_old_file(tmp_path, lab_arrays) -> None:
    torch.manual_seed(0)
    old = create_model(4, 2, name="old")
    target = save_model(old, tmp_path / "model.pt")
    before = target.read_bytes()
    ready = tmp_path / "halfway"
    script = textwrap.dedent(
        f"""
        import io, time, torch
        from pathlib import Path
        from napari_unet_nuclei.io import model_io
        from napari_unet_nuclei.nn.model import create_model
        real_save = torch.save
        def half_then_hang(obj, stream, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            stream.write(data[: len(data) // 2])
            stream.flush()
            Path({str(ready)!r}).write_text(str(len(data)))
            time.sleep(120)  # killed here, in the middle of the write
        model_io.torch.save = half_then_hang
        model_io.save_model(create_model(16, 3, name="new"), {str(target)!r})
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=subprocess_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(ready, process)
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(partial) == 1 and 0 < partial[0].stat().st_size < int(ready.read_text())
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        process.kill()
    assert target.read_bytes() == before
    loaded = load_model(target)
    images = lab_arrays[0][:2, 0]
    np.testing.assert_array_equal(predict(loaded, images), predict(old, images))
    assert loaded.name == "old"
    # The folder stays usable: the next save replaces the file.
    save_model(create_model(4, 2, name="next"), target)
    assert load_model(target).name == "next"


def test_repeated_saves_killed_at_any_moment_leave_a_whole_file(tmp_path) -> None:
    target = tmp_path / "model.pt"
    log = tmp_path / "saved.txt"
    script = textwrap.dedent(
        f"""
        import torch
        from napari_unet_nuclei.nn.model import create_model
        from napari_unet_nuclei.io.model_io import save_model
        torch.manual_seed(0)
        model = create_model(16, 4)
        for generation in range(1000):
            model.name = f"gen-{{generation}}"
            with torch.no_grad():
                next(model.network.parameters()).fill_(float(generation))
            save_model(model, {str(target)!r})
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{generation}}\\n")
        """
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-c", script], env=subprocess_env(), stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(log, process)
            time.sleep(float(rng.uniform(0.05, 0.5)))  # somewhere inside a later save
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            process.kill()
        done = [int(n) for n in log.read_text().split()]
        loaded = load_model(target)  # whole and readable, never half-written
        generation = int(loaded.name.split("-")[1])
        assert generation in (done[-1], done[-1] + 1)
        assert float(next(loaded.network.parameters()).flatten()[0]) == generation
        log.unlink()


# --------------------------------------------------------------- cancelled inference
def test_cancelled_tiled_inference_leaves_frames_complete_or_untouched(lab_arrays) -> None:
    torch.manual_seed(0)
    model = create_model(4, 2)
    stack = np.tile(lab_arrays[0][:3, 0], (1, 2, 2))  # 3 frames of 256 x 256
    out = np.full(stack.shape, -1.0, np.float32)
    seen: list[str] = []

    def stop() -> bool:  # in the middle of frame 2: after frame 1 and one tile of frame 2
        return "FrameDone" in seen and seen[-1] == "TileDone"

    events = iter_predict(
        model, stack, tile_size=128, overlap=16, batch_size=1, out=out, should_stop=stop
    )
    with pytest.raises(InferenceCancelled, match="cancelled"):
        for event in events:
            seen.append(type(event).__name__)
    assert seen.count("FrameDone") == 1 and seen[-1] == "TileDone"
    reference = predict(model, stack[0], tile_size=128, overlap=16, batch_size=1)
    np.testing.assert_array_equal(out[0], reference)  # complete
    assert (out[1] == -1).all() and (out[2] == -1).all()  # absent, not half-written


# ---------------------------------------------------------------- cancelled training
def test_cancelled_fine_tuning_leaves_the_original_model_unchanged(lab_arrays) -> None:
    torch.manual_seed(0)
    base = create_model(4, 2, name="base")
    before = copy.deepcopy(base.network.state_dict())
    x, y = list(lab_arrays[0][:4, 0]), list(lab_arrays[1][:4, 0])
    steps = []
    events = train(
        x,
        y,
        TrainingConfig(**SMALL, epochs=3, steps_per_epoch=3),
        init_model=base,
        should_stop=lambda: len(steps) >= 2,
    )
    finished = None
    for event in events:
        if isinstance(event, TrainingStep):
            steps.append(event)
        if isinstance(event, TrainingFinished):
            finished = event
    assert finished.reason == "cancelled" and len(steps) == 2
    for key, value in base.network.state_dict().items():
        assert torch.equal(value, before[key]), key


def nan_after(monkeypatch, n_steps: int) -> None:
    """Make the training loss NaN from training step ``n_steps + 1`` on."""
    real_loss = training_loop.probability_loss
    calls = []

    def loss(logits, target, weight, dice_weight, *kind, **options):
        value = real_loss(logits, target, weight, dice_weight, *kind, **options)
        if logits.requires_grad:  # a training step, not validation
            calls.append(1)
            if len(calls) > n_steps:
                return value * float("nan")
        return value

    monkeypatch.setattr(training_loop, "probability_loss", loss)


def test_nan_loss_after_an_epoch_keeps_that_epochs_weights(monkeypatch, lab_arrays) -> None:
    nan_after(monkeypatch, 3)
    saved = []
    real_validate = training_loop.validate_split

    def validate(network, val, device):
        result = real_validate(network, val, device)
        saved.append(copy.deepcopy(network.state_dict()))
        return result

    monkeypatch.setattr(training_loop, "validate_split", validate)
    x, y = list(lab_arrays[0][:4, 0]), list(lab_arrays[1][:4, 0])
    events = list(train(x, y, TrainingConfig(**SMALL, epochs=3, steps_per_epoch=3)))
    finished = events[-1]
    assert finished.reason == "diverged" and finished.epochs == 2
    assert "epoch 2, step 1: the loss became nan" in finished.message
    assert "last good weights were kept" in finished.message
    assert len(saved) == 1  # epoch 1 was validated, epoch 2 never ended
    for key, value in finished.model.network.state_dict().items():
        assert torch.equal(value, saved[0][key]), key


def test_cli_writes_no_model_when_the_loss_is_nan_at_once(
    monkeypatch, lab_npz, tmp_path, capsys
) -> None:
    nan_after(monkeypatch, 0)
    out = tmp_path / "model.pt"
    save_model(create_model(4, 2, name="mine"), out)
    before = out.read_bytes()
    args = ["train", "--data", str(lab_npz), "--out", str(out), "--features", "4"]
    args += ["--depth", "2", "--epochs", "1", "--patch-size", "32", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the loss became nan" in err and "no model was written" in err
    assert out.read_bytes() == before


# ------------------------------------------------------------------------ in napari
@pytest.fixture
def lab_viewer(make_napari_viewer, lab_arrays):
    viewer = make_napari_viewer()
    viewer.add_image(lab_arrays[0][:8, 0], name="lab")
    viewer.add_labels(lab_arrays[1][:8, 0].astype(np.int32), name="lab labels")
    return viewer


def tiny_settings(train_widget, name: str) -> None:
    settings = train_widget.settings
    settings.features.value, settings.depth.value = 4, 2
    settings.duration.value = "epochs"
    settings.epochs.value, settings.steps_per_epoch.value = 2, 3
    settings.batch_size.value, settings.patch_size.value = 2, 32
    settings.device.value = "cpu"
    settings.model_name.value = name


@pytest.mark.gui
def test_cancelled_fine_tuning_in_napari_keeps_the_session_model(
    qtbot, lab_viewer, monkeypatch
) -> None:
    train_widget = lab_viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1]
    torch.manual_seed(0)
    base = create_model(4, 2, name="base")
    before = copy.deepcopy(base.network.state_dict())
    train_widget.registry.add(base, "base")
    train_widget.start_from.value = "base"
    tiny_settings(train_widget, "tuned")
    train_widget.settings.epochs.value = 50
    train_widget.image_layer.value = lab_viewer.layers["lab"]
    train_widget.labels_layer.value = lab_viewer.layers["lab labels"]
    assert train_widget.start() is not None
    qtbot.waitUntil(lambda: train_widget.progress.value > 0, timeout=30_000)
    train_widget.cancel()
    qtbot.waitUntil(lambda: not train_widget.running, timeout=30_000)
    names = train_widget.registry.names()
    assert names[0] == "base" and set(names) <= {"base", "tuned"}
    for key, value in train_widget.registry.get("base").network.state_dict().items():
        assert torch.equal(value, before[key]), key
    if "tuned" in names:  # an epoch had ended: the best weights so far were kept
        assert train_widget.last_result.reason == "cancelled"
    else:
        assert "no model kept" in train_widget.status.value


@pytest.mark.gui
def test_nan_loss_in_napari_warns_and_keeps_the_last_good_model(
    qtbot, lab_viewer, monkeypatch
) -> None:
    from napari.utils import notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    nan_after(monkeypatch, 3)
    train_widget = lab_viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1]
    tiny_settings(train_widget, "diverging")
    train_widget.image_layer.value = lab_viewer.layers["lab"]
    train_widget.labels_layer.value = lab_viewer.layers["lab labels"]
    train_widget.start()
    qtbot.waitUntil(lambda: not train_widget.running, timeout=60_000)
    assert train_widget.last_result.reason == "diverged"
    assert "stopped: loss diverged after 2 epoch(s)" in train_widget.status.value
    assert any("last good weights were kept" in message for message in shown)
    model = train_widget.registry.get("diverging")
    assert all(torch.isfinite(v).all() for v in model.network.state_dict().values())
    assert not math.isnan(model.summary["history"][0]["train_loss"])


@pytest.mark.gui
def test_cancelled_batch_over_layers_keeps_finished_frames(qtbot, lab_viewer, lab_arrays) -> None:
    from napari_unet_nuclei.prediction.inference import predict as engine_predict

    segment = lab_viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    torch.manual_seed(0)
    model = create_model(4, 2, name="tiny")
    segment.registry.add(model, "tiny")
    viewer = lab_viewer
    viewer.layers.remove("lab labels")
    big = viewer.add_image(np.tile(lab_arrays[0][:8, 0], (6, 4, 4)), name="big")  # 48 x 512^2
    segment.scope.value = "every image layer"
    segment.tile_size.value = 64
    segment.run()
    # The first layer is done whole; frames of the second show up as they finish.
    qtbot.waitUntil(
        lambda: "big probabilities" in [layer.name for layer in viewer.layers], timeout=60_000
    )
    segment.cancel()
    qtbot.waitUntil(lambda: not segment.running, timeout=30_000)
    expected = engine_predict(model, viewer.layers["lab"].data, tile_size=64, overlap=8)
    np.testing.assert_allclose(viewer.layers["lab probabilities"].data, expected, atol=1e-5)
    done = segment.registry.cached_probabilities("tiny", big).frames_done
    assert 1 <= done.sum() < 48
    probabilities = viewer.layers["big probabilities"].data
    nuclei = viewer.layers["big nuclei"].data
    assert probabilities.shape == nuclei.shape == (48, 512, 512)
    first = int(np.flatnonzero(done)[0])
    np.testing.assert_allclose(
        probabilities[first],
        engine_predict(model, big.data[first], tile_size=64, overlap=8),
        atol=1e-5,
    )
    assert not probabilities[~done].any() and not nuclei[~done].any()  # untouched frames
    assert f"{int(done.sum())} of 48 frame(s) of 'big' finished and kept" in segment.status.value
    assert big.data.shape == (48, 512, 512)  # the user's layer is untouched


def test_an_interrupted_write_leaves_the_earlier_file_and_no_temporary(tmp_path) -> None:
    """file_writing.atomic_path: the one rule behind every file the package writes."""
    from napari_unet_nuclei.io.file_writing import atomic_path

    target = tmp_path / "sub" / "model.pt"
    with atomic_path(target) as temporary:
        temporary.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(KeyboardInterrupt), atomic_path(target, suffix=".tif") as temporary:
        assert temporary.suffix == ".tif" and temporary.parent == target.parent
        temporary.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]
