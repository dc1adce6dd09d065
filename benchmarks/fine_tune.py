"""Fine-tuning, the loop this plugin exists for: the built-in model fine-tuned on a few
annotated Kromp images against a network trained from scratch on the same images.

For each seed, ``--n-images`` images are drawn from the ``paper_42_37`` training part; both
models train for ``--budget`` seconds with the engine's defaults (the scratch one as an
object-aware U-Net F=8, depth 4, like the built-in model), and both are scored on the
``paper_42_37`` test part (object F1 at IoU 0.5, DSB AP, merges), next to the built-in model
as shipped.

    python benchmarks/fine_tune.py --seeds 0 1 2 --budget 120
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]


def scores(model, items) -> dict:
    """Mean object F1, DSB AP and pixel F1, and the merges, of ``model`` on ``items``."""
    from napari_unet_nuclei.metrics import confusion_counts
    from napari_unet_nuclei.object_metrics import dsb_average_precision, object_error_map
    from napari_unet_nuclei.segmentation import predict_instances

    rows = []
    for item in items:
        labels = predict_instances(model, item.image)
        errors = object_error_map(labels, item.labels)
        rows.append(
            {
                "object_f1": errors.match.scores()["f1"],
                "dsb_ap": dsb_average_precision(labels, item.labels),
                "pixel_f1": confusion_counts(labels > 0, item.labels > 0).f1,
                "merges": errors.merges,
            }
        )
    return {
        "object_f1": float(np.mean([r["object_f1"] for r in rows])),
        "dsb_ap": float(np.mean([r["dsb_ap"] for r in rows])),
        "pixel_f1": float(np.mean([r["pixel_f1"] for r in rows])),
        "merges": int(sum(r["merges"] for r in rows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-images", type=int, default=5)
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds each")
    parser.add_argument("--limit", type=int, help="score on the first N test images only")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/fine_tune.json"))
    args = parser.parse_args()

    import torch

    from napari_unet_nuclei.model_io import load_model
    from napari_unet_nuclei.object_targets import OBJECT_MAPS
    from napari_unet_nuclei.public_data import DataPart, load_part
    from napari_unet_nuclei.training import TrainingConfig, train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    pool = load_part(DataPart("kromp2020", "paper_42_37", ("train",)))
    test = load_part(DataPart("kromp2020", "paper_42_37", ("test",)), limit=args.limit)
    builtin = load_model("fluo-nuclei")
    shipped = scores(builtin, test)
    print(f"built-in as shipped on {len(test)} test images: {shipped}", flush=True)
    runs = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), args.n_images, replace=False))]
        images, labels = [i.image for i in chosen], [i.labels for i in chosen]
        config = TrainingConfig(
            time_budget=args.budget,
            seed=seed,
            validation_fraction=0.2,
            object_maps=OBJECT_MAPS,
        )
        start = time.perf_counter()
        tuned = train_model(images, labels, config, init_model=builtin)
        scratch = train_model(images, labels, config)
        row = {
            "seed": seed,
            "images": [i.name for i in chosen],
            "fine_tuned": scores(tuned, test),
            "from_scratch": scores(scratch, test),
            "steps": {
                "fine_tuned": tuned.summary["steps"],
                "from_scratch": scratch.summary["steps"],
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        runs.append(row)
        print(
            f"seed {seed}: fine-tuned object F1 {row['fine_tuned']['object_f1']:.3f} "
            f"DSB AP {row['fine_tuned']['dsb_ap']:.3f} | from scratch "
            f"{row['from_scratch']['object_f1']:.3f} / {row['from_scratch']['dsb_ap']:.3f}",
            flush=True,
        )
    summary = {
        kind: {
            key: float(np.mean([run[kind][key] for run in runs]))
            for key in ("object_f1", "dsb_ap", "pixel_f1")
        }
        for kind in ("fine_tuned", "from_scratch")
    }
    print(f"\n{len(args.seeds)} seeds, {args.n_images} images, {args.budget:.0f} s each:")
    print(f"{'model':<24} {'object F1':>9} {'DSB AP':>7} {'pixel F1':>8}")
    for label, values in (("built-in (shipped)", shipped), *summary.items()):
        print(
            f"{label:<24} {values['object_f1']:9.3f} {values['dsb_ap']:7.3f} "
            f"{values['pixel_f1']:8.3f}"
        )
    report = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "n_images": args.n_images,
        "budget_seconds": args.budget,
        "n_test_images": len(test),
        "builtin_as_shipped": shipped,
        "mean": summary,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
