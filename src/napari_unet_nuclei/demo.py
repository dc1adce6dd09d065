"""The main job on the built-in sample: train, segment held-out images, report, show.

``napari-unet-nuclei demo`` runs :func:`run_demo`: it makes synthetic fluorescence
nuclei, trains briefly, segments held-out images, writes metrics (JSON), an error overlay
PNG and a precision-recall PNG, then opens napari with the plugin's widgets when a display
is available.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_demo"]


def _display_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_demo(
    out: Path,
    time_budget: float = 60.0,
    seed: int = 0,
    open_viewer: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train on synthetic nuclei, evaluate on held-out ones and write a small report.

    Parameters
    ----------
    out : pathlib.Path
        Output folder (created): ``model.pt``, ``metrics.json``, ``overlay.png``,
        ``precision_recall.png``, ``masks/``.
    time_budget : float
        Training seconds.
    seed : int
        Seed of the sample and of training.
    open_viewer : bool
        Open napari with the widgets and the sample at the end, if a display exists.
    quiet : bool
        No progress bar.

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.
    """
    import tifffile

    from .cli import evaluate_items, run_training
    from .inference import predict
    from .metrics import precision_recall_curve
    from .model_io import save_model
    from .reports import save_error_overlay_png, save_precision_recall_png
    from .sample_data import synthetic_dataset
    from .training import TrainingConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = synthetic_dataset(n_images=16, shape=(256, 256), seed=seed)
    train_items, test_items = items[:12], items[12:]
    # Small and quick on a laptop CPU: F=8, 128-pixel patches.
    config = TrainingConfig(
        features=8, depth=3, patch_size=128, time_budget=time_budget, seed=seed, name="demo"
    )
    print(
        f"Training a U-Net (F=8, depth 3) on {len(train_items)} synthetic images for {time_budget:.0f} s"
    )
    model = run_training(train_items, test_items[:1], config, quiet=quiet)
    save_model(model, out / "model.pt")

    metrics = evaluate_items(model, test_items, model.threshold)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    masks_dir = out / "masks"
    masks_dir.mkdir(exist_ok=True)
    probabilities = [predict(model, item.image) for item in test_items]
    for item, prob in zip(test_items, probabilities):
        tifffile.imwrite(
            masks_dir / f"{item.name}.tif", (prob >= model.threshold).astype(np.uint8)
        )
    first = test_items[0]
    save_error_overlay_png(
        out / "overlay.png",
        first.image,
        probabilities[0] >= model.threshold,
        first.mask,
        title=f"{first.name}: F1 {metrics['images'][0]['f1']:.3f}",
    )
    curve = precision_recall_curve(np.stack(probabilities), np.stack([i.mask for i in test_items]))
    save_precision_recall_png(out / "precision_recall.png", {"demo U-Net F=8": curve})
    mean = metrics["mean"]
    print(
        f"Held-out synthetic images: precision {mean['precision']:.3f}  recall {mean['recall']:.3f}  "
        f"F1 {mean['f1']:.3f}  IoU {mean['iou']:.3f}  AP {mean['ap']:.3f}"
    )
    print(f"Wrote {out}/model.pt, metrics.json, overlay.png, precision_recall.png, masks/")
    if open_viewer and _display_available():
        _open_viewer(first.image, first.labels, out / "model.pt")
    elif open_viewer:
        print("No display found: skipped opening napari (run with a display to see the widgets).")
    return metrics


def _open_viewer(image: np.ndarray, labels: np.ndarray, model_path: Path) -> None:
    import napari

    viewer = napari.Viewer(title="napari-unet-nuclei demo")
    viewer.add_image(image, name="synthetic nuclei")
    viewer.add_labels(labels.astype(np.int32), name="synthetic nuclei labels")
    for widget in ("Train", "Segment", "Evaluate"):
        try:
            viewer.window.add_plugin_dock_widget("napari-unet-nuclei", widget)
        except Exception as error:  # widgets missing from an older install
            print(f"could not add the {widget} widget: {error}", file=sys.stderr)
    print(f"napari is open; the demo model is at {model_path}")
    napari.run()
