"""Fine-tuning on corrected nuclei, domain by domain: does a retrain fix the nuclei it was
corrected on, on images like them that it never saw?

Domains: each Kromp 2020 class (preparation and diagnosis, ``image_description.csv``) with
at least 5 images, and the dense fluorescence images of DSB 2018 (150 nuclei or more).
Test images are the domain's images in the built-in model's test parts (``paper_42_37``
test, ``fluo_90_10`` test), which it never saw. The corrected images are drawn from the
domain's images in the training parts (as a user corrects images like theirs); a domain
without enough of them lends its own test images, which then leave its test set. At most
``--max-nuclei`` corrected nuclei: past that, only a band of rows holding that many is
annotated (a partial annotation, as a user corrects part of an image).

Rows, one run, same images:

- ``shipped``: the built-in model as it is;
- ``new recipe``: :meth:`TrainingConfig` defaults for fine-tuning (separating objective,
  ``--steps`` steps, gentle learning rate, BatchNorm kept, chosen by nuclei);
- ``new + replay``: the new recipe with a replayed sample of the built-in model's training
  images (``public_data.replay_sample``, a quarter of each batch);
- ``new, plain maps``: the new recipe with the earlier objective (every map's cross-entropy
  weighted alike, no gap weights): the objectives compared at the same budget;
- ``old recipe``: the previous defaults (plain objective, learning rate 3e-3, BatchNorm
  learned, ``--seconds`` of wall clock, chosen by pixel F1);
- ``scratch``: a new object-aware U-Net, same images, same steps, separating objective;
- ``specialist``: the new recipe on all of the domain's corrected-image pool, 3 x the steps
  (the ceiling of what the domain's annotations can teach).

    python benchmarks/fine_tune.py                       # every domain, k = 1 2 5, 3 seeds
    python benchmarks/fine_tune.py --k 2 --seeds 0 --domains dsb-dense "tissue section"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from _machine import machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "shipped",
    "new recipe",
    "new + replay",
    "new, plain maps",
    "old recipe",
    "scratch",
    "specialist",
)
TRAINED = ROWS[1:6]


def domains(data_root: Path) -> dict[str, dict[str, list[str]]]:
    """Per domain, the names of its ``pool`` (training parts) and ``test`` images."""
    kromp = data_root / "kromp2020"
    split = json.loads((kromp / "splits.json").read_text())["paper_42_37"]
    test_names = set(split["test"])
    with open(kromp / "image_description.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    out: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        key = f"kromp {row['Preparation']} / {row['Diagnosis']}"
        entry = out.setdefault(key, {"pool": [], "test": []})
        entry["test" if row["Image_Name"] in test_names else "pool"].append(
            f"kromp2020/{row['Image_Name']}"
        )
    out = {k: v for k, v in out.items() if len(v["pool"]) + len(v["test"]) >= 5}
    dsb = data_root / "dsb2018_train"
    fluo = json.loads((dsb / "splits.json").read_text())["fluo_90_10"]
    with open(dsb / "index.csv", encoding="utf-8") as handle:
        dense = {r["name"] for r in csv.DictReader(handle) if int(r["n_nuclei"]) >= 150}
    out["dsb-dense"] = {
        "pool": [f"dsb2018_train/{n}" for n in fluo["train"] if n in dense],
        "test": [f"dsb2018_train/{n}" for n in fluo["test"] if n in dense],
    }
    return out


def load(data_root: Path, name: str):
    """One image and its instance labels, by ``collection/name``."""
    import tifffile

    collection, stem = name.split("/", 1)
    folder = data_root / collection
    return tifffile.imread(folder / "images" / f"{stem}.tif"), tifffile.imread(
        folder / "masks" / f"{stem}.tif"
    )


def corrected(images, labels, max_nuclei: int):
    """The annotated regions: whole images until ``max_nuclei`` nuclei, then a band of
    rows of the last image holding the rest (``None`` = whole image)."""
    regions, left = [], max_nuclei
    for label in labels:
        ids = np.unique(label[label > 0])
        if left <= 0:
            regions.append(np.zeros(label.shape, bool))
            continue
        if ids.size <= left:
            regions.append(None)
            left -= ids.size
            continue
        bottoms = np.array([np.nonzero(label == i)[0].max() for i in ids])
        cut = int(np.sort(bottoms)[left - 1]) + 1
        region = np.zeros(label.shape, bool)
        region[:cut] = True
        regions.append(region)
        left = 0
    keep = [r is None or r.any() for r in regions]
    return (
        [x for x, k in zip(images, keep) if k],
        [y for y, k in zip(labels, keep) if k],
        [r for r, k in zip(regions, keep) if k],
    )


def scores(model, tests) -> dict:
    """Pooled over the test images: mean object F1 and DSB AP, merges and splits."""
    from napari_unet_nuclei.evaluate.object_metrics import dsb_average_precision, object_error_map
    from napari_unet_nuclei.workflows.segmentation import predict_instances

    rows = []
    for image, truth in tests:
        labels = predict_instances(model, image)
        errors = object_error_map(labels, truth, paint=False)
        rows.append(
            (
                errors.match.scores()["f1"],
                dsb_average_precision(labels, truth),
                errors.merges,
                errors.splits,
                int(np.unique(truth[truth > 0]).size),
            )
        )
    f1, ap, merges, splits, nuclei = zip(*rows)
    return {
        "object_f1": float(np.mean(f1)),
        "dsb_ap": float(np.mean(ap)),
        "merges": int(sum(merges)),
        "splits": int(sum(splits)),
        "true_nuclei": int(sum(nuclei)),
    }


def fine_tune(
    builtin, images, labels, regions, kind: str, steps: int, seconds: float, seed: int, names=()
):
    """One training run of the row ``kind``; returns the model and its seconds."""
    from napari_unet_nuclei.data.public_data import replay_sample
    from napari_unet_nuclei.nn.object_targets import OBJECT_MAPS
    from napari_unet_nuclei.train.training import TrainingConfig, train_model

    common = {"seed": seed, "validation_fraction": 0.2}
    replay = {}
    if kind == "new + replay":
        items = replay_sample(seed=seed, exclude=names)
        replay = {
            "replay_images": [i.image for i in items],
            "replay_labels": [i.labels for i in items],
        }
    if kind in ("new recipe", "new + replay", "specialist"):
        config, init = TrainingConfig(**common, steps=steps), builtin
    elif kind == "new, plain maps":
        config, init = TrainingConfig(**common, steps=steps, objective="plain"), builtin
    elif kind == "old recipe":
        config = TrainingConfig(
            **common,
            time_budget=seconds,
            objective="plain",
            choose_by="pixels",
            freeze_batchnorm=False,
            fine_tune_learning_rate=3e-3,
        )
        init = builtin
    else:
        config, init = TrainingConfig(**common, steps=steps, object_maps=OBJECT_MAPS), None
    annotated = None if all(r is None for r in regions) else regions
    start = time.perf_counter()
    model = train_model(images, labels, config, init_model=init, annotated=annotated, **replay)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 5], help="corrected images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--domains", nargs="+", help="substrings of domain names to run")
    parser.add_argument("--steps", type=int, default=200, help="new recipe's steps")
    parser.add_argument("--seconds", type=float, default=120.0, help="old recipe's seconds")
    parser.add_argument("--max-nuclei", type=int, default=200)
    parser.add_argument("--max-test", type=int, default=6, help="test images per domain")
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--rows",
        nargs="*",
        choices=TRAINED,
        default=list(TRAINED),
        help="trained rows to run (none: only shipped and the specialist)",
    )
    parser.add_argument(
        "--no-specialist", dest="specialist", action="store_false", help="skip the ceiling row"
    )
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/fine_tune.json"))
    args = parser.parse_args()

    import torch

    from napari_unet_nuclei.data.public_data import data_root
    from napari_unet_nuclei.io.model_io import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root()
    builtin = load_model("fluo-nuclei")
    chosen = {
        name: parts
        for name, parts in domains(root).items()
        if not args.domains or any(d in name for d in args.domains)
    }
    results = []
    for domain, parts in chosen.items():
        for k in args.k:
            for seed in args.seeds:
                rng = np.random.default_rng(seed)
                pool, test = list(parts["pool"]), list(parts["test"])
                if len(pool) < k:  # the domain lends its own test images
                    pool, test = test[:k], test[k:]
                if len(test) < 1:
                    continue
                picked = sorted(rng.choice(pool, k, replace=False))
                tests = [load(root, n) for n in sorted(test)[: args.max_test]]
                images, labels = zip(*[load(root, n) for n in picked])
                images, labels, regions = corrected(list(images), list(labels), args.max_nuclei)
                row = {"domain": domain, "k": k, "seed": seed, "images": picked, "rows": {}}
                row["rows"]["shipped"] = scores(builtin, tests)
                for kind in args.rows:
                    model, seconds = fine_tune(
                        builtin,
                        images,
                        labels,
                        regions,
                        kind,
                        args.steps,
                        args.seconds,
                        seed,
                        names=picked,
                    )
                    row["rows"][kind] = {
                        **scores(model, tests),
                        "seconds": round(seconds, 1),
                        "steps": model.summary["steps"],
                        "kept_start_weights": model.summary.get("kept_start_weights"),
                        "rule": (model.summary.get("instance_config") or {}).get("seeds"),
                        "val_by_rule": (model.summary.get("instance_rule_choice") or {}).get(
                            "val_object_f1_by_rule"
                        ),
                    }
                results.append(row)
                write_json(results, args)  # a long run keeps what it has measured
                print(
                    f"{domain[:40]:<40} k={k} seed={seed}  "
                    + "  ".join(
                        f"{kind} {v['object_f1']:.3f}/{v['merges']}"
                        for kind, v in row["rows"].items()
                    ),
                    flush=True,
                )
        pool = parts["pool"] if len(parts["pool"]) >= 2 and args.specialist else []
        if pool:
            images, labels = zip(*[load(root, n) for n in pool])
            tests = [load(root, n) for n in sorted(parts["test"])[: args.max_test]]
            model, seconds = fine_tune(
                builtin,
                list(images),
                list(labels),
                [None] * len(images),
                "specialist",
                3 * args.steps,
                args.seconds,
                0,
            )
            for row in results:
                if row["domain"] == domain and row["images"][0] in pool:
                    row["rows"]["specialist"] = {**scores(model, tests), "seconds": seconds}
    report(results, args)


def report(results: list[dict], args) -> None:
    """Print the table (means over seeds and k per domain) and write the JSON."""
    print(f"\n{'domain':<44}" + "".join(f"{kind:>18}" for kind in ROWS))
    by_domain: dict[str, list[dict]] = {}
    for row in results:
        by_domain.setdefault(row["domain"], []).append(row)
    summary = {}
    for domain, rows in by_domain.items():
        cells, summary[domain] = [], {}
        for kind in ROWS:
            values = [r["rows"][kind] for r in rows if kind in r["rows"]]
            if not values:
                cells.append(f"{'-':>18}")
                continue
            f1 = float(np.mean([v["object_f1"] for v in values]))
            merges = float(np.mean([v["merges"] for v in values]))
            summary[domain][kind] = {"object_f1": f1, "merges": merges}
            cells.append(f"{f1:>11.3f} /{merges:>5.0f}")
        print(f"{domain[:44]:<44}" + "".join(cells))
    worst = min(
        (
            r["rows"]["new recipe"]["object_f1"] - r["rows"]["shipped"]["object_f1"]
            for r in results
            if "new recipe" in r["rows"]
        ),
        default=float("nan"),
    )
    print(f"(object F1 / merges; worst new recipe - shipped over every run: {worst:+.3f})")
    write_json(results, args, summary, worst)


def write_json(results: list[dict], args, summary: dict | None = None, worst=None) -> None:
    """Write what was measured so far (and the summary at the end) to ``args.json``."""
    out = {
        "machine": machine_info(load_average_at_end=os.getloadavg()),
        "arguments": vars(args),
        "summary": summary,
        "worst_new_minus_shipped": worst,
        "runs": results,
    }
    write_results(args.json, out)


if __name__ == "__main__":
    main()
