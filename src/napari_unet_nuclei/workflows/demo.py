"""The main job on the built-in sample: nuclei from the built-in model, a short fine-tune,
and the before/after.

``napari-unet-nuclei demo`` runs :func:`run_demo`: it makes synthetic fluorescence nuclei,
segments the held-out images with the built-in model ``fluo-nuclei`` (nuclei as objects,
with a table of their sizes and intensities), fine-tunes a copy of it briefly on the
training images, segments again and writes the before/after scores, an error overlay PNG
and a precision-recall PNG; then it opens napari with the plugin's widgets when a display
is available.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.console import train_with_progress
from napari_unet_nuclei.data.sample_data import synthetic_dataset
from napari_unet_nuclei.evaluate.metrics import confusion_counts, precision_recall_curve
from napari_unet_nuclei.evaluate.reports import (
    save_error_overlay_png,
    save_precision_recall_png,
)
from napari_unet_nuclei.prediction.measurements import (
    concatenate_tables,
    measure_nuclei,
    write_measurements_csv,
)
from napari_unet_nuclei.workflows.evaluate import object_frame_scores, pool_object_scores

__all__ = ["run_demo"]


def _display_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _object_rows(
    model: Any, items: list[Any]
) -> tuple[list[dict[str, Any]], list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Per image: nuclei found, their mean area and intensity, object and pixel scores; the
    labels; the measurement table with an ``image`` column."""
    from napari_unet_nuclei.workflows.segmentation import predict_instances

    rows, all_labels, tables = [], [], []
    for item in items:
        labels = predict_instances(model, item.image)
        table = measure_nuclei(labels, item.image)
        tables.append({"image": np.full(table["label"].size, item.name), **table})
        _, objects = object_frame_scores(labels, item.labels)  # the one evaluation path
        rows.append(
            {
                "name": item.name,
                "nuclei": int(table["label"].size),
                "true_nuclei": int(objects["n_true"]),
                "mean_area": float(np.mean(table["area_px"])) if table["label"].size else 0.0,
                "mean_intensity": float(np.mean(table["mean_intensity"]))
                if table["label"].size
                else 0.0,
                "object_f1": float(objects["object_f1"]),
                "dsb_ap": float(objects["dsb_ap"]),
                "merges": int(objects["merges"]),
                "splits": int(objects["splits"]),
                "pixel_f1": float(confusion_counts(labels > 0, item.labels > 0).f1),
                "object_counts": objects,
            }
        )
        all_labels.append(labels)
    return rows, all_labels, tables


def _mean(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("nuclei", "true_nuclei", "mean_area", "object_f1", "dsb_ap", "pixel_f1")
    return {key: float(np.mean([row[key] for row in rows])) for key in keys}


def _pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Nucleus counts summed over the images, then the scores (``evaluate``'s pooling)."""
    return pool_object_scores([row.pop("object_counts") for row in rows])


#: Fine-tuning steps of the demo: a fixed number, so that the before/after does not depend
#: on how busy the machine is. At the fine-tune's gentle rate, 120 steps never beat the
#: built-in model on the validation image's nuclei (its weights were kept: no change to
#: show); 400 steps (about 80 s on 2 cores) pass it from epoch 7 on.
DEMO_STEPS = 400


def run_demo(
    out: Path,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    open_viewer: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Segment the built-in sample with the built-in model, fine-tune it, compare.

    Parameters
    ----------
    out : pathlib.Path
        Output folder (created): ``model.pt`` (the fine-tuned model), ``metrics.json``
        (before/after), ``nuclei.csv`` (the fine-tuned model's nuclei of every held-out
        image, with an ``image`` column), ``overlay.png`` (errors by nucleus: missed,
        false, merged, split), ``precision_recall.png``, ``masks/`` (the fine-tuned
        model's nuclei, as in ``nuclei.csv``).
    steps : int
        Fine-tuning steps (the same result on a busy and an idle machine).
    seed : int
        Seed of the sample and of training.
    open_viewer : bool
        Open napari with the widgets and the sample at the end, if a display exists.
    quiet : bool
        No progress bar.

    Returns
    -------
    dict
        The metrics written to ``metrics.json``: ``before`` and ``after``, each with
        ``mean`` (of per-image scores), ``pooled`` (nucleus counts summed over the images,
        as ``evaluate`` pools them: :mod:`napari_unet_nuclei.workflows.evaluate`) and
        ``images``.
    """
    import tifffile

    from napari_unet_nuclei.io.model_io import load_model, save_model
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.train.training import TrainingConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = synthetic_dataset(n_images=16, shape=(256, 256), seed=seed)
    # Painted images to learn from, one to choose the epoch by, four never seen.
    train_items, val_items, test_items = items[:11], items[11:12], items[12:]
    builtin = load_model("fluo-nuclei")
    print(f"1. Nuclei from the built-in model {builtin.describe()} on {len(test_items)} images")
    before_rows, _, _ = _object_rows(builtin, test_items)
    first = test_items[0]
    for row in before_rows:
        print(
            f"   {row['name']}: {row['nuclei']} nuclei (truth {row['true_nuclei']}), mean area "
            f"{row['mean_area']:.0f} px, mean intensity {row['mean_intensity']:.3g}"
        )
    print(
        f"2. Fine-tuning a copy for {steps} steps on {len(train_items)} painted images "
        f"(1 more image chooses the epoch by its nuclei)"
    )
    config = TrainingConfig(patch_size=128, steps=steps, seed=seed, name="demo")
    model = train_with_progress(train_items, val_items, config, init_model=builtin, quiet=quiet)
    model.name = f"demo (fluo-nuclei fine-tuned, {steps} steps)"
    save_model(model, out / "model.pt")
    after_rows, after_labels, after_tables = _object_rows(model, test_items)
    write_measurements_csv(concatenate_tables(after_tables, 0), out / "nuclei.csv")
    metrics = {
        "before": {
            "model": builtin.name,
            "mean": _mean(before_rows),
            "pooled": _pooled(before_rows),
            "images": before_rows,
        },
        "after": {
            "model": model.name,
            "mean": _mean(after_rows),
            "pooled": _pooled(after_rows),
            "images": after_rows,
        },
        "fine_tune_steps": steps,
        "kept_start_weights": bool(model.summary.get("kept_start_weights")),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    masks_dir = out / "masks"
    masks_dir.mkdir(exist_ok=True)
    for item, labels in zip(test_items, after_labels):
        tifffile.imwrite(masks_dir / f"{item.name}.tif", labels)
    save_error_overlay_png(
        out / "overlay.png",
        first.image,
        after_labels[0],
        first.labels,
        title=f"{first.name}, {model.name}: object F1 {after_rows[0]['object_f1']:.3f}",
        objects=True,
    )
    truth = np.stack([item.mask for item in test_items])
    curves = {
        name: precision_recall_curve(
            np.stack([predict(m, item.image) for item in test_items]), truth
        )
        for name, m in (
            (f"before: {builtin.name} (built-in)", builtin),
            (f"after: {model.name}", model),
        )
    }
    save_precision_recall_png(out / "precision_recall.png", curves)
    print("3. Before / after on the held-out images (means):")
    print(f"   {'':<24} {'nuclei':>7} {'object F1':>9} {'DSB AP':>7} {'pixel F1':>8}")
    for label, rows in (("built-in", before_rows), ("fine-tuned", after_rows)):
        mean = _mean(rows)
        print(
            f"   {label:<24} {mean['nuclei']:7.1f} {mean['object_f1']:9.3f} "
            f"{mean['dsb_ap']:7.3f} {mean['pixel_f1']:8.3f}"
        )
    print(f"   {_chosen_weights(model.summary)}")
    print(
        f"Wrote {out}/model.pt, metrics.json, nuclei.csv, overlay.png, precision_recall.png, masks/"
    )
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
    for widget in ("Train", "Segment", "Evaluate"):  # Segment starts with fluo-nuclei
        try:
            viewer.window.add_plugin_dock_widget("napari-unet-nuclei", widget)
        except Exception as error:  # widgets missing from an older install
            print(f"could not add the {widget} widget: {error}", file=sys.stderr)
    print(f"napari is open; the demo model is at {model_path}")
    napari.run()


def _chosen_weights(summary: dict) -> str:
    """One line saying which weights the fine-tune kept, by the validation image's nuclei."""
    start = summary.get("start_val_object_f1", float("nan"))
    best = summary.get("best_val_object_f1", float("nan"))
    if summary.get("kept_start_weights"):
        return (
            f"No fine-tuned epoch beat the built-in model on the validation image's nuclei "
            f"(object F1 {start:.3f}): its weights were kept, so both rows are the same model."
        )
    return (
        f"Kept epoch {summary.get('best_epoch')}: validation object F1 {best:.3f} "
        f"against the built-in model's {start:.3f}."
    )
