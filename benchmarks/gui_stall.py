"""How long the napari window freezes when a dock opens or a sample loads.

A 10 ms ``QTimer`` ticks on the GUI thread; the longest gap between two ticks while an
action runs is the longest time the window could not repaint or answer a click (the
issue's limit: 0.5 s). Each action runs in a fresh process, as a user meets it: the first
dock opened in a session pays for the imports.

    xvfb-run -a python benchmarks/gui_stall.py            # the table, and JSON in results/

Actions: opening each dock through the manifest (first in its process), loading the
synthetic sample and the Kromp sample (its files are read from the data folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 0.5
ACTIONS = {
    "open Segment dock": ("dock", "Segment"),
    "open Train dock": ("dock", "Train"),
    "open Evaluate dock": ("dock", "Evaluate"),
    "open Annotate next dock": ("dock", "Annotate next"),
    "load synthetic sample": ("sample", "synthetic_nuclei"),
}

_CHILD = r"""
import json, sys, time
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication
import napari

kind, name = sys.argv[1], sys.argv[2]
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
def act():
    if kind == "dock":
        viewer.window.add_plugin_dock_widget("napari-unet-nuclei", name)
    else:
        viewer.open_sample("napari-unet-nuclei", name)
QTimer.singleShot(100, act)
end = start + 8.0
while time.perf_counter() < end:
    app.processEvents()
    time.sleep(0.002)
timer.stop()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print(json.dumps({"max_gap_s": max(gaps), "ticks": len(ticks)}))
viewer.close()
"""


def measure(kind: str, name: str) -> dict:
    """The longest gap of the GUI timer while ``kind`` ``name`` runs, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, name],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/gui_stall.json"))
    args = parser.parse_args()
    rows = {}
    print(
        f"{'action':<28} {'longest freeze (s)':>20}   (limit {LIMIT_S} s, worst of {args.repeats})"
    )
    for label, (kind, name) in ACTIONS.items():
        gaps = [measure(kind, name)["max_gap_s"] for _ in range(args.repeats)]
        rows[label] = {"max_gap_s": max(gaps), "runs": gaps, "within_limit": max(gaps) <= LIMIT_S}
        print(f"{label:<28} {max(gaps):>20.2f}   {'ok' if max(gaps) <= LIMIT_S else 'OVER'}")
    report = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "limit_s": LIMIT_S,
        "actions": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
