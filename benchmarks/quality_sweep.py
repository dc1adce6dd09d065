"""Which training settings give the best F1 on ``lab_70_9`` for a given number of steps.

The quality bar is set in seconds of a 2-core CPU, but what a setting buys in those
seconds is (steps the CPU affords) x (F1 per step). This script measures the second
factor at fixed step counts, so it can run anywhere, many runs side by side (on a GPU
machine in minutes); ``benchmarks/quality.py`` then checks the chosen default on the CPU
in real seconds.

Every run trains on the 70 ``lab_70_9`` training images of ``nuclei_128.npz`` and
validates on the 9 test images after every ``--steps-per-epoch`` steps. It reports

- ``final_f1``: per-image mean F1 of the final weights on the test images (no choice made
  on the test images: the honest figure);
- ``best_f1``: the best validation F1 over the run, i.e. the model that ``train --split``
  keeps (the protocol the issue names);
- ``best_tta_f1``: that model with 8-fold test-time augmentation.

Usage::

    python benchmarks/quality_sweep.py --grid main --workers 14 --device cuda \\
        --jsonl sweep.jsonl
    python benchmarks/quality_sweep.py --summarize sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

DATA = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


def grid(name: str) -> list[dict[str, Any]]:
    """Return the runs of a named grid: dicts with a label, steps and config overrides."""
    runs: list[dict[str, Any]] = []

    def add(label: str, steps: int, seeds=(0, 1, 2), **overrides: Any) -> None:
        for seed in seeds:
            runs.append({"label": label, "steps": steps, "seed": seed, "overrides": overrides})

    if name == "smoke":
        add("F8 d4", 40, seeds=(0,))
        add("F8 d4 ema", 40, seeds=(0,), ema_decay=0.99)
        add("F8 d4 lovasz", 40, seeds=(0,), loss="bce+lovasz")
        return runs
    if name == "main":
        # In order of priority (results stream out as runs end). A 2-core CPU affords
        # about 1,500 steps of F=8 and 700 of F=16 (depth 4, batch 8) in 120 s.
        add("F8 d4 1500", 1500)
        add("F8 bce", 1500, loss="bce")
        add("F8 image-dice", 1500, loss="bce+image-dice")
        add("F8 lovasz", 1500, loss="bce+lovasz")
        add("F8 ema.99", 1500, ema_decay=0.99)
        add("F8 ema.995", 1500, ema_decay=0.995)
        add("F16 d4 750", 750, features=16)
        add("F8 d3 1600", 1600, depth=3)
        add("F16 d3 900", 900, features=16, depth=3)
        add("F8 lr1.5e-3", 1500, learning_rate=1.5e-3)
        add("F8 lr6e-3", 1500, learning_rate=6e-3)
        add("F8 batch4", 2600, batch_size=4)
        add("F8 batch16", 800, batch_size=16)
        add("F8 +intensity", 1500, augmentation={"intensity": True})
        add("F8 +affine", 1500, augmentation={"affine": True})
        add("F8 no aug", 1500, augmentation={"flips": False, "rotations90": False})
        # How far more steps or a wider network go (the ceiling on this data).
        add("F8 d4 3000", 3000)
        add("F16 d4 1500", 1500, features=16)
        add("F8 d4 6000", 6000, seeds=(0, 1))
        add("F16 d4 3000", 3000, features=16, seeds=(0, 1))
        add("F32 d4 2000", 2000, features=32, seeds=(0, 1))
        return runs
    if name == "ceiling":
        # How far more steps or a wider network go on this data.
        add("F8 lovasz", 1500, loss="bce+lovasz")
        add("F8 d4 6000", 6000, seeds=(0, 1))
        add("F16 d4 3000", 3000, features=16, seeds=(0, 1))
        add("F32 d4 2000", 2000, features=32, seeds=(0, 1))
        return runs
    raise SystemExit(f"unknown grid {name!r}")


def _run(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from napari_unet_nuclei.evaluate.metrics import segmentation_scores
    from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.train.augmentation import AugmentationConfig
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    kromp = Path(job["data"]) / "kromp2020"
    items = load_dataset(kromp / "nuclei_128.npz")
    train_names, test_names = parse_split(f"{kromp / 'splits.json'}:lab_70_9")
    train_items = select_by_names(items, train_names)
    test_items = select_by_names(items, test_names)
    overrides = dict(job["overrides"])
    if "augmentation" in overrides:
        overrides["augmentation"] = AugmentationConfig(**overrides["augmentation"])
    spe = job["steps_per_epoch"]
    config = TrainingConfig(
        epochs=max(1, round(job["steps"] / spe)),
        steps_per_epoch=spe,
        seed=job["seed"],
        device=job["device"],
        precision=job["precision"],
        **overrides,
    )
    start = time.perf_counter()
    model = train_model(
        [i.image for i in train_items],
        [i.labels for i in train_items],
        config,
        val_images=[i.image for i in test_items],
        val_labels=[i.labels for i in test_items],
    )
    seconds = time.perf_counter() - start
    history = model.summary["history"]

    def mean_f1(**options: Any) -> float:
        return float(
            np.mean(
                [
                    segmentation_scores(predict(model, i.image, **options) >= 0.5, i.mask)["f1"]
                    for i in test_items
                ]
            )
        )

    return {
        **{k: job[k] for k in ("label", "steps", "seed", "overrides")},
        "final_f1": history[-1]["val_f1"],
        "best_f1": model.summary["best_val_f1"],
        "best_epoch": model.summary["best_epoch"],
        "epochs": model.summary["epochs"],
        "best_tta_f1": mean_f1(test_time_augmentation=True),
        "seconds": round(seconds, 1),
        "curve": [round(r["val_f1"], 4) for r in history],
    }


def summarize(path: Path) -> None:
    import numpy as np

    rows: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        rows.setdefault(record["label"], []).append(record)
    print(f"{'setting':<18} {'n':>2} {'final F1':>9} {'best F1':>9} {'best+TTA':>9} {'s/run':>6}")
    for label, records in rows.items():

        def mean(key: str, records=records) -> float:
            return float(np.mean([r[key] for r in records]))

        print(
            f"{label:<18} {len(records):>2} {mean('final_f1'):9.4f} {mean('best_f1'):9.4f} "
            f"{mean('best_tta_f1'):9.4f} {mean('seconds'):6.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="main")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", help="bf16 mimics a bf16 CPU")
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument("--jsonl", default="benchmarks/results/quality_sweep.jsonl")
    parser.add_argument("--summarize", help="print the table of an existing JSONL file")
    args = parser.parse_args()
    if args.summarize:
        summarize(Path(args.summarize))
        return
    jobs = [
        {
            **run,
            "data": str(DATA),
            "device": args.device,
            "precision": args.precision,
            "steps_per_epoch": args.steps_per_epoch,
        }
        for run in grid(args.grid)
    ]
    out = Path(args.jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(args.workers) as pool, out.open("a") as handle:
        for record in pool.imap_unordered(_run, jobs):
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            print(
                f"{record['label']:<18} seed {record['seed']} final {record['final_f1']:.4f} "
                f"best {record['best_f1']:.4f} tta {record['best_tta_f1']:.4f} "
                f"{record['seconds']:.0f}s",
                flush=True,
            )
    summarize(out)


if __name__ == "__main__":
    main()
