"""Command line: ``napari-unet-nuclei train | segment | evaluate | export | demo``.

The same engine as the napari widgets, with progress bars in the terminal. Bad input
ends with one sentence on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.console import progress_bar, train_with_progress

__all__ = ["main"]

DEFAULT_MODEL = "fluo-nuclei"  # the built-in model (napari_unet_nuclei.io.builtin_models)


class CommandError(Exception):
    """A user error: printed as one sentence, exit status 2."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="napari-unet-nuclei",
        description="Train, apply and evaluate a U-Net for nuclei segmentation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on images with nucleus labels")
    train.add_argument(
        "--data", required=True, help="folder with images/ and masks/, a .npz or a .pck"
    )
    train.add_argument(
        "--split",
        help="FILE:KEY, e.g. splits.json:lab_70_9 (train on 'train', validate on 'test')",
    )
    train.add_argument("--out", required=True, help="model file to write (.pt)")
    train.add_argument(
        "--features", type=int, default=8, help="channels of the first level F (default 8)"
    )
    train.add_argument(
        "--depth", type=int, default=4, help="number of down-samplings, 1-5 (default 4)"
    )
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="number of epochs (default 40)")
    budget.add_argument("--time-budget", type=float, help="train for this many seconds instead")
    budget.add_argument(
        "--steps",
        type=int,
        help="train this many steps instead (the same model on a busy and an idle machine)",
    )
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default 3e-3 for a new network, 5e-4 when fine-tuning)",
    )
    train.add_argument("--patch-size", type=int, default=256)
    train.add_argument("--no-augment", action="store_true", help="switch all augmentation off")
    train.add_argument(
        "--augment-intensity",
        action="store_true",
        help="add random contrast, gamma and noise (off by default)",
    )
    train.add_argument(
        "--augment-affine",
        action="store_true",
        help="add random rotation, zoom and shear (off by default)",
    )
    train.add_argument(
        "--object-maps",
        default="centre,boundary",
        help="maps a new network learns beside the nucleus probability to tell touching "
        "nuclei apart: comma-separated among centre, boundary, or 'none' for the lab's "
        "probability-only U-Net (default centre,boundary; a fine-tuned model keeps its own)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--init",
        help="fine-tune this model file or built-in model (e.g. fluo-nuclei) instead of "
        "starting from scratch",
    )
    train.add_argument(
        "--replay",
        type=int,
        default=0,
        metavar="N",
        help="with --init fluo-nuclei: replay N images of the built-in model's training data "
        "(read from $NAPARI_UNET_NUCLEI_DATA) in a quarter of each batch, so that the "
        "fine-tune keeps what the model knew (default 0: off)",
    )
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    train.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: fp16 mixed precision on CUDA, bf16 on CPUs with native bfloat16, "
        "else fp32 (default auto)",
    )
    train.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share without --split"
    )
    train.add_argument(
        "--empty-is-background",
        action="store_true",
        help="also train on images whose labels hold no nucleus, as pure background "
        "(default: leave them out)",
    )

    segment = sub.add_parser(
        "segment",
        help="write a nucleus mask (or nuclei labels) for each image, stack or OME-Zarr",
    )
    segment.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model file (.pt) or built-in model name (default: {DEFAULT_MODEL}, built in)",
    )
    segment.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (TIFF incl. multi-page stacks, PNG, JPEG), folders, globs "
        "('data/*.tif') or OME-Zarr folders",
    )
    segment.add_argument("--out", required=True, help="output folder")
    segment.add_argument(
        "--threshold", type=float, help="probability threshold (default: the model's)"
    )
    segment.add_argument(
        "--probabilities", action="store_true", help="also write <name>_prob (float32)"
    )
    segment.add_argument(
        "--format",
        choices=["tiff", "zarr"],
        default="tiff",
        help="outputs as <name>.tif or <name>.ome.zarr (default tiff)",
    )
    segment.add_argument(
        "--instances",
        action="store_true",
        help="write nuclei labels (one id per nucleus, from the model's object maps or a "
        "seeded watershed) instead of the mask",
    )
    segment.add_argument(
        "--min-size",
        type=int,
        help="with --instances: smallest nucleus in pixels (default: the model's, 30 for "
        "models without a stored choice)",
    )
    segment.add_argument(
        "--stack-axis",
        choices=["auto", "frames", "z"],
        default="auto",
        help="for 3-D stacks: 'frames' labels each frame on its own (time points, separate "
        "images); 'z' finds 3-D nuclei across the slices; 'auto' (default): z where the file "
        "names its first axis z (OME, ImageJ), frames otherwise",
    )
    segment.add_argument(
        "--channel",
        type=int,
        help="the nuclear channel of a multi-channel image (default: the channel with the "
        "most nucleus-like contrast, said on stderr)",
    )
    segment.add_argument(
        "--diameter",
        type=_diameter,
        default="auto",
        metavar="PX",
        help="the nuclei's diameter in pixels: each image is resized so that its nuclei "
        "reach the size the model learned (about 26 px for the built-in model); 'auto' "
        "(default) estimates it and resizes only nuclei over twice that size; 'off' never "
        "resizes",
    )
    segment.add_argument(
        "--measure",
        action="store_true",
        help="also write <name>_nuclei.csv: label, area_px, centroid, intensity, "
        "eccentricity, and area_um2... where the file gives its pixel size",
    )
    cluster = segment.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run on a local dask cluster of N worker processes (default: in this process)",
    )
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing dask cluster, e.g. tcp://host:8786",
    )
    segment.add_argument(
        "--summary", metavar="CSV", help="summary CSV (default <out>/summary.csv)"
    )
    segment.add_argument(
        "--overwrite",
        action="store_true",
        help="segment again images whose outputs exist (default: skip them)",
    )
    segment.add_argument("--tile-size", type=int, default=512, help="tile side (default 512)")
    segment.add_argument("--device", default="auto")
    segment.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: fp16 on CUDA, bf16 on CPUs with native bfloat16, else fp32 (default auto)",
    )
    segment.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="auto: ONNX Runtime for fp32 on the CPU when installed, else PyTorch",
    )

    evaluate = sub.add_parser(
        "evaluate",
        help="pixel precision, recall, F1, IoU and AP, and nuclei matched one to one "
        "(object F1, DSB AP, merges), against ground truth",
    )
    evaluate.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model file (.pt) or built-in model name (default: {DEFAULT_MODEL})",
    )
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", help="FILE:KEY: evaluate on the key's 'test' names")
    evaluate.add_argument("--json", help="write the results to this JSON file")
    evaluate.add_argument(
        "--threshold", type=float, help="probability threshold (default: the model's)"
    )
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument(
        "--no-objects",
        action="store_true",
        help="pixel scores only (no one-to-one matching of nuclei, no DSB AP)",
    )

    export = sub.add_parser(
        "export", help="export a model as a bioimage.io package, ONNX or TorchScript"
    )
    export.add_argument(
        "--model", required=True, help="model file (.pt) or built-in model name to export"
    )
    export.add_argument("--format", required=True, choices=["bioimageio", "onnx", "torchscript"])
    export.add_argument("--out", required=True, help="file to write (.zip, .onnx or .pt)")

    demo = sub.add_parser(
        "demo",
        help="nuclei from the built-in model on the built-in sample, a short fine-tune, the "
        "before/after, then napari",
    )
    demo.add_argument("--out", default="napari-unet-nuclei-demo", help="output folder")
    demo.add_argument("--steps", type=int, default=120, help="fine-tuning steps (default 120)")
    demo.add_argument("--no-viewer", action="store_true", help="do not open napari at the end")
    demo.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _load_items(data: str, split: str | None, part: str) -> list[Any]:
    from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names

    items = load_dataset(data)
    if split is None:
        return items
    train_names, test_names = parse_split(split)
    return select_by_names(items, train_names if part == "train" else test_names)


def _object_maps_argument(text: str) -> tuple[str, ...]:
    from napari_unet_nuclei.nn.network import OBJECT_MAPS

    if text.strip().lower() in ("", "none"):
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in OBJECT_MAPS]
    if unknown or len(set(names)) != len(names):
        raise CommandError(
            f"--object-maps {text!r}: give distinct names among {', '.join(OBJECT_MAPS)}, "
            "or 'none'."
        )
    return names


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_unet_nuclei.io.datasets import select_labelled
    from napari_unet_nuclei.io.model_io import load_model, save_model
    from napari_unet_nuclei.train.augmentation import AugmentationConfig
    from napari_unet_nuclei.train.training import TrainingConfig

    items = _load_items(args.data, args.split, "train")
    keep, note = select_labelled(
        [item.labels for item in items],
        [item.name for item in items],
        empty_is_background=args.empty_is_background,
    )
    if note:
        print(f"napari-unet-nuclei train: warning: {note}", file=sys.stderr)
    items = [items[index] for index in keep]
    val_items = _load_items(args.data, args.split, "test") if args.split else None
    config = TrainingConfig(
        features=args.features,
        depth=args.depth,
        epochs=args.epochs,
        time_budget=args.time_budget,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr or 3e-3,
        fine_tune_learning_rate=args.lr or 5e-4,
        patch_size=args.patch_size,
        augmentation=AugmentationConfig.disabled()
        if args.no_augment
        else AugmentationConfig(intensity=args.augment_intensity, affine=args.augment_affine),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        validation_fraction=args.val_fraction,
        object_maps=_object_maps_argument(args.object_maps),
        name=Path(args.out).stem,
    )
    init_model = load_model(args.init) if args.init else None
    replay_items = None
    if args.replay:
        from napari_unet_nuclei.data.public_data import replay_sample
        from napari_unet_nuclei.io.labelled import DataError

        if init_model is None:
            raise CommandError("--replay replays a start model's images: give --init too.")
        try:
            replay_items = replay_sample(args.replay, seed=args.seed)
        except DataError as error:
            raise CommandError(
                f"--replay needs the built-in model's training data: {error}"
            ) from error
    model = train_with_progress(items, val_items, config, init_model, replay_items=replay_items)
    if not model.summary.get("history"):
        raise CommandError(
            f"training stopped before the first epoch ended, so no model was written to "
            f"{args.out} (an existing file there is kept)."
        )
    path = save_model(model, args.out)
    summary = model.summary
    print(
        f"saved {path}  epochs {summary['epochs']}  steps {summary['steps']}  "
        f"{summary['seconds']:.0f} s  best epoch {summary['best_epoch']}: validation "
        f"precision {summary['best_val_precision']:.4f}  recall {summary['best_val_recall']:.4f}  "
        f"F1 {summary['best_val_f1']:.4f}  IoU {summary['best_val_iou']:.4f}"
    )
    print(training_choice_text(summary))
    return 0


def training_choice_text(summary: dict) -> str:
    """One line: what the validation nuclei chose (epoch, threshold, rule) and why."""
    calibration = summary.get("threshold_calibration") or {}
    rule = (summary.get("instance_config") or {}).get("seeds")
    if calibration.get("by") == "object F1":
        text = (
            f"kept epoch {summary['best_epoch']} by validation nuclei: object F1 "
            f"{calibration['val_object_f1']:.4f}, {calibration['val_merges']} merged; "
            f"threshold {calibration['threshold']:.2f}"
        )
    elif calibration:
        text = (
            f"default threshold {calibration['threshold']:.2f} (validation F1 "
            f"{calibration['val_f1']:.4f}; {calibration['val_f1_at_0.5']:.4f} at 0.50)"
        )
    else:
        text = "no validation images: the last epoch kept, threshold 0.50"
    if rule:
        text += f", nuclei split by {rule} seeds"
    if summary.get("kept_start_weights"):
        text += (
            f". No epoch beat the start model on the validation nuclei (object F1 "
            f"{summary.get('start_val_object_f1', float('nan')):.4f}): its weights were kept"
        )
    return text


def read_input_image(path: Path) -> np.ndarray:
    """Read an image file to segment: 2-D, a stack of frames, or RGB(A) turned to grey."""
    from napari_unet_nuclei.io.image_files import read_image_file, to_grey

    if not path.is_file():
        raise CommandError(f"Input image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            image = tifffile.imread(path)
        except Exception as error:
            raise CommandError(f"{path} is not a readable TIFF file: {error}") from error
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = to_grey(image, name=str(path))
        return image
    return read_image_file(path)


def _diameter(text: str) -> float | str | None:
    """``--diameter``: a number of pixels, 'auto' or 'off' (checked by the engine's rule)."""
    from napari_unet_nuclei.prediction.nucleus_size import checked_diameter

    if text.lower() == "off":
        return None
    try:
        return checked_diameter(text.lower() if text.lower() == "auto" else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a diameter: give the nuclei's diameter in pixels (e.g. 40), "
            "'auto' or 'off'"
        ) from None


def _diameter_text(diameter: float, resized_frames: int) -> str:
    """'  nucleus diameter 114 px (resized)' for a segmented image's line."""
    if not np.isfinite(diameter):
        return ""
    return f"  nucleus diameter {diameter:.0f} px" + (" (resized)" if resized_frames else "")


def _cmd_segment(args: argparse.Namespace) -> int:
    from napari_unet_nuclei.events import BatchFinished, BatchStarted, FrameDone, ImageDone
    from napari_unet_nuclei.workflows.batch import segment_files
    from napari_unet_nuclei.workflows.segment_options import SegmentOptions

    options = SegmentOptions(
        threshold=args.threshold,
        format=args.format,
        probabilities=args.probabilities,
        instances=args.instances,
        min_size=args.min_size,
        stack_axis=args.stack_axis,
        channel=args.channel,
        measure=args.measure,
        diameter=args.diameter,
        tile_size=args.tile_size,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
    )
    bar = None
    finished = None
    events = segment_files(
        args.model,
        args.inputs,
        args.out,
        options,
        workers=args.workers,
        scheduler=args.scheduler,
        summary=args.summary,
        overwrite=args.overwrite,
    )
    try:
        for event in events:
            if isinstance(event, BatchStarted):
                bar = progress_bar(event.n_images, f"segmenting ({event.scheduler})")
                bar.unit = "image"
            elif isinstance(event, FrameDone) and event.n_frames > 1 and bar is not None:
                bar.set_postfix_str(f"frame {event.frame + 1}/{event.n_frames}")
            elif isinstance(event, ImageDone) and bar is not None:
                bar.update(1)
                if event.status == "failed":
                    bar.write(f"{event.name}: failed: {event.error}", file=sys.stderr)
                elif event.status == "skipped":
                    bar.write(f"{event.output}  skipped (done before)")
                else:
                    bar.write(
                        f"{event.output}  nuclei {event.nuclei}  "
                        f"foreground {event.foreground_fraction:.1%}"
                        + _diameter_text(event.diameter, event.resized_frames)
                    )
            elif isinstance(event, BatchFinished):
                finished = event
    finally:
        if bar is not None:
            bar.close()
    assert finished is not None
    print(
        f"{finished.n_done} segmented, {finished.n_skipped} skipped, {finished.n_failed} "
        f"failed in {finished.seconds:.1f} s ({finished.images_per_second:.2f} images/s); "
        f"summary {finished.summary_path}"
    )
    if finished.n_failed:
        print(
            f"napari-unet-nuclei segment: error: {finished.n_failed} of "
            f"{len(finished.rows)} images failed; see {finished.summary_path}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_unet_nuclei.io.model_io import load_model
    from napari_unet_nuclei.workflows.evaluate import evaluate_model

    model = load_model(args.model)
    items = _load_items(args.data, args.split, "test")
    result = evaluate_model(
        model, items, args.threshold, objects=not args.no_objects, device=args.device
    )
    objects = not args.no_objects
    width = max(len(row["name"]) for row in [*result["images"], {"name": "pooled"}])
    header = f"{'image':<{width}}  precision  recall      F1     IoU      AP"
    print(header + ("  object F1  DSB AP  merges" if objects else ""))
    for row in [
        *result["images"],
        {"name": "mean", **result["mean"]},
        {"name": "pooled", **result["pooled"]},
    ]:
        line = (
            f"{row['name']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:6.4f}  {row['iou']:6.4f}  {row['ap']:6.4f}"
        )
        if objects:
            merges = f"{row['merges']:7d}" if "merges" in row else " " * 7
            line += f"  {row['object_f1']:9.4f}  {row['dsb_ap']:6.4f}  {merges}"
        print(line)
    print(result["pooling"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_unet_nuclei.io.model_io import load_model
    from napari_unet_nuclei.workflows.export import export_model
    from napari_unet_nuclei.workflows.network_export import ExportError

    model = load_model(args.model)
    try:
        path = export_model(model, args.out, args.format)
    except ExportError as error:
        raise CommandError(str(error)) from error
    print(f"wrote {path} ({args.format}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_unet_nuclei.workflows.demo import run_demo

    run_demo(
        Path(args.out),
        steps=args.steps,
        seed=args.seed,
        open_viewer=not args.no_viewer,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet-nuclei`` command."""
    from napari_unet_nuclei.io.labelled import DataError
    from napari_unet_nuclei.io.model_io import ModelFileError

    args = _parse_args(argv)
    commands = {
        "train": _cmd_train,
        "segment": _cmd_segment,
        "evaluate": _cmd_evaluate,
        "demo": _cmd_demo,
        "export": _cmd_export,
    }

    def show_warning(message: Any, *_args: Any, **_kwargs: Any) -> None:
        print(f"napari-unet-nuclei {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return commands[args.command](args)
    except (CommandError, DataError, ModelFileError, FileNotFoundError, ValueError) as error:
        print(f"napari-unet-nuclei {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
