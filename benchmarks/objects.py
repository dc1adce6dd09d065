"""Nuclei as objects on ``paper_42_37``: trained U-Net + watershed vs Otsu + the same watershed.

The engine's default training runs for ``--budget`` seconds (default 300) on the 42
training images at full resolution (10 % of them held out for validation). On the 37 test
images, four object segmentations are scored against the instance ground truth:

- U-Net probabilities -> seeded watershed (``instances_from_probabilities``, defaults);
- U-Net mask -> connected components (no separation of touching nuclei);
- Otsu threshold -> the same seeded watershed (``instances_from_mask``, same settings);
- Otsu threshold -> connected components.

Metrics: object precision, recall and F1 at IoU >= 0.5 (one-to-one matching), the Data
Science Bowl 2018 average precision (``TP / (TP + FP + FN)`` averaged over IoU 0.5:0.95),
per-image means and pooled over all nuclei; merges and splits from the object error map.

    python benchmarks/objects.py --json benchmarks/results/objects.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _machine import machine_info, write_results

DATA = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
KROMP = DATA / "kromp2020"
METHODS = ("U-Net + watershed", "U-Net components", "Otsu + watershed", "Otsu components")


def score(predicted: np.ndarray, truth: np.ndarray) -> dict:
    from napari_unet_nuclei.evaluate.object_metrics import dsb_average_precision, object_error_map

    errors = object_error_map(predicted, truth)
    return {
        **errors.match.scores(),
        "dsb_ap": dsb_average_precision(predicted, truth),
        "merges": errors.merges,
        "splits": errors.splits,
    }


def summarise(rows: list[dict]) -> dict:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    return {
        "f1": float(np.mean([r["f1"] for r in rows])),
        "precision": float(np.mean([r["precision"] for r in rows])),
        "recall": float(np.mean([r["recall"] for r in rows])),
        "dsb_ap": float(np.mean([r["dsb_ap"] for r in rows])),
        "pooled_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "merges": sum(r["merges"] for r in rows),
        "splits": sum(r["splits"] for r in rows),
        "n_true": sum(r["n_true"] for r in rows),
        "n_pred": sum(r["n_pred"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", default="benchmarks/results/objects.json")
    args = parser.parse_args()

    import torch
    from skimage.measure import label

    from napari_unet_nuclei.evaluate.metrics import otsu_mask
    from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.prediction.instances import (
        InstanceConfig,
        instances_from_mask,
        instances_from_probabilities,
    )
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    train_names, test_names = parse_split(f"{KROMP / 'splits.json'}:paper_42_37")
    items = load_dataset(KROMP)
    train_items = select_by_names(items, train_names)
    test_items = select_by_names(items, test_names)
    print(f"training the default model for {args.budget:.0f} s on {len(train_items)} images ...")
    start = time.perf_counter()
    model = train_model(
        [i.image for i in train_items],
        [i.labels for i in train_items],
        TrainingConfig(time_budget=args.budget, seed=args.seed, validation_fraction=0.1),
    )
    train_seconds = time.perf_counter() - start
    config = InstanceConfig(threshold=model.threshold)
    rows: dict[str, list[dict]] = {method: [] for method in METHODS}
    seconds = dict.fromkeys(("inference", "watershed"), 0.0)
    for number, item in enumerate(test_items, start=1):
        truth = item.labels
        start = time.perf_counter()
        probabilities = predict(model, item.image)
        seconds["inference"] += time.perf_counter() - start
        start = time.perf_counter()
        unet = instances_from_probabilities(probabilities, config)
        seconds["watershed"] += time.perf_counter() - start
        otsu = otsu_mask(item.image)
        candidates = {
            "U-Net + watershed": unet,
            "U-Net components": label(probabilities >= model.threshold),
            "Otsu + watershed": instances_from_mask(otsu, config),
            "Otsu components": label(otsu),
        }
        for method, predicted in candidates.items():
            rows[method].append({"name": item.name, **score(predicted, truth)})
        print(
            f"  {number:2d}/{len(test_items)} {item.name:<26} F1@0.5 U-Net+ws "
            f"{rows['U-Net + watershed'][-1]['f1']:.3f}  Otsu+ws "
            f"{rows['Otsu + watershed'][-1]['f1']:.3f}"
        )
    results = {method: summarise(method_rows) for method, method_rows in rows.items()}
    print(
        f"\npaper_42_37, {len(test_items)} test images, {len(train_items)} training images, "
        f"{args.budget:.0f} s training; matching at IoU >= 0.5"
    )
    print(
        f"{'method':<18} {'F1@0.5':>7} {'prec.':>6} {'recall':>6} {'DSB AP':>7} "
        f"{'pooled F1':>9} {'merges':>6} {'splits':>6} {'found/true':>11}"
    )
    for method, r in results.items():
        print(
            f"{method:<18} {r['f1']:7.4f} {r['precision']:6.3f} {r['recall']:6.3f} "
            f"{r['dsb_ap']:7.4f} {r['pooled_f1']:9.4f} {r['merges']:6d} {r['splits']:6d} "
            f"{r['n_pred']:5d}/{r['n_true']:<5d}"
        )
    report = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "training": {
            "budget": args.budget,
            "seconds": round(train_seconds, 1),
            "epochs": model.summary.get("epochs"),
            "steps": model.summary.get("steps"),
            "best_val_f1": model.summary.get("best_val_f1"),
        },
        "instance_config": config.to_dict(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "mean": results,
        "images": rows,
    }
    write_results(args.json, report)


if __name__ == "__main__":
    main()
