"""The nuclei lab's experiments, run with napari-unet-nuclei, as a table, JSON and a docs page.

On the lab's data (``nuclei_128.npz``: the 79 Kromp et al. 2020 images at 128 x 128) with the
lab's split ``lab_70_9`` (70 training images, 9 test images, which are also the validation
set that keeps the best weights, as ``napari-unet-nuclei train --split`` does):

1. the simple U-Net (depth 2) with F=4; figures of prediction, missed and wrongly added
   nucleus pixels on the 9 test images;
2. the simple U-Net with F=16 and F=32: precision-recall curves as the logit threshold sweeps
   -5..+5, overlaid, with average precision;
3. the full U-Net (depth 4) with F=8, on training and test images;
4. the full U-Net without and with data augmentation, same time budget, ``--seeds`` seeds:
   mean and standard deviation;
5. the lab's ConvTranspose2d illustration (stride 1 and 2 on a 2 x 2 input);

and exports the full U-Net of step 3 to bioimage.io (validated, imported back) and ONNX
(compared with PyTorch under onnxruntime) when the ``export`` extra is installed.

Every training uses the engine's defaults (BCE + soft Dice, AdamW with warm-up and cosine
decay, augmentation on unless stated) under the same ``--budget`` seconds, on the CPU with
``--threads`` torch threads (1 by default). Scores are
per-image means over the 9 test images at probability 0.5 (logit 0). Writes PNG figures to
``--out``, JSON to ``--json`` and the page ``--markdown`` (``docs/lab.md``) from the results::

    python benchmarks/lab.py                      # about 15 minutes on 2 CPU cores
    python benchmarks/lab.py --budget 5 --seeds 1 --out /tmp/lab --json /tmp/lab.json \
        --markdown /tmp/lab.md                    # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet_nuclei.evaluate.metrics import (
    average_precision,
    precision_recall_curve,
    segmentation_scores,
)
from napari_unet_nuclei.evaluate.reports import error_overlay_rgb, save_precision_recall_png
from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
from napari_unet_nuclei.prediction.inference import predict
from napari_unet_nuclei.train.augmentation import AugmentationConfig
from napari_unet_nuclei.train.training import TrainingConfig, train_model

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_UNET_NUCLEI_DATA", REPO.parent / "shared" / "data"))
KROMP = DATA / "kromp2020"
SCORES = ("precision", "recall", "f1", "iou", "ap")
DPI = 90


# --------------------------------------------------------------------------------------
# Running and scoring
# --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, versions and the load when the run started."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def evaluate(model: Any, items: list[Any]) -> dict[str, Any]:
    """Per-image scores at probability 0.5, their means, and the probabilities."""
    rows, probabilities = [], []
    for item in items:
        prob = predict(model, item.image, device="cpu")
        scores = segmentation_scores(prob >= 0.5, item.mask)
        rows.append(
            {
                "name": item.name,
                **{k: float(scores[k]) for k in SCORES[:4]},
                "ap": float(average_precision(prob, item.mask)),
            }
        )
        probabilities.append(prob)
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in SCORES}
    return {"mean": mean, "images": rows, "probabilities": probabilities}


def run(
    label: str, config: TrainingConfig, train_items: list[Any], test_items: list[Any]
) -> dict[str, Any]:
    """Train one model under the time budget and evaluate it on the test images."""
    print(f"  {label} (seed {config.seed}) ...", end="", flush=True)
    start = time.perf_counter()
    model = train_model(
        [i.image for i in train_items],
        [i.labels for i in train_items],
        config,
        names=[i.name for i in train_items],
        val_images=[i.image for i in test_items],
        val_labels=[i.labels for i in test_items],
        val_names=[i.name for i in test_items],
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate(model, test_items)
    eval_seconds = time.perf_counter() - start
    summary = model.summary
    print(
        f" F1 {result['mean']['f1']:.4f}  AP {result['mean']['ap']:.4f}  "
        f"{summary['epochs']} epochs / {summary['steps']} steps, {train_seconds:.0f} s"
    )
    return {
        "label": label,
        "seed": config.seed,
        "features": config.features,
        "depth": config.depth,
        "augmentation": config.augmentation.enabled,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 2),
        "mean": result["mean"],
        "images": result["images"],
        "_model": model,
        "_probabilities": result["probabilities"],
    }


def pooled_curve(run_result: dict[str, Any], test_items: list[Any]) -> Any:
    """Precision-recall over the logit sweep -5..+5, all test pixels pooled."""
    probabilities = np.stack(run_result["_probabilities"])
    truth = np.stack([i.mask for i in test_items])
    return precision_recall_curve(probabilities, truth)


def export_check(model: Any, test_items: list[Any]) -> dict[str, Any]:
    """Export a lab model to bioimage.io and ONNX and compare with PyTorch on the test images."""
    import tempfile

    try:
        import bioimageio.spec
        import onnxruntime
    except ImportError as error:
        print(f"  export check skipped: {error}")
        return {"skipped": str(error)}
    from napari_unet_nuclei.io.bioimageio_package import import_bioimageio
    from napari_unet_nuclei.nn.normalization import normalize_frame
    from napari_unet_nuclei.workflows.bioimageio_export import (
        export_bioimageio,
        validate_bioimageio,
    )
    from napari_unet_nuclei.workflows.network_export import export_onnx

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        package = export_bioimageio(
            model, Path(folder) / "full_f8.zip", test_image=test_items[0].image
        )
        descr = validate_bioimageio(package)
        imported = import_bioimageio(package)
        import_diff = max(
            float(np.abs(predict(imported, i.image) - predict(model, i.image)).max())
            for i in test_items
        )
        session = onnxruntime.InferenceSession(
            str(export_onnx(model, Path(folder) / "full_f8.onnx")),
            providers=["CPUExecutionProvider"],
        )
        x = np.stack([normalize_frame(i.image, model.normalization) for i in test_items])[:, None]
        with torch.no_grad():
            reference = model.network.eval()(torch.from_numpy(x)).numpy()
        onnx_diff = float(np.abs(session.run(None, {"input": x})[0] - reference).max())
        package_mb = package.stat().st_size / 1e6
    result = {
        "bioimageio_spec": bioimageio.spec.__version__,
        "format_version": str(descr.format_version),
        "validation": descr.validation_summary.status,
        "package_mb": round(package_mb, 2),
        "import_max_abs_difference": import_diff,
        "onnxruntime": onnxruntime.__version__,
        "onnx_max_abs_logit_difference": onnx_diff,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(
        f"  export: bioimage.io {result['validation']}, import diff {import_diff:.2g}, "
        f"ONNX logit diff {onnx_diff:.2g}"
    )
    return result


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    """Write a small PNG: the rendered figure reduced to a 256-colour palette."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.canvas.draw()
    rgb = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def error_grid(path: Path, rows: list[tuple[str, Any, np.ndarray]], title: str) -> Path:
    """One row per image: image | ground truth | prediction | missed and added pixels."""
    from matplotlib.patches import Patch

    from napari_unet_nuclei.evaluate.metrics import ERROR_CLASSES, ERROR_COLORS

    figure = _figure(6.6, 1.65 * len(rows) + 0.9)
    axes = figure.subplots(len(rows), 4, squeeze=False)
    for (caption, item, prob), row in zip(rows, axes):
        predicted = prob >= 0.5
        scores = segmentation_scores(predicted, item.mask)
        missed = int(np.count_nonzero(item.mask & ~predicted))
        added = int(np.count_nonzero(predicted & ~item.mask))
        row[0].imshow(item.image, cmap="gray")
        row[1].imshow(item.mask, cmap="gray", vmin=0, vmax=1)
        row[2].imshow(predicted, cmap="gray", vmin=0, vmax=1)
        row[3].imshow(error_overlay_rgb(item.image, predicted, item.mask))
        row[0].set_ylabel(caption, fontsize=6.5)
        row[3].set_xlabel(
            f"F1 {scores['f1']:.3f}, missed {missed}, added {added} px", fontsize=6.5, labelpad=1
        )
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, name in zip(axes[0], ("image", "ground truth", "prediction p >= 0.5", "errors")):
        axis.set_title(name, fontsize=8)
    handles = [
        Patch(color=ERROR_COLORS[c][:3], label=ERROR_CLASSES[c].split(" (")[-1].rstrip(")"))
        for c in (1, 3, 2)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=8)
    figure.suptitle(title, fontsize=9)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.3 / height), h_pad=0.6, w_pad=0.3)
    return _save(figure, path)


def augmentation_figure(path: Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """Test F1 and AP of each seed, off against on, with mean +- standard deviation."""
    figure = _figure(6.0, 3.0)
    axes = figure.subplots(1, 2)
    for axis, key, name in zip(axes, ("f1", "ap"), ("F1 at p = 0.5", "average precision")):
        for x, results in enumerate(runs.values()):
            values = np.array([r["mean"][key] for r in results])
            jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
            axis.plot(x + np.asarray(jitter), values, "o", alpha=0.6, color=f"C{x}")
            axis.errorbar(
                x + 0.25, values.mean(), yerr=values.std(), fmt="s", color=f"C{x}", capsize=4
            )
        axis.set_xticks(range(len(runs)), list(runs))
        axis.set_xlim(-0.5, len(runs) - 0.3)
        axis.set_title(f"test {name}", fontsize=9)
        axis.grid(alpha=0.3, axis="y")
    figure.suptitle(
        "full U-Net F=8: augmentation off / on (dots: seeds; squares: mean +- sd)", fontsize=9
    )
    figure.tight_layout()
    return _save(figure, path)


def conv_transpose_figure(path: Path) -> dict[str, Any]:
    """The lab's ConvTranspose2d experiment, run with torch, drawn with its numbers."""
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    one_hot = torch.zeros(1, 1, 2, 2)
    one_hot[0, 0, 0, 1] = 1.0
    ones = torch.ones(1, 1, 2, 2)
    results: dict[str, Any] = {"weight": weight.tolist()}
    figure = _figure(7.6, 3.9)
    axes = figure.subplots(2, 5)
    for row, stride in zip(axes, (1, 2)):
        layer = torch.nn.ConvTranspose2d(1, 1, kernel_size=2, stride=stride, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight[None, None])
            outputs = [layer(one_hot)[0, 0], layer(ones)[0, 0]]
        results[f"stride_{stride}"] = {
            "one_hot_output": outputs[0].tolist(),
            "ones_output": outputs[1].tolist(),
        }
        panels = [
            ("weights W", weight),
            ("input: one 1", one_hot[0, 0]),
            (f"output {tuple(outputs[0].shape)}", outputs[0]),
            ("input: all 1", ones[0, 0]),
            (f"output {tuple(outputs[1].shape)}", outputs[1]),
        ]
        for axis, (title, matrix) in zip(row, panels):
            values = matrix.numpy()
            top = max(4.0, float(values.max()))
            axis.imshow(values, cmap="Blues", vmin=0, vmax=top)
            for (i, j), v in np.ndenumerate(values):
                colour = "white" if v > 0.6 * top else "black"
                axis.text(j, i, f"{v:g}", ha="center", va="center", fontsize=8, color=colour)
            axis.set_title(title, fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(f"stride {stride}", fontsize=9)
    figure.suptitle(
        "ConvTranspose2d(1, 1, kernel_size=2, bias=False): each input value v adds v * W "
        "at (stride * i, stride * j)",
        fontsize=8,
    )
    figure.tight_layout()
    _save(figure, path)
    return results


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of the per-image mean scores and the times."""
    out: dict[str, Any] = {"n": len(results)}
    for key in SCORES:
        values = np.array([r["mean"][key] for r in results])
        out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    for key in ("train_seconds", "eval_seconds", "steps", "epochs"):
        out[key] = float(np.mean([r[key] for r in results]))
    return out


def plain_data(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]


TABLE_HEADER = (
    "| experiment | F | depth | augmentation | seeds | precision | recall | F1 | IoU | AP "
    "| steps | training s |"
)


def table_rows(report: dict[str, Any]) -> list[str]:
    lines = [TABLE_HEADER, "| " + " | ".join(["---"] * 12) + " |"]
    for experiment in report["experiments"].values():
        agg = experiment["aggregate"]
        first = experiment["runs"][0]

        def cell(key: str, agg: dict[str, Any] = agg) -> str:
            if agg["n"] > 1:
                return f"{agg[key]['mean']:.3f} ± {agg[key]['std']:.3f}"
            return f"{agg[key]['mean']:.3f}"

        lines.append(
            f"| {experiment['title']} | {first['features']} | {first['depth']} "
            f"| {'on' if first['augmentation'] else 'off'} | {agg['n']} "
            + "".join(f"| {cell(k)} " for k in SCORES)
            + f"| {agg['steps']:.0f} | {agg['train_seconds']:.0f} |"
        )
    return lines


def print_table(report: dict[str, Any]) -> None:
    print()
    print("\n".join(table_rows(report)))


def write_markdown(report: dict[str, Any], path: Path, figures: Path) -> None:
    """The docs page, generated from the results of this run."""
    m = report["machine"]
    rel = os.path.relpath(figures, path.parent)
    exp = report["experiments"]
    aug_off, aug_on = exp["augmentation off"]["aggregate"], exp["augmentation on"]["aggregate"]
    pr = report["precision_recall"]
    torch_threads = report["settings"]["threads"] or m["torch_threads"]
    times = "\n".join(
        f"| {e['title']} | {len(e['runs']) - e.get('reused', 0)} | "
        f"{sum(r['train_seconds'] for r in e['runs'][e.get('reused', 0) :]):.0f} | "
        f"{sum(r['eval_seconds'] for r in e['runs'][e.get('reused', 0) :]):.1f} |"
        for e in exp.values()
    )
    gain = {k: aug_on[k]["mean"] - aug_off[k]["mean"] for k in ("f1", "ap")}
    spread = {k: max(aug_on[k]["std"], aug_off[k]["std"]) for k in ("f1", "ap")}
    verdict = " ".join(
        f"{name}: on - off = {gain[k]:+.3f}, "
        + ("more than twice" if abs(gain[k]) > 2 * spread[k] else "within twice")
        + f" the seed spread ({spread[k]:.3f})."
        for k, name in (("f1", "F1"), ("ap", "AP"))
    )
    ex = report.get("export", {})
    if "skipped" in ex or not ex:
        export_text = f"(Export check skipped: {ex.get('skipped', 'not run')}.)"
    else:
        diff = ex["import_max_abs_difference"]
        same = (
            "are identical to the original model's"
            if diff == 0
            else f"differ from the original model's by at most {diff:.1g}"
        )
        export_text = f"""This model, exported with the functions behind `napari-unet-nuclei export`: the
bioimage.io package ({ex["package_mb"]:.1f} MB, model description {ex["format_version"]})
passes bioimageio.spec {ex["bioimageio_spec"]}'s validator ({ex["validation"]}); imported
back, its probabilities on the 9 test images {same}; the ONNX file's logits under onnxruntime
{ex["onnxruntime"]} differ from PyTorch's by at most {ex["onnx_max_abs_logit_difference"]:.1g}
({ex["seconds"]:.0f} s for the whole check)."""
    aps = ", ".join(f"{name} {value:.3f}" for name, value in pr.items())
    text = f"""# The nuclei lab, reproduced with napari-unet-nuclei

This page is written by `benchmarks/lab.py` from the run it describes (JSON:
`{report["settings"]["json"]}`); every number and figure below comes from that run. The
lab is the classic U-Net nuclei-segmentation lab on the Kromp et al. 2020 dataset
(`../shared/data/kromp2020/nuclei_128.npz`, 79 fluorescence images resized to 128 x 128,
split `lab_70_9`: 70 training images, 9 test images).

Regenerate it with

```bash
python benchmarks/lab.py --budget {report["settings"]["budget"]:g} --seeds {report["settings"]["seeds"]} --threads {report["settings"]["threads"]}
```

## Set-up

- **Machine**: {m["cpu"]}, {m["cores"]} cores, {torch_threads} torch thread(s), torch
  {m["torch"]}, Python {m["python"]}, {m["platform"]}. Load average at the start
  {m["load_average_at_start"]}, at the end {m["load_average_at_end"]} (the cores were
  shared with other work, so the step counts below vary between runs; one torch thread
  avoids the stalls of multi-threaded kernels on busy cores, see `--threads`).
- **Training**: the engine's defaults (`TrainingConfig`: BCE + soft Dice, AdamW 3e-3 with
  warm-up and cosine decay, batch 8, whole 128 x 128 images as patches, augmentation = flips,
  90-degree rotations, intensity and affine jitter unless stated), **{report["settings"]["budget"]:g} s
  per training** (`time_budget`), validated on the 9 test images after each epoch with the best
  epoch kept, as `napari-unet-nuclei train --split splits.json:lab_70_9` does. The lab leaves
  loss, optimiser and number of epochs to the student; here every model gets the engine's
  settings and the same wall-clock budget, which is what the comparisons need.
- **Scores**: pixel precision, recall, F1 (Dice) and IoU at probability 0.5 (logit 0), and
  average precision (AP, exact, over all thresholds), each computed per test image and
  averaged over the 9 images. "±" is the standard deviation over seeds.

## Results

{chr(10).join(table_rows(report))}

Time per experiment (training + evaluation of the 9 test images):

| experiment | trainings | training s | evaluation s |
| --- | --- | --- | --- |
{times}

Total wall time of the run: {report["total_seconds"] / 60:.1f} min.

## Simple U-Net (depth 2), F = 4

The lab's first model. Each row is one of the 9 test images: the image, the ground truth,
the prediction at p >= 0.5 and the errors: green = nucleus pixels found, orange = nucleus
pixels **missed** (false negatives), magenta = pixels **wrongly added** to nuclei (false
positives); the counts are pixels.

![simple U-Net F=4 on the 9 test images]({rel}/simple_f4_test_images.png)

## Precision and recall as the logit threshold sweeps -5..+5

The simple U-Net with F = 4, 16 and 32, all test pixels pooled, 101 thresholds on the logit
from -5 to +5 (the dot marks logit 0). Pooled average precision: {aps}.

![precision-recall, F = 4, 16, 32]({rel}/precision_recall_simple.png)

## Full U-Net (depth 4), F = 8

Three training images (first rows) and the 9 test images.

![full U-Net F=8 on training and test images]({rel}/full_f8_images.png)

{export_text}

## Data augmentation

The full U-Net F = 8 without and with augmentation, {report["settings"]["seeds"]} seeds each
(seed 0 "on" is the model of the previous section), the same {report["settings"]["budget"]:g} s
each. Test F1: off {aug_off["f1"]["mean"]:.3f} ± {aug_off["f1"]["std"]:.3f}, on
{aug_on["f1"]["mean"]:.3f} ± {aug_on["f1"]["std"]:.3f}; AP: off
{aug_off["ap"]["mean"]:.3f} ± {aug_off["ap"]["std"]:.3f}, on
{aug_on["ap"]["mean"]:.3f} ± {aug_on["ap"]["std"]:.3f}. {verdict} Augmentation
makes each step harder to fit, so its effect depends on the budget; with
{report["settings"]["seeds"]} seeds and 9 test images, read the spread before the means.

![augmentation off and on]({rel}/augmentation.png)

## How the decoder upsamples: ConvTranspose2d

The lab's illustration, computed by `torch.nn.ConvTranspose2d(1, 1, kernel_size=2,
bias=False)` on a 2 x 2 input, with the weights set to W = [[1, 2], [3, 4]] so that the
numbers can be followed. Each input value v adds the 2 x 2 block v * W to the output at
position (stride * i, stride * j). With **stride 1** the blocks overlap: a 2 x 2 input gives
a 3 x 3 output, and the all-ones input sums up to 4 blocks in the centre
({report["conv_transpose"]["stride_1"]["ones_output"][1][1]:g} = 1 + 2 + 3 + 4). With
**stride 2** the blocks sit side by side without overlap: a 2 x 2 input gives a 4 x 4 output,
each input pixel becoming a learned 2 x 2 patch. That is the decoder's upsampling in
napari-unet-nuclei's U-Net (`Up`: `ConvTranspose2d(kernel_size=2, stride=2)`): it doubles
height and width while halving the channels, then the skip connection brings back the
encoder's full-resolution detail.

![ConvTranspose2d with stride 1 and 2]({rel}/conv_transpose.png)
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per training")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the augmentation test")
    parser.add_argument("--out", default="docs/lab", help="folder for the PNG figures")
    parser.add_argument("--json", default="benchmarks/results/lab.json")
    parser.add_argument("--markdown", default="docs/lab.md", help="docs page to write")
    parser.add_argument("--data", default=str(KROMP / "nuclei_128.npz"))
    parser.add_argument("--split", default=f"{KROMP / 'splits.json'}:lab_70_9")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1; 0 = torch's default, all cores)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        # Small networks on a shared machine: with every core busy, torch's multi-threaded
        # kernels wait on each other (measured on 2 busy cores, full U-Net F=8, 12 s budget:
        # 31 steps with 1 thread, 2 steps with 2 threads).
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    figures = Path(args.out)
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "budget": args.budget,
            "seeds": args.seeds,
            "data": str(args.data),
            "split": str(args.split),
            "json": args.json,
            "threshold": 0.5,
            "threads": args.threads,
        },
        "experiments": {},
    }
    items = load_dataset(args.data)
    train_names, test_names = parse_split(args.split)
    train_items = select_by_names(items, train_names)
    test_items = select_by_names(items, test_names)
    print(f"{len(train_items)} training and {len(test_items)} test images, {args.budget:g} s each")
    base = TrainingConfig(time_budget=args.budget, device="cpu", seed=0)
    experiments = report["experiments"]

    def record(key: str, title: str, runs: list[dict[str, Any]], **extra: Any) -> None:
        experiments[key] = {
            "title": title,
            "runs": runs,
            "aggregate": aggregate(runs),
            **extra,
        }

    # 1-2. Simple U-Net, F = 4, 16, 32.
    simple: dict[int, dict[str, Any]] = {}
    for features in (4, 16, 32):
        result = run(
            f"simple U-Net F={features}",
            replace(base, features=features, depth=2),
            train_items,
            test_items,
        )
        simple[features] = result
        record(f"simple F={features}", f"simple U-Net F={features}", [result])
    rows = [(item.name, item, prob) for item, prob in zip(test_items, simple[4]["_probabilities"])]
    error_grid(
        figures / "simple_f4_test_images.png",
        rows,
        f"simple U-Net (depth 2), F=4, {args.budget:g} s: the 9 test images",
    )
    curves = {f"F={f}": pooled_curve(simple[f], test_items) for f in (4, 16, 32)}
    save_precision_recall_png(
        figures / "precision_recall_simple.png",
        curves,
        title="simple U-Net, logit threshold -5..+5 (dot: 0)",
    )
    report["precision_recall"] = {name: c.average_precision for name, c in curves.items()}
    report["precision_recall_curves"] = {name: c.to_dict() for name, c in curves.items()}

    # 3. Full U-Net, F = 8 (augmentation on, seed 0).
    full = run("full U-Net F=8", replace(base, features=8, depth=4), train_items, test_items)
    record("full F=8", "full U-Net F=8", [full])
    shown_train = train_items[:3]
    train_probs = [predict(full["_model"], i.image, device="cpu") for i in shown_train]
    rows = [(f"train\n{i.name}", i, p) for i, p in zip(shown_train, train_probs)]
    rows += [(f"test\n{i.name}", i, p) for i, p in zip(test_items, full["_probabilities"])]
    error_grid(
        figures / "full_f8_images.png",
        rows,
        f"full U-Net (depth 4), F=8, {args.budget:g} s: 3 training + 9 test images",
    )

    report["export"] = export_check(full["_model"], test_items)

    # 4. Augmentation off / on, several seeds (seed 0 "on" is the model above).
    off, on = [], [full]
    for seed in range(args.seeds):
        config = replace(base, features=8, depth=4, seed=seed)
        off.append(
            run(
                "full U-Net F=8, no augmentation",
                replace(config, augmentation=AugmentationConfig.disabled()),
                train_items,
                test_items,
            )
        )
        if seed > 0:
            on.append(run("full U-Net F=8, augmentation", config, train_items, test_items))
    record("augmentation off", "full U-Net F=8, augmentation off", off)
    record("augmentation on", "full U-Net F=8, augmentation on", on, reused=1)
    augmentation_figure(figures / "augmentation.png", {"off": off, "on": on})

    # 5. ConvTranspose2d.
    report["conv_transpose"] = conv_transpose_figure(figures / "conv_transpose.png")

    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    for experiment in experiments.values():
        experiment["runs"] = plain_data(experiment["runs"])
    print_table(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    write_markdown(report, Path(args.markdown), figures)
    sizes = {p.name: p.stat().st_size // 1024 for p in sorted(figures.glob("*.png"))}
    print(f"\nwrote {args.json}, {args.markdown} and {figures}/ ({sizes} KB)")
    print(f"total {report['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
