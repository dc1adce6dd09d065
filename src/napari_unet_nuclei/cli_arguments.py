"""The command line's arguments: ``napari-unet-nuclei train | segment | evaluate | export |
demo`` and their options, parsed without importing the engine (``--help`` stays quick)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from napari_unet_nuclei.prediction.tiling import DEFAULT_TILE_SIZE

__all__ = ["DEFAULT_MODEL", "diameter_argument", "parse_args"]

DEFAULT_MODEL = "fluo-nuclei"  # the built-in model (napari_unet_nuclei.io.builtin_models)


def diameter_argument(text: str) -> float | str | None:
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
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
        type=diameter_argument,
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
    segment.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help=f"tile side (default {DEFAULT_TILE_SIZE})",
    )
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
    demo.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fine-tuning steps (default: the demo's fixed budget, workflows.demo.DEMO_STEPS)",
    )
    demo.add_argument("--no-viewer", action="store_true", help="do not open napari at the end")
    demo.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)
