"""Reproduce the built-in generalist model ``fluo-nuclei`` from the public data.

Trains an object-aware U-Net (nucleus probability + centre map + boundary map) on the
fluorescence training parts of three CC0 collections and never on a test part:

- ``kromp2020`` ``paper_42_37`` train (42 images),
- ``dsb2018_train`` ``fluo_90_10`` train (487),
- ``bbbc039`` ``split_100_50_50`` train + val (100).

5 % of those images (a seeded draw) are held out to pick the best epoch, the default
threshold and the instance rule (centre- or boundary-seeded watershed, seed threshold,
smallest nucleus) by object F1; the test parts are only read by
``benchmarks/generalist.py``.

    python scripts/train_builtin_model.py --time-budget 4500       # CPU, ~75 min
    python scripts/train_builtin_model.py --device cuda --time-budget 1800
    python scripts/train_builtin_model.py --init first.pt --lr 1e-3 --time-budget 3000  # more
    python scripts/train_builtin_model.py --piece --time-budget 7200   # one more piece
    python scripts/train_builtin_model.py --steps 3123 --threads 1 --out new.pt  # same steps

A *piece* (``--piece``) continues the long schedule from the committed model alone: a warm
restart of the learning-rate cycle from the shipped weights, judged on the same validation
images by object F1 against those weights; ``--out`` is replaced only when the piece
improves them, and every piece, kept or not, is appended to ``--pieces``
(``benchmarks/results/builtin_pieces.json``), the schedule's history.

writes ``src/napari_unet_nuclei/models/fluo-nuclei.pt`` and a JSON report beside
``--report``; then run ``benchmarks/generalist.py`` for the scores and the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "napari_unet_nuclei" / "models" / "fluo-nuclei.pt"


def choose_instance_rule(model, items) -> tuple[dict, list[dict]]:
    """The instance settings with the best mean object F1 on ``items`` (validation)."""
    from napari_unet_nuclei.evaluate.object_metrics import object_scores
    from napari_unet_nuclei.nn.probabilities import sigmoid
    from napari_unet_nuclei.prediction.inference import iter_frame_logits
    from napari_unet_nuclei.prediction.instances import InstanceConfig, instances_from_maps

    outputs = []
    for item in items:
        frames = [
            e.logits
            for e in iter_frame_logits(model, item.image, all_channels=True)
            if hasattr(e, "logits")
        ]
        outputs.append(sigmoid(frames[0]))
    names = model.config.channel_names
    candidates = [
        InstanceConfig(threshold=model.threshold, seeds="distance", min_size=size)
        for size in (10, 20, 30)
    ]
    for size in (10, 20, 30):
        candidates += [
            InstanceConfig(
                threshold=model.threshold, seeds="centre", min_peak_height=h, min_size=size
            )
            for h in (0.1, 0.2, 0.3, 0.4)
        ]
        candidates += [
            InstanceConfig(
                threshold=model.threshold, seeds="boundary", seed_threshold=t, min_size=size
            )
            for t in (0.3, 0.5, 0.7)
        ]
    table = []
    for config in candidates:
        scores = []
        for item, out in zip(items, outputs):
            maps = dict(zip(names[1:], out[1:]))
            labels = instances_from_maps(out[0], maps, config)
            scores.append(object_scores(labels, item.labels)["f1"])
        table.append({**config.to_dict(), "val_object_f1": float(np.mean(scores))})
    best = max(table, key=lambda row: row["val_object_f1"])
    chosen = {k: v for k, v in best.items() if k != "val_object_f1"}
    return InstanceConfig(**chosen).to_dict(), table


def record_piece(args, model, seconds: float, start_model) -> None:
    """Append one piece of the long schedule to ``args.pieces``."""
    import torch

    path = Path(args.pieces)
    pieces = json.loads(path.read_text()) if path.is_file() else []
    summary = model.summary
    pieces.append(
        {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "start_sha256": hashlib.sha256(Path(args.init).read_bytes()).hexdigest(),
            "start_model_steps": start_model.summary.get("steps"),
            "objective": args.objective,
            "peak_learning_rate": args.piece_lr,
            "steps": summary.get("steps"),
            "seconds": round(seconds, 1),
            "device": args.device,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "val_object_f1_start": summary.get("start_val_object_f1"),
            "val_object_f1_end": summary.get("best_val_object_f1"),
            "val_merges_end": summary.get("best_val_merges"),
            "kept": not summary.get("kept_start_weights"),
            "history": summary.get("history"),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pieces, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-budget", type=float, default=4500.0, help="training seconds")
    parser.add_argument(
        "--steps",
        type=int,
        help="train this many steps instead of --time-budget seconds (the same on any machine)",
    )
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--report", default=str(ROOT / "benchmarks/results/builtin_training.json"))
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="continue from this model (its architecture and maps; a second, shorter schedule)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument(
        "--piece",
        action="store_true",
        help="continue from --out (the shipped model): warm restart, kept only if better",
    )
    parser.add_argument("--piece-lr", type=float, default=1e-3, help="a piece's peak rate")
    parser.add_argument("--objective", default="separating", help="separating or plain")
    parser.add_argument("--pieces", default=str(ROOT / "benchmarks/results/builtin_pieces.json"))
    parser.add_argument(
        "--choose-only",
        metavar="MODEL",
        help="skip training: choose the instance rule of this saved model again, write --out",
    )
    args = parser.parse_args()

    import torch

    from napari_unet_nuclei.data.public_data import GENERALIST_TRAINING_PARTS, load_parts
    from napari_unet_nuclei.events import EpochEnd
    from napari_unet_nuclei.io.model_io import save_model
    from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS
    from napari_unet_nuclei.train.augmentation import AugmentationConfig
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    items = load_parts(GENERALIST_TRAINING_PARTS)
    rng = np.random.default_rng(args.seed)
    n_val = max(1, round(0.05 * len(items)))
    val_names = tuple(sorted(items[i].name for i in rng.permutation(len(items))[:n_val]))
    if args.choose_only:
        from napari_unet_nuclei.io.model_io import load_model

        model = load_model(args.choose_only)
        val_items = [i for i in items if i.name in set(model.summary.get("val_names", []))]
        instance_config, table = choose_instance_rule(model, val_items)
        print(f"instance rule chosen on {len(val_items)} validation images: {instance_config}")
        model.summary["instance_config"] = instance_config
        save_model(model, args.out)
        report_path = Path(args.report)
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        report.update({"instance_config": instance_config, "instance_rules": table})
        report_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out} and {args.report}")
        return
    print(
        f"{len(items)} training images ({sum(i.image.size for i in items) / 1e6:.0f} Mpx), "
        f"{n_val} held out for validation; "
        + (f"{args.steps} steps" if args.steps else f"{args.time_budget:.0f} s")
        + f" on {args.device}"
    )
    config = TrainingConfig(
        features=args.features,
        depth=args.depth,
        time_budget=None if args.steps else args.time_budget,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        validation_names=val_names,
        object_maps=OBJECT_MAPS,
        augmentation=AugmentationConfig(flips=True, rotations90=True, intensity=True, affine=True),
        learning_rate=args.lr,
        name="fluo-nuclei",
    )
    init_model = None
    if args.piece:
        args.init = args.init or args.out
        config = replace(
            config,
            fine_tune_learning_rate=args.piece_lr,
            freeze_batchnorm=False,
        )
    config = replace(config, objective=args.objective)
    if args.init:
        from napari_unet_nuclei.io.model_io import load_model

        init_model = load_model(args.init)
        init_model.name = "fluo-nuclei"
        # Continuing a schedule is not a fine-tune on a few images: the given rate.
        if not args.piece:
            config = replace(config, fine_tune_learning_rate=args.lr, freeze_batchnorm=False)
    start = time.perf_counter()

    def progress(event) -> None:
        if isinstance(event, EpochEnd):
            print(
                f"epoch {event.epoch:3d}  {event.elapsed:6.0f} s  train loss {event.train_loss:.4f}"
                f"  val F1 {event.val_f1:.4f}  IoU {event.val_iou:.4f}",
                flush=True,
            )

    model = train_model(
        [i.image for i in items],
        [i.labels for i in items],
        config,
        names=[i.name for i in items],
        init_model=init_model,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    if args.piece:
        record_piece(args, model, seconds, init_model)
        if model.summary.get("kept_start_weights"):
            print("the piece did not beat the shipped weights on validation: model unchanged")
            return
    val_items = [i for i in items if i.name in set(val_names)]
    instance_config, table = choose_instance_rule(model, val_items)
    print(f"instance rule chosen on {len(val_items)} validation images: {instance_config}")
    model.summary["instance_config"] = instance_config
    model.summary["training_data"] = [p.label for p in GENERALIST_TRAINING_PARTS]
    model.summary["device"] = str(args.device)
    save_model(model, args.out)
    report = {
        "recipe": config.to_dict(),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "steps": model.summary.get("steps"),
        "epochs": model.summary.get("epochs"),
        "best_epoch": model.summary.get("best_epoch"),
        "best_val_f1": model.summary.get("best_val_f1"),
        "best_val_object_f1": model.summary.get("best_val_object_f1"),
        "threshold": model.threshold,
        "instance_config": instance_config,
        "instance_rules": table,
        "n_train_images": len(items) - n_val,
        "validation_names": list(val_names),
    }
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) and {args.report}")


if __name__ == "__main__":
    main()
