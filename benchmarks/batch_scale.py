"""Batch throughput on a dask LocalCluster (1 vs 2 workers) and peak memory of a huge image.

1. Throughput: 20 full-resolution Kromp images (the first 20 test names of
   ``paper_42_37``) segmented with ``segment_files`` in this process, on a LocalCluster
   of 1 worker and of 2 workers (torch threads per worker = CPU cores / workers). Reports
   images/s (wall clock, cluster start included) and checks that the three runs write
   identical masks and summaries. The model is the default architecture (F=8, depth 4)
   trained for ``--train-budget`` seconds on the ``paper_42_37`` training images, or
   ``--model``.
2. Memory: an 8192 x 8192 synthetic nuclei image is written to a zarr array on disk chunk by
   chunk; a fresh subprocess opens it with dask and segments it into an OME-Zarr with
   ``iter_segment_to_zarr`` (frames read in bands, rows written as they finish) and
   reports its peak RSS (``VmHWM``; ``resource.getrusage`` off Linux). For comparison,
   the same image loaded whole and run through ``iter_predict`` (whole-frame buffers).
   The default
   model runs the lazy path; a tiny model (F=4, depth 2) runs both paths, so the
   difference between them is the frame buffers, not the network.

Prints tables and writes JSON::

    python benchmarks/batch_scale.py --json benchmarks/results/batch_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import write_results

DATA = Path(
    os.environ.get(
        "NAPARI_UNET_NUCLEI_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
KROMP = DATA / "kromp2020"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss``
    keeps the peak of the process before ``exec``, i.e. of the parent that forked it.
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------------------
# Memory (child process)
# --------------------------------------------------------------------------------------


def memory_child(args: argparse.Namespace) -> None:
    """Segment the zarr image in this fresh process and print one JSON line."""
    import dask.array as da
    import torch

    from napari_unet_nuclei.io.model_io import load_model
    from napari_unet_nuclei.io.zarr_io import open_zarr_image
    from napari_unet_nuclei.nn.model import create_model
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.workflows.segment_to_zarr import iter_segment_to_zarr

    torch.set_num_threads(args.threads)
    if args.model == "tiny":
        torch.manual_seed(0)
        model = create_model(4, 2)
    else:
        model = load_model(args.model)
    source, _ = open_zarr_image(args.input)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if args.mode == "lazy":
        generator = iter_segment_to_zarr(model, da.from_zarr(source), args.output, kind="mask")
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                result = stop.value
                break
        foreground = float(result.mean().compute())
    else:
        image = np.asarray(source[...])
        foreground = float((predict(model, image) >= model.threshold).mean())
    print(
        json.dumps(
            {
                "mode": args.mode,
                "model": "tiny F=4 depth 2" if args.model == "tiny" else "default F=8 depth 4",
                "size": list(source.shape),
                "seconds": round(time.perf_counter() - start, 1),
                "baseline_rss_mb": round(baseline),
                "peak_rss_mb": round(peak_rss_mb()),
                "foreground_fraction": round(foreground, 4),
                "threads": args.threads,
            }
        )
    )


def write_synthetic_zarr(path: Path, size: int, chunk: int = 1024) -> None:
    """A size x size uint16 image of synthetic nuclei, written one chunk at a time."""
    from napari_unet_nuclei.data.sample_data import make_synthetic_nuclei
    from napari_unet_nuclei.io.zarr_io import create_ome_zarr

    array = create_ome_zarr(path, (size, size), np.uint16, chunks=(chunk, chunk))
    tiles = [make_synthetic_nuclei((chunk, chunk), seed=seed)[0] for seed in range(4)]
    for number, (y, x) in enumerate(np.ndindex(size // chunk, size // chunk)):
        tile = tiles[number % 4]  # four drawings, flipped and turned: varied, and quick
        tile = np.rot90(tile, number // 4 % 4)[:: 1 if number % 3 else -1]
        array[y * chunk : (y + 1) * chunk, x * chunk : (x + 1) * chunk] = tile


def memory_benchmark(model_path: str, size: int, threads: int, tiny_only: bool) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="nun-memory-"))
    try:
        source = work / "huge.ome.zarr"
        write_synthetic_zarr(source, size)
        runs = [("lazy", "tiny"), ("in-memory", "tiny")]
        if not tiny_only:
            runs.insert(0, ("lazy", model_path))
        results = []
        for number, (mode, model) in enumerate(runs):
            command = [
                sys.executable,
                __file__,
                "--memory-child",
                "--mode",
                mode,
                "--model",
                model,
                "--input",
                str(source),
                "--output",
                str(work / f"out{number}.ome.zarr"),
                "--threads",
                str(threads),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                results.append({"mode": mode, "model": model, "error": done.stderr[-500:]})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"  {row['mode']:<10} {row['model']:<22} {row['seconds']:7.1f} s  "
                f"peak RSS {row['peak_rss_mb']:6d} MB"
            )
            results.append(row)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------


def train_default_model(path: Path, budget: float) -> None:
    from napari_unet_nuclei.io.datasets import load_dataset, parse_split, select_by_names
    from napari_unet_nuclei.io.model_io import save_model
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    train_names, _ = parse_split(f"{KROMP / 'splits.json'}:paper_42_37")
    items = select_by_names(load_dataset(KROMP), train_names)
    model = train_model(
        [i.image for i in items],
        [i.labels for i in items],
        TrainingConfig(time_budget=budget, seed=0),
    )
    save_model(model, path)


def throughput_benchmark(model_path: str, n_images: int, work: Path) -> dict:
    import tifffile
    import torch

    from napari_unet_nuclei.events import BatchFinished
    from napari_unet_nuclei.io.datasets import parse_split
    from napari_unet_nuclei.workflows.batch import segment_files
    from napari_unet_nuclei.workflows.segment_options import SegmentOptions

    _, test_names = parse_split(f"{KROMP / 'splits.json'}:paper_42_37")
    names = list(test_names)[:n_images]
    folder = work / "images"
    folder.mkdir()
    for name in names:  # links: the data is never copied
        (folder / f"{name}.tif").symlink_to(KROMP / "images" / f"{name}.tif")
    megapixels = (
        sum(np.prod(tifffile.TiffFile(folder / f"{n}.tif").series[0].shape) for n in names) / 1e6
    )
    runs = {}
    masks = {}
    for label, workers in (("in-process", 0), ("1 worker", 1), ("2 workers", 2)):
        out = work / f"out-{workers}"
        start = time.perf_counter()
        finished = None
        for event in segment_files(model_path, [folder], out, SegmentOptions(), workers=workers):
            if isinstance(event, BatchFinished):
                finished = event
        wall = time.perf_counter() - start
        assert finished is not None and finished.n_done == len(names), finished
        runs[label] = {
            "workers": workers,
            "threads_per_worker": (
                max(1, (os.cpu_count() or 1) // workers) if workers else torch.get_num_threads()
            ),
            "seconds": round(wall, 1),
            "images_per_second": round(len(names) / wall, 4),
            "megapixels_per_second": round(megapixels / wall, 3),
            "rows": finished.rows,
        }
        masks[label] = {n: tifffile.imread(out / f"{n}.tif") for n in names}
        print(f"  {label:<11} {wall:7.1f} s  {len(names) / wall:.3f} images/s")
    reference = masks["in-process"]
    identical = {
        label: all(np.array_equal(reference[n], masks[label][n]) for n in names) for label in masks
    }

    def summary(label: str) -> list:
        return [(r["name"], r["nuclei"], r["foreground_fraction"]) for r in runs[label]["rows"]]

    same_summary = {label: summary(label) == summary("in-process") for label in runs}
    for label in runs:
        runs[label]["identical_masks"] = identical[label]
        runs[label]["identical_summary"] = same_summary[label]
        del runs[label]["rows"]
    return {"images": names, "megapixels": round(megapixels, 2), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model file (default: train one for --train-budget s)")
    parser.add_argument("--train-budget", type=float, default=60.0)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=8192, help="side of the memory test image")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, memory test")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--tiny-only", action="store_true", help="memory test: tiny model only")
    parser.add_argument("--json", default="benchmarks/results/batch_scale.json")
    # Internal: the memory measurement runs in a fresh child process.
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    import torch

    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        }
    }
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    for part, skipped in (("throughput", args.skip_throughput), ("memory", args.skip_memory)):
        if skipped and part in previous:  # keep the other part of an earlier run
            report[part] = previous[part]
            report.setdefault("kept_from_previous_run", {})[part] = previous.get("machine")
    work = Path(tempfile.mkdtemp(prefix="nun-batch-"))
    try:
        model_path = args.model
        if model_path is None:
            model_path = str(work / "model.pt")
            print(f"training the default model for {args.train_budget:.0f} s ...")
            train_default_model(Path(model_path), args.train_budget)
        report["model"] = {"path": args.model or f"trained {args.train_budget:.0f} s"}
        if not args.skip_throughput:
            print(f"\nthroughput: {args.images} full-resolution Kromp images (paper_42_37 test)")
            report["throughput"] = throughput_benchmark(model_path, args.images, work)
            print(
                f"\n{'run':<11} {'workers':>7} {'threads':>7} {'seconds':>8} {'images/s':>9} {'Mpx/s':>6} identical"
            )
            for label, run in report["throughput"]["runs"].items():
                print(
                    f"{label:<11} {run['workers']:7d} {run['threads_per_worker']:7d} "
                    f"{run['seconds']:8.1f} {run['images_per_second']:9.3f} "
                    f"{run['megapixels_per_second']:6.2f} "
                    f"{run['identical_masks'] and run['identical_summary']}"
                )
        if not args.skip_memory:
            print(f"\nmemory: {args.size} x {args.size} image, each run in a fresh process")
            rows = memory_benchmark(model_path, args.size, args.threads, args.tiny_only)
            report["memory"] = rows
            print(f"\n{'path':<10} {'model':<22} {'seconds':>8} {'peak RSS MB':>12} {'< 2 GB':>7}")
            for row in rows:
                if "error" in row:
                    print(f"{row['mode']:<10} {row['model']:<22} failed")
                    continue
                print(
                    f"{row['mode']:<10} {row['model']:<22} {row['seconds']:8.1f} "
                    f"{row['peak_rss_mb']:12d} {row['peak_rss_mb'] < 2048!s:>7}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    write_results(args.json, report)


if __name__ == "__main__":
    main()
