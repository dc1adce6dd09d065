"""Is a wider network (F = 16) fast enough for the built-in model's speed floor?

The built-in model must turn an image into nuclei at 1 Mpx/s or more on 2 CPU cores
without bfloat16. In one process, on a 2048 x 2048 mosaic of real Kromp images, this
times:

* the network alone (``predict`` with every map, the default precision of this CPU) for
  F = 8 (the built-in model) and for F = 16 and F = 12 (the same architecture, depth 4,
  the same maps; the weights do not change the network's time);
* the built-in model's whole path, image to nuclei (``predict_instances``).

The instance step after the network does not depend on the width, so a wider model's
image-to-nuclei rate is estimated as ``1 / (1 / network_rate + instance_seconds_per_Mpx)``
with the built-in model's instance seconds. Prints a table and writes JSON::

    python benchmarks/network_width.py --threads 2 --json benchmarks/results/network_width.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _machine import machine_info
from generalist import mosaic_2048

ROOT = Path(__file__).resolve().parents[1]
SPEED_FLOOR = 1.0


def best_seconds(run, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``run`` (after one warm-up outside)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/network_width.json"))
    args = parser.parse_args()

    import torch

    from napari_unet_nuclei import load_model
    from napari_unet_nuclei.nn.acceleration import cpu_supports_bf16
    from napari_unet_nuclei.nn.model import create_model
    from napari_unet_nuclei.prediction.inference import predict
    from napari_unet_nuclei.workflows.segmentation import predict_instances

    if args.threads:
        torch.set_num_threads(args.threads)
    image = mosaic_2048(Path(args.data))
    megapixels = image.size / 1e6
    builtin = load_model("fluo-nuclei")
    predict_instances(builtin, image[:512, :512])
    whole = best_seconds(lambda: predict_instances(builtin, image), args.repeats)
    rows = []
    for features in (8, 12, 16):
        model = (
            builtin
            if features == builtin.config.features
            else create_model(
                features,
                builtin.config.depth,
                builtin.normalization,
                object_maps=builtin.object_maps,
            )
        )
        predict(model, image[:512, :512])
        network = best_seconds(lambda m=model: predict(m, image), args.repeats)
        rows.append(
            {
                "features": features,
                "network_seconds": network,
                "network_mpx_per_s": megapixels / network,
            }
        )
    instance_seconds = whole - rows[0]["network_seconds"]
    for row in rows:
        row["image_to_nuclei_mpx_per_s"] = megapixels / (row["network_seconds"] + instance_seconds)
        row["meets_floor"] = row["image_to_nuclei_mpx_per_s"] >= SPEED_FLOOR
    rows[0]["image_to_nuclei_measured"] = megapixels / whole

    print(
        f"2048 x 2048 mosaic, {torch.get_num_threads()} threads, bf16 CPU: {cpu_supports_bf16()}"
    )
    print("| F | network Mpx/s | image -> nuclei Mpx/s | >= 1 Mpx/s |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['features']} | {row['network_mpx_per_s']:.2f} "
            f"| {row['image_to_nuclei_mpx_per_s']:.2f} | {'yes' if row['meets_floor'] else 'no'} |"
        )
    result = {
        "machine": machine_info(cpu_bf16=cpu_supports_bf16(), load_average_at_end=os.getloadavg()),
        "image": list(image.shape),
        "instance_seconds": instance_seconds,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
