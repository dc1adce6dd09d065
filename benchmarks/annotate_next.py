"""Annotate next: frames picked by the model's uncertainty vs random frames, on ``lab_70_9``.

Simulates a user of the *Annotate next* widget on the lab's 128x128 data
(``nuclei_128.npz``, split ``lab_70_9``: a pool of 70 training images, 9 test images):

1. per seed, 5 random training images are "annotated" and a model is trained on them;
2. three rounds: 5 more images are added, either the first 5 of the ranking
   (:func:`napari_unet_nuclei.prediction.ranking.iter_rank_frames` on the rest of the pool with
   the current model: test-time-augmented uncertainty with diversity, the widget's
   defaults) or 5 random ones, and a model is trained on the larger set;
3. after each round, per-image mean F1 (Dice) on the 9 test images at threshold 0.5.

Each round retrains **from scratch** (same seed, same fixed number of optimiser steps, the
engine's default network and augmentation, no validation hold-out), so the two arms differ
only in which images were added, not in how long a model has been trained. Both arms start
from the same 5 images and the same first model. ``--budget S`` trains for S seconds per
round instead of a fixed step count (faster to set up, but noisier on a shared machine).

Prints a table and writes JSON ``{"ranked": [F1 after round 1, 2, 3], "random": [...]}``
(means over seeds) with per-seed values beside::

    OMP_NUM_THREADS=1 python benchmarks/annotate_next.py --seeds 3 \\
        --json benchmarks/results/annotate_next.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _machine import machine_info, write_results
from napari_unet_nuclei.evaluate.metrics import segmentation_scores
from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.prediction.ranking import DEFAULT_DIVERSITY, iter_rank_frames
from napari_unet_nuclei.train.training import TrainingConfig, train_model

DATA = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
KROMP = DATA / "kromp2020"
START, ADD, ROUNDS = 5, 5, 3


def load_lab_70_9() -> tuple[list, list]:
    """Training pool and test images of the ``lab_70_9`` split."""
    items = load_dataset(KROMP / "nuclei_128.npz")
    train_names, test_names = parse_split(f"{KROMP / 'splits.json'}:lab_70_9")
    return select_by_names(items, train_names), select_by_names(items, test_names)


def train_on(pool: list, chosen: list[int], args: argparse.Namespace, seed: int):
    """Train a model from scratch on the chosen pool images."""
    if args.budget:
        config = TrainingConfig(
            time_budget=args.budget, validation_fraction=0.0, seed=seed, device="cpu"
        )
    else:
        config = TrainingConfig(
            epochs=args.epochs,
            steps_per_epoch=max(1, args.steps // args.epochs),
            validation_fraction=0.0,
            seed=seed,
            device="cpu",
        )
    return train_model([pool[i].image for i in chosen], [pool[i].labels for i in chosen], config)


def test_f1(model, test: list) -> float:
    """Per-image mean F1 on the test images at probability 0.5."""
    scores = [segmentation_scores(predict(model, i.image) >= 0.5, i.mask)["f1"] for i in test]
    return float(np.mean(scores))


def ranked_picks(model, pool: list, chosen: list[int], n: int, diversity: float) -> list[int]:
    """The first ``n`` frames of the uncertainty ranking of the pool (chosen ones excluded)."""
    stack = np.stack([item.image for item in pool])
    generator = iter_rank_frames(model, stack, diversity=diversity, labelled=chosen)
    while True:
        try:
            next(generator)
        except StopIteration as done:
            return done.value.order[:n]


def run_seed(pool: list, test: list, seed: int, args: argparse.Namespace) -> dict:
    """Both arms for one seed: F1 after the start and after each round."""
    rng = np.random.default_rng(seed)
    start = [int(i) for i in rng.choice(len(pool), START, replace=False)]
    first = train_on(pool, start, args, seed)
    result = {"start_images": [pool[i].name for i in start], "start_f1": test_f1(first, test)}
    for arm in ("ranked", "random"):
        arm_rng = np.random.default_rng(1000 + seed)
        chosen, model, scores, added = list(start), first, [], []
        for _ in range(ROUNDS):
            if arm == "ranked":
                picks = ranked_picks(model, pool, chosen, ADD, args.diversity)
            else:
                rest = [i for i in range(len(pool)) if i not in chosen]
                picks = [int(i) for i in arm_rng.choice(rest, ADD, replace=False)]
            chosen += picks
            added.append([pool[i].name for i in picks])
            model = train_on(pool, chosen, args, seed)
            scores.append(test_f1(model, test))
            print(
                f"  seed {seed} {arm:>6} round {len(scores)}: {len(chosen)} images, "
                f"test F1 {scores[-1]:.4f}",
                flush=True,
            )
        result[arm] = scores
        result[f"{arm}_added"] = added
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="benchmarks/results/annotate_next.json")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument(
        "--budget", type=float, default=None, help="training seconds per round (else --steps)"
    )
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per training")
    parser.add_argument("--epochs", type=int, default=5, help="epochs the steps are split into")
    parser.add_argument(
        "--diversity", type=float, default=DEFAULT_DIVERSITY, help="weight of novelty"
    )
    args = parser.parse_args()
    pool, test = load_lab_70_9()
    begin = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(run_seed(pool, test, seed, args))
    report = {
        "ranked": [float(np.mean([r["ranked"][k] for r in per_seed])) for k in range(ROUNDS)],
        "random": [float(np.mean([r["random"][k] for r in per_seed])) for k in range(ROUNDS)],
        "start": float(np.mean([r["start_f1"] for r in per_seed])),
        "seeds": per_seed,
        "settings": {
            "split": "lab_70_9 (nuclei_128.npz): pool of 70 training images, 9 test images",
            "start_images": START,
            "added_per_round": ADD,
            "rounds": ROUNDS,
            "training": (
                f"from scratch each round, {args.budget} s"
                if args.budget
                else f"from scratch each round, {args.steps} steps ({args.epochs} epochs)"
            )
            + ", engine defaults (F=8, depth 4, flips + rot90), no validation hold-out",
            "ranking": f"uncertainty (entropy + TTA disagreement, 4 flips), diversity {args.diversity}",
            "metric": "per-image mean F1 on the 9 test images at probability 0.5",
        },
        "seconds": round(time.perf_counter() - begin, 1),
        "machine": machine_info(),
    }
    print(
        f"\nlab_70_9: test F1 (mean of {args.seeds} seeds) after each round of +{ADD} images, "
        f"start {START} images: F1 {report['start']:.4f}"
    )
    print(f"{'round':<6} {'images':>6} {'ranked':>8} {'random':>8} {'difference':>10}")
    for k in range(ROUNDS):
        ranked, random_ = report["ranked"][k], report["random"][k]
        print(
            f"{k + 1:<6} {START + ADD * (k + 1):>6} {ranked:8.4f} {random_:8.4f} "
            f"{ranked - random_:+10.4f}"
        )
    print(f"{report['seconds']:.0f} s in all")
    write_results(args.json, report)


if __name__ == "__main__":
    main()
