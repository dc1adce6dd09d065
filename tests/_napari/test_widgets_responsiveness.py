"""The window keeps responding while the widgets train and segment.

A 20 ms QTimer on the GUI thread reads the job's progress bar at every tick. When the GUI
thread is free while the worker computes, it sees the bar at many values between the start
and the end; a GUI frozen until the job ends would see only the first and the last. No
wall-clock limit is asserted: the longest freeze is measured by
``benchmarks/gui_stall.py`` (its "while training" and "while segmenting" rows).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable

import numpy as np
import pytest
from qtpy.QtCore import QTimer

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"
#: Progress values the GUI thread must see strictly between the start and the end.
MIN_VALUES_SEEN = 3


class ProgressWatch:
    """Record ``read()`` at every tick of a 20 ms timer on the GUI thread."""

    def __init__(self, read: Callable[[], int], interval_ms: int = 20) -> None:
        self.read = read
        self.values: list[int] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.values.append(int(self.read())))

    def __enter__(self) -> ProgressWatch:
        self.timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.timer.stop()

    def seen_between(self, low: int, high: int) -> set[int]:
        """The distinct values seen strictly between ``low`` and ``high``."""
        return {value for value in self.values if low < value < high}


@pytest.fixture
def lab_viewer(make_napari_viewer, lab_npz, qtbot):
    """A viewer with the lab stack and the plugin's engine already imported."""
    from napari_unet_nuclei._napari._warmup import engine_ready
    from napari_unet_nuclei._napari.reader import read_lab_file

    (images, _, _), (labels, _, _) = read_lab_file(str(lab_npz))
    viewer = make_napari_viewer()
    viewer.add_image(images, name="lab")
    viewer.add_labels(labels, name="lab labels")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Train")  # starts importing torch
    qtbot.waitUntil(engine_ready, timeout=120_000)
    return viewer


def test_window_responds_during_training(qtbot, lab_viewer) -> None:
    train = lab_viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1]
    train.image_layer.value = lab_viewer.layers["lab"]
    train.labels_layer.value = lab_viewer.layers["lab labels"]
    train.settings.features.value, train.settings.depth.value = 16, 3
    train.settings.patch_size.value, train.settings.batch_size.value = 128, 8
    train.settings.epochs.value = 3
    train.settings.steps_per_epoch.value = 4
    train.settings.device.value = "cpu"
    with ProgressWatch(lambda: train.progress.value) as watch:
        train.start()
        qtbot.waitUntil(lambda: not train.running, timeout=300_000)
    assert train.last_result is not None and train.last_result.steps == 12
    final = train.progress.value
    seen = watch.seen_between(0, final)
    assert len(seen) >= MIN_VALUES_SEEN, (
        f"the GUI saw progress only at {sorted(set(watch.values))}"
    )
    # The loss plot followed the steps as they came (it holds every one at the end).
    assert len(train.loss_plot.step_loss) == 12


def test_window_responds_during_stack_segmentation(qtbot, lab_viewer) -> None:
    from napari_unet_nuclei.nn.model import create_model

    segment = lab_viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    segment.registry.add(create_model(16, 3), "untrained")
    stack = np.tile(lab_viewer.layers["lab"].data, (1, 3, 3))  # 79 frames of 384 x 384
    segment.image_layer.value = lab_viewer.add_image(stack, name="stack")
    segment.scope.value = "all frames"
    quarter = segment.progress.max // 4
    with ProgressWatch(lambda: segment.progress.value) as watch:
        segment.run()
        # Cancel once a quarter is done: a click the GUI must take while frames run.
        qtbot.waitUntil(lambda: segment.progress.value >= quarter, timeout=300_000)
        segment.cancel()
        qtbot.waitUntil(lambda: not segment.running, timeout=60_000)
    status = segment.status.value
    assert status.startswith("Segmentation stopped: ") and "finished and kept" in status
    finished = int(status.split(": ")[1].split(" of ")[0])
    assert 0 < finished < stack.shape[0]
    # Finished frames were shown (and kept when cancelled), the rest never ran.
    assert "stack probabilities" in lab_viewer.layers and "stack nuclei" in lab_viewer.layers
    assert quarter <= segment.progress.value < segment.progress.max
    seen = watch.seen_between(0, quarter)
    assert len(seen) >= MIN_VALUES_SEEN, (
        f"the GUI saw progress only at {sorted(set(watch.values))}"
    )


def test_window_responds_while_a_sample_is_made(make_napari_viewer, tmp_path, monkeypatch) -> None:
    """napari calls a sample on the GUI thread: the timer still ticks while the sample's
    arrays are made (before its layers exist), and a sample's error still reaches napari."""
    from napari_unet_nuclei._napari import samples

    viewer = make_napari_viewer()
    layers_at_tick: list[int] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: layers_at_tick.append(len(viewer.layers)))
    timer.start()
    viewer.open_sample(PLUGIN, "synthetic_nuclei")
    timer.stop()
    assert [layer.name for layer in viewer.layers] == [
        "synthetic nuclei",
        "synthetic nuclei labels",
    ]
    assert viewer.layers["synthetic nuclei labels"].data.max() > 10
    assert layers_at_tick and set(layers_at_tick) == {0}, "the GUI thread was blocked"

    monkeypatch.setenv(samples.KROMP_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv(samples.DATA_ENV, str(tmp_path / "no data"))
    monkeypatch.setattr(samples, "kromp_candidates", lambda: [("test", tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="Kromp 2020 dataset was not found"):
        viewer.open_sample(PLUGIN, "kromp2020")
    assert len(viewer.layers) == 2


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="needs xdotool (apt)")
def test_a_click_waits_until_the_sample_is_made(qtbot) -> None:
    """While a sample is made the window repaints and its timers run, but a real click (an
    X event from xdotool) waits in Qt's queue until the call returns: a second click on the
    sample's menu entry cannot start a second sample inside the first."""
    from qtpy.QtWidgets import QPushButton

    from napari_unet_nuclei._napari._live_call import call_with_live_window

    button = QPushButton("sample")
    qtbot.addWidget(button)
    button.setGeometry(50, 50, 200, 100)
    button.show()
    qtbot.waitExposed(button)
    clicks: list[bool] = []
    button.clicked.connect(clicks.append)
    centre = button.mapToGlobal(button.rect().center())
    timer_ran = threading.Event()
    QTimer.singleShot(0, timer_ran.set)

    def work() -> int:
        assert timer_ran.wait(10), "the GUI thread processed no events during the call"
        subprocess.run(
            ["xdotool", "mousemove", str(centre.x()), str(centre.y()), "click", "1"], check=True
        )
        for _ in range(40):  # turns of the event loop in which the click could be handled
            threading.Event().wait(0.005)
        return len(clicks)

    assert call_with_live_window(work) == 0
    qtbot.waitUntil(lambda: len(clicks) == 1, timeout=5000)
