"""Nuclei as objects on three public test parts: Otsu, the probability-only U-Net, the
object-aware U-Net and the built-in generalist model, side by side in one run.

Test parts (never trained on): ``kromp2020`` ``paper_42_37`` test (37 images),
``dsb2018_train`` ``fluo_90_10`` test (54), ``bbbc039`` ``split_100_50_50`` test (50).

Rows:

- ``Otsu + watershed``: Otsu's threshold per image, then the distance-transform watershed;
- ``U-Net prob. + watershed``: today's probability-only U-Net (F=8, depth 4) trained on the
  generalist training parts for ``--budget`` seconds, then the same watershed;
- ``U-Net objects``: the object-aware U-Net (nucleus probability + centre + boundary maps),
  same data, same budget, same seed, instances from its maps;
- ``built-in <name>``: the shipped model (``scripts/train_builtin_model.py``), as the
  product runs it: nuclei far larger than it learned resized first (``diameter="auto"``,
  :mod:`napari_unet_nuclei.prediction.nucleus_size`);
- ``built-in, no resizing``: the same model on every image as it is (``diameter=None``);
- ``candidate``: with ``--candidate FILE``, a new built-in model (a piece of the long
  schedule) beside the shipped one, in the same run: it is shipped only when it is better
  on every test part.

Scores per image, then averaged: pixel F1; object precision, recall and F1 at IoU >= 0.5
(one-to-one matches); the Data Science Bowl 2018 AP over IoU 0.5:0.95; merges and splits
(summed). Two more tables pool the three parts: by size bucket (the image's median true
nucleus area: < 120 px, 120-1,500 px, > 1,500 px), and the dense images (150 nuclei or
more) with merges per 100 true nuclei. ``--speed`` also times image -> instances on a 2048 x 2048 image (a mosaic of real
Kromp images) for the built-in model: its maps path against the probability + watershed
path of the same network.

    python benchmarks/generalist.py --budget 900 --speed       # the README table
    python benchmarks/generalist.py --budget 0 --limit 5       # built-in and Otsu only, quick
    python benchmarks/generalist.py --speed-only               # the timing alone, idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _machine import machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # issue 13's targets for the built-in model
    "dsb2018_train": {"object_f1": 0.92, "dsb_ap": 0.62},
    "bbbc039": {"object_f1": 0.92},
    "kromp2020": {"object_f1": 0.85},
}


def score(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel and object scores of one image."""
    from napari_unet_nuclei.evaluate.metrics import confusion_counts
    from napari_unet_nuclei.evaluate.object_metrics import dsb_average_precision, object_error_map

    errors = object_error_map(predicted, truth)
    objects = errors.match.scores()
    return {
        "pixel_f1": confusion_counts(predicted > 0, truth > 0).f1,
        "object_precision": objects["precision"],
        "object_recall": objects["recall"],
        "object_f1": objects["f1"],
        "dsb_ap": dsb_average_precision(predicted, truth),
        "merges": int(errors.merges),
        "splits": int(errors.splits),
        "n_true": int(objects["n_true"]),
        "n_pred": int(objects["n_pred"]),
        "median_true_area": median_area(truth),
    }


SIZE_BUCKETS = (
    ("small (< 120 px)", 0, 120),
    ("typical", 120, 1500),
    ("large (> 1,500 px)", 1500, np.inf),
)
DENSE_NUCLEI = 150


def median_area(truth: np.ndarray) -> float:
    """The median area (px) of the true nuclei of an image."""
    _, counts = np.unique(truth[truth > 0], return_counts=True)
    return float(np.median(counts)) if counts.size else 0.0


def pooled_tables(per_image: dict[str, dict[str, list[dict]]]) -> dict:
    """Size-bucket and dense-image tables over every test part, per method."""
    methods = next(iter(per_image.values())).keys()
    tables: dict = {"size_buckets": {}, "dense": {}}
    for method in methods:
        rows = [r for part in per_image.values() for r in part[method]]
        tables["size_buckets"][method] = {
            name: {
                "images": len(bucket),
                "object_f1": float(np.mean([r["object_f1"] for r in bucket])) if bucket else None,
                "dsb_ap": float(np.mean([r["dsb_ap"] for r in bucket])) if bucket else None,
            }
            for name, low, high in SIZE_BUCKETS
            for bucket in [[r for r in rows if low <= r["median_true_area"] < high]]
        }
        dense = [r for r in rows if r["n_true"] >= DENSE_NUCLEI]
        true = sum(r["n_true"] for r in dense)
        tables["dense"][method] = {
            "images": len(dense),
            "object_f1": float(np.mean([r["object_f1"] for r in dense])) if dense else None,
            "merges": int(sum(r["merges"] for r in dense)),
            "merges_per_100_nuclei": 100.0 * sum(r["merges"] for r in dense) / max(1, true),
        }
    return tables


def print_pooled(tables: dict) -> None:
    """Print the size-bucket and dense-image tables."""
    names = [name for name, _, _ in SIZE_BUCKETS]
    first = next(iter(tables["size_buckets"].values()))
    counts = "  ".join(f"{name} {first[name]['images']}" for name in names)
    print(f"\nobject F1 by nucleus size (images: {counts}):")
    print(f"{'method':<28}" + "".join(f"{name:>20}" for name in names))
    for method, buckets in tables["size_buckets"].items():
        cells = [
            f"{b['object_f1']:>20.3f}" if b["object_f1"] is not None else f"{'-':>20}"
            for b in (buckets[name] for name in names)
        ]
        print(f"{method:<28}" + "".join(cells))
    dense = next(iter(tables["dense"].values()))["images"]
    print(f"\ndense images ({DENSE_NUCLEI} nuclei or more: {dense}):")
    print(f"{'method':<28} {'obj F1':>7} {'merges':>7} {'per 100 nuclei':>15}")
    for method, row in tables["dense"].items():
        f1 = f"{row['object_f1']:7.3f}" if row["object_f1"] is not None else f"{'-':>7}"
        print(f"{method:<28} {f1} {row['merges']:7d} {row['merges_per_100_nuclei']:15.1f}")


def summarise(rows: list[dict]) -> dict:
    """Per-image means of the scores, sums of the counts."""
    means = ("pixel_f1", "object_precision", "object_recall", "object_f1", "dsb_ap")
    sums = ("merges", "splits", "n_true", "n_pred")
    return {
        **{key: float(np.mean([r[key] for r in rows])) for key in means},
        **{key: int(sum(r[key] for r in rows)) for key in sums},
        "n_images": len(rows),
    }


def train_same_budget(items, object_maps: tuple[str, ...], budget: float, seed: int):
    """The engine's default training on ``items`` for ``budget`` seconds."""
    from napari_unet_nuclei.train.augmentation import AugmentationConfig
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    config = TrainingConfig(
        time_budget=budget,
        seed=seed,
        validation_fraction=0.05,
        object_maps=object_maps,
        augmentation=AugmentationConfig(flips=True, rotations90=True, intensity=True, affine=True),
        name="objects" if object_maps else "probability-only",
    )
    return train_model([i.image for i in items], [i.labels for i in items], config)


def mosaic_2048(root: Path) -> np.ndarray:
    """A 2048 x 2048 uint8 image tiled from four real Kromp test images."""
    import tifffile

    names = json.loads((root / "kromp2020" / "splits.json").read_text())["paper_42_37"]["test"]
    tiles = [tifffile.imread(root / "kromp2020" / "images" / f"{n}.tif") for n in names[:4]]
    out = np.zeros((2048, 2048), np.uint8)
    for number, tile in enumerate(tiles):
        y, x = divmod(number, 2)
        crop = tile[:1024, :1024]
        out[y * 1024 : y * 1024 + crop.shape[0], x * 1024 : x * 1024 + crop.shape[1]] = crop
    return out


def time_paths(model, image: np.ndarray, repeats: int = 2) -> dict:
    """Megapixels per second, image to instances: ``predict_instances`` with the model's rule
    (and with centre-map seeds) beside ``predict`` + the distance watershed."""
    from dataclasses import replace

    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.prediction.instances import instances_from_probabilities
    from napari_unet_nuclei.workflows.segmentation import (
        default_instance_config,
        predict_instances,
    )

    megapixels = image.size / 1e6
    predict_instances(model, image[:512, :512])  # warm-up (first call builds the runner)
    results = {}
    rule = default_instance_config(model)
    paths = [
        (f"predict_instances ({rule.seeds} seeds)", lambda: predict_instances(model, image)),
        (
            "predict + watershed (before)",
            lambda: instances_from_probabilities(
                predict(model, image), replace(rule, seeds="distance")
            ),
        ),
    ]
    if "centre" in model.object_maps and rule.seeds != "centre":
        paths.append(
            (
                "predict_instances (centre seeds)",
                lambda: predict_instances(
                    model,
                    image,
                    instance_config=replace(rule, seeds="centre", min_peak_height=0.2),
                ),
            )
        )
    for label, run in paths:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            labels = run()
            seconds.append(time.perf_counter() - start)
        best = min(seconds)
        results[label] = {
            "seconds": round(best, 3),
            "megapixels_per_s": round(megapixels / best, 3),
            "nuclei": int(labels.max()),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="fluo-nuclei", help="built-in name or .pt file")
    parser.add_argument(
        "--budget",
        type=float,
        default=900.0,
        help="seconds to train each same-budget U-Net (0: skip those two rows)",
    )
    parser.add_argument("--baseline", help="use this probability-only model file instead")
    parser.add_argument("--objects", help="use this object-aware model file instead")
    parser.add_argument("--candidate", help="a new built-in model file, scored beside it")
    parser.add_argument("--limit", type=int, help="images per test part (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--speed", action="store_true", help="also time a 2048 x 2048 image")
    parser.add_argument(
        "--speed-only",
        action="store_true",
        help="only time the 2048 x 2048 image (adds speed_2048 to an existing --json)",
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/generalist.json"))
    args = parser.parse_args()

    import torch

    from napari_unet_nuclei.data.public_data import (
        GENERALIST_TEST_PARTS,
        GENERALIST_TRAINING_PARTS,
        data_root,
        load_part,
        load_parts,
    )
    from napari_unet_nuclei.evaluate.metrics import otsu_mask
    from napari_unet_nuclei.io.model_io import load_model, save_model
    from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.prediction.instances import (
        instances_from_mask,
        instances_from_probabilities,
    )
    from napari_unet_nuclei.workflows.segmentation import (
        default_instance_config,
        predict_instances,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    builtin = load_model(args.model)
    if args.speed_only:
        speed = time_paths(builtin, mosaic_2048(data_root()))
        for label, r in speed.items():
            print(f"{label:<26} {r['megapixels_per_s']:.2f} Mpx/s ({r['seconds']:.2f} s)")
        path = Path(args.json)
        report = json.loads(path.read_text()) if path.is_file() else {}
        report["speed_2048"] = speed
        report["speed_machine"] = {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
        }
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
        return
    models = {}
    training = {}
    if args.baseline:
        models["U-Net prob. + watershed"] = load_model(args.baseline)
    if args.objects:
        models["U-Net objects"] = load_model(args.objects)
    if args.budget > 0 and (not args.baseline or not args.objects):
        items = load_parts(GENERALIST_TRAINING_PARTS)
        for label, maps in (
            ("U-Net prob. + watershed", ()),
            ("U-Net objects", OBJECT_MAPS),
        ):
            if label in models:
                continue
            print(
                f"training {label} for {args.budget:.0f} s on {len(items)} images ...", flush=True
            )
            model = train_same_budget(items, maps, args.budget, args.seed)
            models[label] = model
            training[label] = {k: model.summary.get(k) for k in ("steps", "epochs", "seconds")}
            save_model(model, Path(args.json).with_suffix(f".{model.name}.pt"))
        del items
    models[f"built-in {builtin.name}"] = builtin
    models["built-in, no resizing"] = builtin
    if args.candidate:
        models["candidate"] = load_model(args.candidate)

    results: dict[str, dict] = {}
    per_image: dict[str, dict] = {}
    for part in GENERALIST_TEST_PARTS:
        test_items = load_part(part, limit=args.limit)
        rows: dict[str, list[dict]] = {"Otsu + watershed": []}
        rows.update({label: [] for label in models})
        start = time.perf_counter()
        for item in test_items:
            rows["Otsu + watershed"].append(
                score(instances_from_mask(otsu_mask(item.image)), item.labels)
            )
            for label, model in models.items():
                if label == "built-in, no resizing":
                    predicted = predict_instances(model, item.image, diameter=None)
                elif model.object_maps:
                    predicted = predict_instances(model, item.image)
                else:
                    predicted = instances_from_probabilities(
                        predict(model, item.image), default_instance_config(model)
                    )
                rows[label].append(score(predicted, item.labels))
        results[part.collection] = {label: summarise(r) for label, r in rows.items()}
        per_image[part.collection] = {
            label: [{"name": item.name, **r} for item, r in zip(test_items, method_rows)]
            for label, method_rows in rows.items()
        }
        print(f"\n{part.label}: {len(test_items)} images ({time.perf_counter() - start:.0f} s)")
        print(
            f"{'method':<28} {'pixel F1':>8} {'obj P':>6} {'obj R':>6} {'obj F1':>7} "
            f"{'DSB AP':>7} {'merges':>6} {'splits':>6} {'found/true':>11}"
        )
        for label, r in results[part.collection].items():
            print(
                f"{label:<28} {r['pixel_f1']:8.3f} {r['object_precision']:6.3f} "
                f"{r['object_recall']:6.3f} {r['object_f1']:7.3f} {r['dsb_ap']:7.3f} "
                f"{r['merges']:6d} {r['splits']:6d} {r['n_pred']:5d}/{r['n_true']:<5d}"
            )
    pooled = pooled_tables(per_image)
    print_pooled(pooled)
    builtin_label = f"built-in {builtin.name}"
    targets = {}
    for collection, wanted in TARGETS.items():
        got = results[collection][builtin_label]
        targets[collection] = {
            key: {"target": value, "reached": round(got[key], 4), "met": got[key] >= value}
            for key, value in wanted.items()
        }
    print("\ntargets of the built-in model:")
    for collection, checks in targets.items():
        for key, check in checks.items():
            verdict = "met" if check["met"] else "MISSED"
            print(
                f"  {collection:<15} {key:<10} {check['reached']:.3f} (>= {check['target']}) {verdict}"
            )
    if args.candidate:
        better = {
            collection: results[collection]["candidate"]["object_f1"]
            > results[collection][builtin_label]["object_f1"]
            for collection in results
        }
        print(f"\ncandidate better by object F1 on: {better}; ship: {all(better.values())}")
    speed = None
    if args.speed:
        image = mosaic_2048(data_root())
        speed = time_paths(builtin, image)
        print("\nimage -> instances, 2048 x 2048, built-in model:")
        for label, r in speed.items():
            print(f"  {label:<26} {r['megapixels_per_s']:.2f} Mpx/s ({r['seconds']:.2f} s)")
    report = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "budget_seconds": args.budget,
        "training": training,
        "builtin": {"name": builtin.name, "summary_steps": builtin.summary.get("steps")},
        "results": results,
        "targets": targets,
        "size_buckets": pooled["size_buckets"],
        "dense": pooled["dense"],
        "speed_2048": speed,
        "images": per_image,
    }
    write_results(args.json, report)


if __name__ == "__main__":
    main()
