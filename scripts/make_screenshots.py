"""Make the documentation screenshots of the napari widgets from a real, short run.

Run under a (virtual) display from the repository root::

    xvfb-run -a -s "-screen 0 1600x1000x24" python3 scripts/make_screenshots.py

It opens the lab's 128 x 128 nuclei file with the plugin's reader, hides the labels of the 9
test images of the lab's split (as if only 70 frames had been painted), trains two small
U-Nets briefly with the Train widget (F=4 and F=16), segments every frame with the
Segment widget (F=4), evaluates both models against the full ground truth with the
Evaluate widget (the error overlay is the F=4 model's), and writes ``docs/images/train.png``
(Train and Segment docks), ``segment_errors.png`` (Segment and Evaluate docks) and
``pr_curve.png`` (the Evaluate dock's content), each kept under 400 KB. The window is a
1366 x 768 laptop screen, as the docks are made to fit.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_UNET_NUCLEI_DATA", ROOT.parent / "shared" / "data"))
PLUGIN = "napari-unet-nuclei"
MAX_BYTES = 400_000
LAPTOP = (1366, 768)


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Process Qt events until ``condition()`` is true."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not finish in time")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let pending repaints and redraws happen
        app.processEvents()
        time.sleep(0.02)


def save_png(image, path: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Save a QImage as PNG, scaled down until it is smaller than ``max_bytes``."""
    from qtpy.QtCore import Qt

    scale = 1.0
    while True:
        scaled = (
            image
            if scale == 1.0
            else image.scaledToWidth(
                int(image.width() * scale), Qt.TransformationMode.SmoothTransformation
            )
        )
        scaled.save(str(path), "PNG", 9)
        if path.stat().st_size <= max_bytes or scale < 0.3:
            return path
        scale *= 0.85


def window_image(viewer):
    """The whole napari window (``viewer.screenshot``) as a QImage, notification toasts
    closed first (they would cover the image)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtGui import QImage

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    wait_until(lambda: True)

    rgba = np.ascontiguousarray(viewer.screenshot(canvas_only=False, flash=False))
    height, width = rgba.shape[:2]
    return QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888).copy()


def train_model(qt_train, name: str, features: int, budget: float) -> None:
    """Train with the Train widget and wait for the end."""
    qt_train.settings.features.value = features
    qt_train.settings.depth.value = 3
    qt_train.settings.duration.value = "time budget"
    qt_train.settings.time_budget.value = budget
    qt_train.settings.patch_size.value = 128
    qt_train.settings.batch_size.value = 8
    qt_train.settings.model_name.value = name
    print(f"training {name} for {budget:.0f} s", flush=True)
    qt_train.start()
    wait_until(lambda: not qt_train.running)
    print(f"  {qt_train.status.value}", flush=True)


def main(out: Path, budget: float) -> None:
    import napari
    from qtpy.QtCore import Qt

    from napari_unet_nuclei._napari.evaluate_widget import PredictionSource

    out.mkdir(parents=True, exist_ok=True)
    kromp = DATA / "kromp2020"
    split = json.loads((kromp / "splits.json").read_text())["lab_70_9"]
    viewer = napari.Viewer(title="napari-unet-nuclei", show=True)
    viewer.window.resize(*LAPTOP)
    image, truth = viewer.open(str(kromp / "nuclei_128.npz"), plugin=PLUGIN)
    image.name, truth.name = "lab 128", "ground truth"
    names = list(image.metadata["frame_names"])
    test_frames = sorted(names.index(n) for n in split["test"])
    painted = np.array(truth.data, copy=True)
    painted[test_frames] = 0
    painted_layer = viewer.add_labels(painted, name="painted labels (70 frames)", opacity=0.4)
    truth.visible = False

    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    train.image_layer.value, train.labels_layer.value = image, painted_layer
    train.settings.device.value = "cpu"
    train_model(train, "F=16", 16, budget)
    train_model(train, "F=4", 4, budget)  # last: its loss plot (more epochs) is shown
    segment_dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    segment.image_layer.value = image
    segment.scope.value = "all frames"
    segment.model.value = "F=4"
    segment.run()
    wait_until(lambda: not segment.running)
    print(f"  {segment.status.value}", flush=True)
    viewer.layers[f"{image.name} probabilities"].visible = False
    window = viewer.window._qt_window
    window.resizeDocks([train_dock, segment_dock], [560, 160], Qt.Orientation.Vertical)
    wait_until(lambda: True)
    train.scroll_area.ensureWidgetVisible(train.loss_plot)  # the status and the live plot
    viewer.dims.set_current_step(0, int(np.flatnonzero(painted.any(axis=(1, 2)))[0]))
    viewer.reset_view()
    wait_until(lambda: True)
    save_png(window_image(viewer), out / "train.png")

    _, evaluate = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    evaluate.image_layer.value, evaluate.truth_layer.value = image, truth
    for model in ("F=16", "F=4"):  # the error overlay shows the last one
        evaluate.source.value = PredictionSource("model", model)
        evaluate.evaluate()
        wait_until(lambda: not evaluate.running)
        print(f"  {evaluate.status.value}", flush=True)
    viewer.window.remove_dock_widget(train_dock)
    wait_until(lambda: True)
    viewer.window.resize(*LAPTOP)
    painted_layer.visible = False
    viewer.layers[f"{image.name} probabilities"].visible = False
    viewer.layers[f"{image.name} nuclei"].visible = False
    viewer.dims.set_current_step(0, test_frames[0])
    viewer.reset_view()
    wait_until(lambda: True)
    save_png(window_image(viewer), out / "segment_errors.png")
    save_png(evaluate.body.native.grab().toImage(), out / "pr_curve.png")
    for name in ("train.png", "segment_errors.png", "pr_curve.png"):
        print(f"wrote {out / name} ({(out / name).stat().st_size / 1000:.0f} KB)")
    viewer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--budget", type=float, default=30.0, help="training seconds per model")
    args = parser.parse_args()
    main(args.out, args.budget)
