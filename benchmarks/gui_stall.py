"""How long the napari window freezes when a dock opens or a sample loads.

A 10 ms ``QTimer`` ticks on the GUI thread; the longest gap between two ticks while an
action runs is the longest time the window could not repaint or answer a click (the
issue's limit: 0.5 s). Each action runs in a fresh process, as a user meets it: the first
dock opened in a session pays for the imports. Gaps that begin after the action has
returned are reported apart, as "later": they come from the engine's warm-up thread (its
imports hold Python's lock in long slices) during the 8 s that follow.

    xvfb-run -a python benchmarks/gui_stall.py            # the table, and JSON in results/

Actions: opening each dock through the manifest (first in its process), loading the
synthetic sample, and the reference: napari's own ``binary_blobs`` sample, whose time is
napari's first layer (its units registry, layer and canvas set-up), paid by any first image;
then the window while a job runs: 12 training steps of an F=16 network on the lab's stack,
and segmenting a 79-frame stack with the built-in model and with a new (untrained) one
(gaps spanning napari's own layer insertions left out, as napari pays them whoever adds a
layer). A new model's first segmentation on a CPU that runs ONNX Runtime exports its graph;
torch's exporter imports ``onnx``, which holds Python's lock for about a second, so the
dock's worker exports in a helper process (``nn.onnx_export``). Last, the window while the
Train dock's *Save model...* writes the built-in model as a bioimage.io package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _machine import machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 0.5
ACTIONS = {
    "open Segment dock": ("dock", "Segment"),
    "open Train dock": ("dock", "Train"),
    "open Evaluate dock": ("dock", "Evaluate"),
    "open Annotate next dock": ("dock", "Annotate next"),
    "load synthetic sample": ("sample", "synthetic_nuclei"),
    # The reference: napari's own first layer pays for its units registry and layer setup.
    "napari's binary_blobs sample (reference)": ("napari-sample", "binary_blobs"),
    # The sample's two layers from arrays made beforehand: napari's part of the sample.
    "napari adds the sample's 2 layers (reference)": ("layers", "synthetic_nuclei"),
    # Jobs: the window while a worker computes (the lab's 128 x 128 stack).
    "while training (12 steps, F=16)": ("job", "train"),
    "while segmenting 79 frames (built-in model)": ("job", "segment"),
    # A model never exported on this machine: torch's ONNX exporter imports onnx first.
    "while segmenting 79 frames (a new model)": ("job", "segment-new"),
    # Train's Save model... as a bioimage.io package (TorchScript, ONNX, test tensors, zip).
    "while saving the built-in model as bioimage.io": ("job", "save-zip"),
}

_JOB_CHILD = r"""
import json, os, sys, time
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
import napari
from napari_unet_nuclei._napari._warmup import engine_ready
from napari_unet_nuclei._napari.reader import read_lab_file
from napari_unet_nuclei.nn.model import create_model

name = sys.argv[2]
(images, _, _), (labels, _, _) = read_lab_file(os.environ["LAB_NPZ"])
viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.add_image(images, name="lab")
viewer.add_labels(labels, name="lab labels")
dock = viewer.window.add_plugin_dock_widget(
    "napari-unet-nuclei", "Train" if name in ("train", "save-zip") else "Segment")[1]
running = lambda: dock.running
if name == "save-zip":
    import tempfile
    files = dock.model_files
    files.current_name = "fluo-nuclei"
    target = os.path.join(tempfile.mkdtemp(), "model.zip")
    start_job = lambda: files.save_to(target)
    running = lambda: files.saving
elif name == "train":
    dock.image_layer.value, dock.labels_layer.value = viewer.layers["lab"], viewer.layers["lab labels"]
    settings = dock.settings
    settings.features.value, settings.depth.value = 16, 3
    settings.patch_size.value, settings.batch_size.value = 128, 8
    settings.epochs.value, settings.steps_per_epoch.value = 3, 4
    settings.device.value = "cpu"
    start_job = dock.start
else:
    if name == "segment-new":
        dock.registry.add(create_model(16, 3), "untrained")
    dock.image_layer.value = viewer.add_image(np.tile(images, (1, 3, 3)), name="stack")
    dock.scope.value = "all frames"
    start_job = dock.run
while not engine_ready():
    app.processEvents()
    time.sleep(0.01)
for _ in range(50):
    app.processEvents()
    time.sleep(0.01)
# Adding a layer costs napari 0.1-0.3 s on the GUI thread (vispy visuals), whoever adds
# it: gaps spanning an insertion are napari's, not a freeze of the plugin's.
insertions = []
viewer.layers.events.inserting.connect(lambda _e: insertions.append(time.perf_counter()))
ticks = []
timer = QTimer()
timer.setInterval(10)
timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
timer.start()
start_job()
started = time.perf_counter()
app.processEvents()
while running() and time.perf_counter() - started < 120:
    app.processEvents()
    time.sleep(0.002)
timer.stop()
gaps = [b - a for a, b in zip(ticks, ticks[1:]) if not any(a <= t <= b for t in insertions)]
print(json.dumps({"max_gap_s": max(gaps), "later_gap_s": 0.0, "ticks": len(ticks),
                  "job_s": time.perf_counter() - started}))
viewer.close()
"""

_CHILD = r"""
import json, sys, time
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
import napari

kind, name = sys.argv[1], sys.argv[2]
if kind == "layers":
    # The sample's arrays, without the sample's warm-up of napari's first layers.
    from napari_unet_nuclei.data.sample_data import make_synthetic_nuclei
    image, labels = make_synthetic_nuclei((512, 512), seed=0)
    made = [(image, {"name": "synthetic nuclei"}, "image"),
            (labels, {"name": "synthetic nuclei labels"}, "labels")]
viewer = napari.Viewer(show=True)
app = QApplication.instance()
for _ in range(20):
    app.processEvents()
    time.sleep(0.01)
ticks = []
timer = QTimer()
timer.setInterval(10)
timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
timer.start()
start = time.perf_counter()
marks = {}
def act():
    marks["start"] = time.perf_counter()
    if kind == "dock":
        viewer.window.add_plugin_dock_widget("napari-unet-nuclei", name)
    elif kind == "sample":
        viewer.open_sample("napari-unet-nuclei", name)
    elif kind == "layers":
        for data, meta, layer_type in made:
            getattr(viewer, f"add_{layer_type}")(data, **meta)
    else:
        viewer.open_sample("napari", name)
    marks["end"] = time.perf_counter()
QTimer.singleShot(100, act)
end = start + 8.0
while time.perf_counter() < end:
    app.processEvents()
    time.sleep(0.002)
timer.stop()
# A gap that began before the action ended is the action's freeze (the click); later
# gaps come from background work it started (the engine's warm-up).
during = [b - a for a, b in zip(ticks, ticks[1:]) if a <= marks["end"]]
after = [b - a for a, b in zip(ticks, ticks[1:]) if a > marks["end"]]
print(json.dumps({"max_gap_s": max(during), "later_gap_s": max(after, default=0.0),
                  "ticks": len(ticks)}))
viewer.close()
"""


def measure(kind: str, name: str) -> dict:
    """The longest gap of the GUI timer while ``kind`` ``name`` runs, in a fresh process."""
    lab = ROOT.parent / "shared" / "data" / "kromp2020" / "nuclei_128.npz"
    result = subprocess.run(
        [sys.executable, "-c", _JOB_CHILD if kind == "job" else _CHILD, kind, name],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "LAB_NPZ": str(lab)},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/gui_stall.json"))
    args = parser.parse_args()
    rows = {}
    print(
        f"{'action':<42} {'freeze (s)':>10} {'later (s)':>10}   "
        f"(limit {LIMIT_S} s, worst of {args.repeats})"
    )
    for label, (kind, name) in ACTIONS.items():
        runs = [measure(kind, name) for _ in range(args.repeats)]
        gaps = [run["max_gap_s"] for run in runs]
        later = [run["later_gap_s"] for run in runs]
        rows[label] = {
            "max_gap_s": max(gaps),
            "runs": gaps,
            "later_gap_s": max(later),
            "later_runs": later,
            "within_limit": max(gaps) <= LIMIT_S,
        }
        verdict = "ok" if max(gaps) <= LIMIT_S else "OVER"
        print(f"{label:<42} {max(gaps):>10.2f} {max(later):>10.2f}   {verdict}")
    report = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "limit_s": LIMIT_S,
        "actions": rows,
    }
    write_results(args.json, report)


if __name__ == "__main__":
    main()
