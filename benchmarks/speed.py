"""Speed of inference and training, each beside a plain reference measured in the same run.

For U-Nets of depth 4 with F = 8, 16 and 32 features (``--features``), in one process:

* **Inference**: megapixels/s of the public :func:`~napari_unet_nuclei.predict` with its
  defaults on a 2048 x 2048 image (a mosaic of real Kromp images), beside the *naive
  reference*: the same network in eager float32, the whole image in one call, no tiles.
  The other paths ``predict`` can take (float32 channels-last, ONNX Runtime, bfloat16
  where the CPU has it) are measured too. Peak memory is the largest rise of the resident
  set size (RSS) during each call.
* **Mask agreement**: IoU between the default path's masks and the naive float32
  reference's masks on ``paper_42_37`` test images, for a model of that width trained for
  ``--train-budget`` seconds on the ``paper_42_37`` training images.
* **Training**: samples/s of the engine's own loop (:func:`~napari_unet_nuclei.train.training.train`
  with its defaults: patch sampling, augmentation, events) between its step events, beside
  a bare forward + backward + AdamW step on pre-made tensors, in eager float32 and in the
  engine's default precision.
* **Time to F1 0.95** on ``lab_70_9`` (per-image mean F1 on the 9 test images) with the
  default settings (F=8), and the final F1 of the default training beside float32
  training with the same number of steps, for each seed of ``--seeds``.

Prints tables and writes JSON::

    python benchmarks/speed.py --json benchmarks/results/speed.json
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tifffile
import torch

from _machine import machine_info, write_results
from napari_unet_nuclei.evaluate.metrics import segmentation_scores
from napari_unet_nuclei.events import EpochEnd, TrainingStep
from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
from napari_unet_nuclei.io.model_io import load_model, save_model
from napari_unet_nuclei.nn.acceleration import cpu_supports_bf16, onnxruntime_available
from napari_unet_nuclei.nn.model import create_model
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.train.losses import probability_loss
from napari_unet_nuclei.train.training import TrainingConfig, train, train_model

DATA = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
KROMP = DATA / "kromp2020"
SIDE = 2048


def peak_memory_mb(kind: str, features: int, model_path: Path | None = None) -> float:
    """Peak resident memory (MB) that one call of ``kind`` adds, in a fresh process.

    Memory that an earlier call freed stays with the process's allocator, so every path
    is measured alone: ``peak RSS during the call - RSS just before it``.
    """
    command = [sys.executable, __file__, "--memory-probe", kind, "--features", str(features)]
    if model_path is not None:
        command += ["--model", str(model_path)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def memory_probe(kind: str, features: int, model_path: str | None) -> None:
    """Run one measured path once and print its peak RSS rise in MB (``--memory-probe``)."""
    if kind.startswith("train-"):
        if kind == "train-engine":
            paper = load_dataset(KROMP)
            train_names, _ = parse_split(f"{KROMP / 'splits.json'}:paper_42_37")
            items = select_by_names(paper, train_names)
            images, labels = [i.image for i in items], [i.labels for i in items]
            base = psutil.Process().memory_info().rss
            engine_training_speed(images, labels, features, 5)
        else:
            base = psutil.Process().memory_info().rss
            bare_training_speed(features, 2, kind.removeprefix("train-bare-"))
    else:
        model = load_model(model_path)
        image = mosaic_image()
        paths = inference_paths(model, image)
        base = psutil.Process().memory_info().rss
        paths[kind]()
    print((peak_rss_bytes() - base) / 2**20)


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` on Linux (``ru_maxrss`` is inherited across fork
    and exec there, so a child would report its parent's peak), else ``ru_maxrss``."""
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def mosaic_image() -> np.ndarray:
    """A 2048 x 2048 uint8 image tiled from four real 1024 x 1024 Kromp crops."""
    crops = []
    for path in sorted((KROMP / "images").glob("*.tif")):
        image = tifffile.imread(path)
        if min(image.shape) >= 1024:
            crops.append(image[:1024, :1024])
        if len(crops) == 4:
            break
    return np.block([[crops[0], crops[1]], [crops[2], crops[3]]])


def naive_logits(network: torch.nn.Module, frame: np.ndarray) -> np.ndarray:
    """The reference: eager float32, the whole normalised frame in one call, no tiling."""
    with torch.inference_mode():
        return network(torch.from_numpy(frame)[None, None])[0, 0].numpy()


def inference_paths(model: Any, image: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The measured inference paths, by name."""
    reference = copy.deepcopy(model.network).to(memory_format=torch.contiguous_format).eval()
    frame = normalize_frame(image, model.normalization)
    paths: dict[str, Callable[[], Any]] = {
        "naive eager fp32 (reference)": lambda: naive_logits(reference, frame),
        "predict default": lambda: predict(model, image),
        "predict torch fp32": lambda: predict(model, image, backend="torch", precision="fp32"),
    }
    if onnxruntime_available():
        paths["predict onnxruntime fp32"] = lambda: predict(
            model, image, backend="onnxruntime", precision="fp32"
        )
    if cpu_supports_bf16():
        paths["predict torch bf16"] = lambda: predict(
            model, image, backend="torch", precision="bf16"
        )
    return paths


def inference_rows(
    model: Any, image: np.ndarray, repeats: int, model_path: Path
) -> dict[str, dict[str, float]]:
    megapixels = image.size / 1e6
    paths = inference_paths(model, image)
    for function in paths.values():  # warm-up: oneDNN kernels, ONNX export
        function()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):  # interleaved, so background load hits every path alike
        for name, function in paths.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    reference_speed = megapixels / float(np.median(seconds["naive eager fp32 (reference)"]))
    rows = {}
    for name in paths:
        speed = megapixels / float(np.median(seconds[name]))
        rows[name] = {
            "megapixels_per_s": speed,
            "x_reference": speed / reference_speed,
            "peak_rss_mb": peak_memory_mb(name, model.config.features, model_path),
        }
    return rows


def mask_agreement(model: Any, images: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """IoU of each fast path's masks with the naive float32 reference's masks."""
    reference = copy.deepcopy(model.network).to(memory_format=torch.contiguous_format).eval()
    paths: dict[str, dict[str, Any]] = {"predict default": {}}
    if cpu_supports_bf16():
        paths["predict torch bf16"] = {"backend": "torch", "precision": "bf16"}
    counts = {name: [0, 0, []] for name in paths}
    for image in images:
        truth = naive_logits(reference, normalize_frame(image, model.normalization)) >= 0
        for name, options in paths.items():
            mask = predict(model, image, **options) >= 0.5
            inter, uni = int((truth & mask).sum()), int((truth | mask).sum())
            counts[name][0] += inter
            counts[name][1] += uni
            counts[name][2].append(inter / uni if uni else 1.0)
    return {
        name: {
            "iou_pooled": inter / uni if uni else 1.0,
            "iou_min_image": float(min(per_image)),
            "n_images": len(images),
        }
        for name, (inter, uni, per_image) in counts.items()
    }


def engine_training_speed(
    images: list[np.ndarray], labels: list[np.ndarray], features: int, steps: int
) -> float:
    """Samples/s of the engine's loop between step events."""
    config = TrainingConfig(
        features=features, depth=4, epochs=1, steps_per_epoch=steps, batchnorm_batches=0
    )
    times: list[float] = []
    for event in train(images, labels, config):
        if isinstance(event, TrainingStep):
            times.append(time.perf_counter())
        elif isinstance(event, EpochEnd):
            break
    measured = times[2:]  # the first steps warm up oneDNN
    return config.batch_size * (len(measured) - 1) / (measured[-1] - measured[0])


def bare_training_speed(features: int, steps: int, precision: str) -> float:
    """Samples/s of forward + backward + AdamW on pre-made tensors.

    ``precision``: ``"fp32-eager"`` (the reference), ``"fp32"`` or ``"bf16"`` (both
    channels-last, as the engine runs them).
    """
    config = TrainingConfig()
    torch.manual_seed(0)
    network = create_model(features, 4).network.train()
    fast = precision != "fp32-eager"
    if fast:
        network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate)
    size = (config.batch_size, 1, config.patch_size, config.patch_size)
    x = torch.randn(size)
    y = (torch.rand(size) > 0.7).float()
    w = torch.ones(size)
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = network(x)
        probability_loss(logits.float(), y, w, config.dice_weight).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return config.batch_size * steps / (time.perf_counter() - start)


def lab_f1(model: Any, items: list[Any]) -> float:
    return float(
        np.mean([segmentation_scores(predict(model, i.image) >= 0.5, i.mask)["f1"] for i in items])
    )


def time_to_f1(seeds: list[int], target: float) -> list[dict[str, Any]]:
    items = load_dataset(KROMP / "nuclei_128.npz")
    train_names, test_names = parse_split(f"{KROMP / 'splits.json'}:lab_70_9")
    train_items, test_items = (
        select_by_names(items, train_names),
        select_by_names(items, test_names),
    )
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for label, precision in (("default", "auto"), ("fp32", "fp32")):
            reached = None
            start = time.perf_counter()

            def watch(event: Any, start: float = start) -> None:
                nonlocal reached
                if isinstance(event, EpochEnd) and reached is None and event.val_f1 >= target:
                    reached = time.perf_counter() - start

            model = train_model(
                [i.image for i in train_items],
                [i.labels for i in train_items],
                TrainingConfig(seed=seed, precision=precision),
                val_images=[i.image for i in test_items],
                val_labels=[i.labels for i in test_items],
                progress=watch,
            )
            row[label] = {
                "seconds": time.perf_counter() - start,
                "steps": model.summary["steps"],
                "final_test_f1": lab_f1(model, test_items),
                "best_val_f1": model.summary["best_val_f1"],
                "seconds_to_target": reached,
            }
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per inference path")
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps")
    parser.add_argument(
        "--train-budget", type=float, default=60.0, help="seconds of training per width"
    )
    parser.add_argument(
        "--iou-images",
        type=int,
        default=12,
        help="paper_42_37 test images for the mask agreement (all 37 for F=16)",
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--target-f1", type=float, default=0.95)
    parser.add_argument("--json", default="benchmarks/results/speed.json")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.features[0], args.model)
        return
    scratch = tempfile.mkdtemp(prefix="speed-benchmark-")

    train_names, test_names = parse_split(f"{KROMP / 'splits.json'}:paper_42_37")
    paper = load_dataset(KROMP)
    paper_train, paper_test = (
        select_by_names(paper, train_names),
        select_by_names(paper, test_names),
    )
    image = mosaic_image()
    report: dict[str, Any] = {
        "machine": machine_info(cpu_bf16=cpu_supports_bf16(), onnxruntime=onnxruntime_available()),
        "image": list(image.shape),
        "widths": {},
    }
    for features in args.features:
        print(f"F={features}: training {args.train_budget:.0f} s on paper_42_37 ...", flush=True)
        model = train_model(
            [i.image for i in paper_train],
            [i.labels for i in paper_train],
            TrainingConfig(features=features, time_budget=args.train_budget),
        )
        model_path = Path(scratch) / f"unet_f{features}.pt"
        save_model(model, model_path)
        n_iou = len(paper_test) if features == 16 else min(args.iou_images, len(paper_test))
        engine_speed = engine_training_speed(
            [i.image for i in paper_train],
            [i.labels for i in paper_train],
            features,
            args.train_steps + 3,
        )
        bare_fp32 = bare_training_speed(features, args.train_steps, "fp32-eager")
        default_precision = "bf16" if cpu_supports_bf16() else "fp32"
        bare_default = bare_training_speed(features, args.train_steps, default_precision)
        report["widths"][features] = {
            "inference": inference_rows(model, image, args.repeats, model_path),
            "mask_agreement": mask_agreement(model, [i.image for i in paper_test[:n_iou]]),
            "training": {
                "engine loop (default)": {
                    "samples_per_s": engine_speed,
                    "peak_rss_mb": peak_memory_mb("train-engine", features),
                },
                f"bare step {default_precision} channels-last": {
                    "samples_per_s": bare_default,
                    "peak_rss_mb": peak_memory_mb(f"train-bare-{default_precision}", features),
                },
                "bare step fp32 eager (reference)": {
                    "samples_per_s": bare_fp32,
                    "peak_rss_mb": peak_memory_mb("train-bare-fp32-eager", features),
                },
                "engine_overhead_vs_bare_same_precision": 1 - engine_speed / bare_default,
                "engine_x_fp32_reference": engine_speed / bare_fp32,
            },
        }
        print_width(features, report["widths"][features])
    if args.seeds:
        report["lab_70_9"] = time_to_f1(args.seeds, args.target_f1)
        print_lab(report["lab_70_9"], args.target_f1)
    write_results(args.json, report)


def print_width(features: int, rows: dict[str, Any]) -> None:
    print(f"\nF={features}, depth 4, inference on {SIDE} x {SIDE}")
    print(f"{'path':<30} {'Mpx/s':>7} {'x ref':>6} {'peak MB':>8}")
    for name, row in rows["inference"].items():
        print(
            f"{name:<30} {row['megapixels_per_s']:7.2f} {row['x_reference']:6.2f} {row['peak_rss_mb']:8.0f}"
        )
    for name, agreement in rows["mask_agreement"].items():
        print(
            f"mask IoU {name} vs fp32 reference on {agreement['n_images']} paper_42_37 test "
            f"images: pooled {agreement['iou_pooled']:.4f}, worst {agreement['iou_min_image']:.4f}"
        )
    print(f"{'training (batch 8 x 256 x 256)':<36} {'samples/s':>9} {'peak MB':>8}")
    for name, row in rows["training"].items():
        if isinstance(row, dict):
            print(f"{name:<36} {row['samples_per_s']:9.2f} {row['peak_rss_mb']:8.0f}")
    print(
        f"engine overhead vs bare step at the same precision: "
        f"{100 * rows['training']['engine_overhead_vs_bare_same_precision']:.1f} %; "
        f"engine vs eager fp32 bare step: {rows['training']['engine_x_fp32_reference']:.2f}x"
    )


def print_lab(rows: list[dict[str, Any]], target: float) -> None:
    print(f"\nlab_70_9, default settings (F=8, depth 4, 40 epochs): time to test F1 {target}")
    print(f"{'seed':>4} {'run':<8} {'steps':>6} {'seconds':>8} {'to target':>9} {'final F1':>8}")
    for row in rows:
        for label in ("default", "fp32"):
            r = row[label]
            to = "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.0f}"
            print(
                f"{row['seed']:>4} {label:<8} {r['steps']:>6} {r['seconds']:8.1f} {to:>9} {r['final_test_f1']:8.4f}"
            )


if __name__ == "__main__":
    main()
