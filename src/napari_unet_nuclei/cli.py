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

from napari_unet_nuclei.cli_arguments import parse_args
from napari_unet_nuclei.console import progress_bar, train_with_progress

__all__ = ["main"]


class CommandError(Exception):
    """A user error: printed as one sentence, exit status 2."""


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
    from napari_unet_nuclei.workflows.demo import DEMO_STEPS, run_demo

    run_demo(
        Path(args.out),
        steps=DEMO_STEPS if args.steps is None else args.steps,
        seed=args.seed,
        open_viewer=not args.no_viewer,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-unet-nuclei`` command."""
    from napari_unet_nuclei.io.labelled import DataError
    from napari_unet_nuclei.io.model_io import ModelFileError

    args = parse_args(argv)
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
