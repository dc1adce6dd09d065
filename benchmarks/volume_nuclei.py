"""3-D nuclei of z-stacks: how many, against the truth, per neck ratio of the 3-D split.

The built-in model segments every slice; ``prediction.volumes.nuclei_in_volume`` links them
into 3-D nuclei, splitting touching ones where the neck between them is narrower than
``neck_ratio`` of the smaller one's width (shipped: ``VOLUME_NECK_RATIO``). Two kinds of
stacks, each scored as 3-D objects (object F1 at IoU >= 0.5) beside the mean object F1 of
its 2-D slices (the per-slice nuclei, the reference the 3-D step starts from):

- ``nuclei3d/nuclei.tif`` (60 x 256 x 256, 20 machine-made nuclei, the shared data's only
  annotated 3-D stack: its labels are not hand-drawn ground truth);
- synthetic stacks the project has no other use for: ``--nuclei`` ellipsoid nuclei in
  40 x 256 x 256, touching (a nucleus may overlap earlier ones by up to ``--overlap`` of its
  volume), blurred and with Poisson and Gaussian noise, at z steps 1 and 2 (voxel size given
  to the split as spacing).

    python benchmarks/volume_nuclei.py --seeds 2 --json benchmarks/results/volume_nuclei.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

import napari_unet_nuclei as nun
from _machine import machine_info, write_results
from napari_unet_nuclei.evaluate.object_metrics import object_scores
from napari_unet_nuclei.prediction.volumes import VOLUME_NECK_RATIO, nuclei_in_volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_UNET_NUCLEI_DATA", ROOT.parent / "shared" / "data"))
NECK_RATIOS = (0.4, 0.6, 0.8)


def synthetic_stack(
    seed: int, n_nuclei: int, overlap: float, z_step: float, shape=(40, 256, 256)
) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 z-stack of ellipsoid nuclei and its int32 instance labels."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int32)
    zz, yy, xx = np.indices(shape).astype(np.float32)
    zz *= z_step
    placed = 0
    for _ in range(50 * n_nuclei):
        if placed == n_nuclei:
            break
        radii = rng.uniform(9, 14, size=3) * np.array([0.8, 1.0, 1.0])
        extent = (shape[0] * z_step, shape[1], shape[2])
        centre = [rng.uniform(r, e - r) for r, e in zip(radii, extent)]
        inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
        inside = inside + ((xx - centre[2]) / radii[2]) ** 2 <= 1
        if not inside.any() or (truth[inside] > 0).mean() > overlap:
            continue
        placed += 1
        truth[inside] = placed
    brightness = np.concatenate([[0.0], rng.uniform(0.5, 1.0, placed)])
    image = ndi.gaussian_filter(brightness[truth] * 1000 + 100, (1.0 / z_step, 1.5, 1.5))
    image = rng.poisson(image).astype(np.float32) + rng.normal(0, 20, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), truth


def score_stack(model, image: np.ndarray, truth: np.ndarray, spacing) -> dict:
    """Object F1 of the 3-D nuclei per neck ratio, and the slices' mean 2-D object F1."""
    probabilities = nun.predict(model, image)
    slices = nun.predict_instances(model, image, stack_axis="frames")
    slice_f1 = [
        object_scores(slices[z], truth[z])["f1"] for z in range(len(image)) if truth[z].any()
    ]
    row = {"n_true": int(truth.max()), "slices_2d_f1": float(np.mean(slice_f1)), "neck": {}}
    for neck in sorted({*NECK_RATIOS, VOLUME_NECK_RATIO}):
        labels = nuclei_in_volume(
            probabilities, model.threshold, spacing=spacing, neck_ratio=neck, slice_labels=slices
        )
        scores = object_scores(labels, truth)
        row["neck"][str(neck)] = {k: scores[k] for k in ("f1", "n_pred", "tp", "fp", "fn")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--nuclei", type=int, default=60)
    parser.add_argument("--overlap", type=float, default=0.15)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/volume_nuclei.json"))
    args = parser.parse_args()
    model = nun.load_model("fluo-nuclei")
    rows = {}
    stack = DATA / "nuclei3d"
    rows["nuclei3d (20 machine-made nuclei)"] = score_stack(
        model,
        tifffile.imread(stack / "nuclei.tif"),
        tifffile.imread(stack / "nuclei_label.tif").astype(np.int32),
        (1.0, 1.0, 1.0),
    )
    for seed in range(args.seeds):
        for z_step in (1.0, 2.0):
            image, truth = synthetic_stack(seed, args.nuclei, args.overlap, z_step)
            label = f"synthetic seed {seed}, z step {z_step:g}"
            rows[label] = score_stack(model, image, truth, (z_step, 1.0, 1.0))
    necks = list(next(iter(rows.values()))["neck"])
    print(
        f"{'stack':<36} {'nuclei':>6} {'2-D slices F1':>13} "
        + " ".join(f"{'neck ' + n + ' F1 (n)':>17}" for n in necks)
        + f"   (shipped neck {VOLUME_NECK_RATIO})"
    )
    for label, row in rows.items():
        cells = " ".join(
            f"{row['neck'][n]['f1']:>11.3f} ({row['neck'][n]['n_pred']:>3})" for n in necks
        )
        print(f"{label:<36} {row['n_true']:>6} {row['slices_2d_f1']:>13.3f} {cells}")
    report = {
        "machine": machine_info(),
        "shipped_neck_ratio": VOLUME_NECK_RATIO,
        "synthetic": {"nuclei": args.nuclei, "overlap": args.overlap},
        "stacks": rows,
    }
    write_results(args.json, report)


if __name__ == "__main__":
    main()
