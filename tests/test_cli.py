"""The command line, end to end on real data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet_nuclei.cli import main
from napari_unet_nuclei.io.model_io import load_model

TINY = [
    "--features",
    "4",
    "--depth",
    "2",
    "--batch-size",
    "4",
    "--patch-size",
    "64",
    "--seed",
    "0",
]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, lab_npz, kromp_root) -> str:
    out = tmp_path_factory.mktemp("cli") / "model.pt"
    split = f"{kromp_root / 'splits.json'}:lab_70_9"
    code = main(
        [
            "train",
            "--data",
            str(lab_npz),
            "--split",
            split,
            "--out",
            str(out),
            "--epochs",
            "2",
            *TINY,
        ]
    )
    assert code == 0
    return str(out)


def test_train_writes_model_with_summary(trained_model, splits) -> None:
    model = load_model(trained_model)
    assert model.config.features == 4 and model.config.depth == 2
    assert model.summary["train_names"] == splits["lab_70_9"]["train"]
    assert model.summary["val_names"] == splits["lab_70_9"]["test"]
    assert model.summary["epochs"] == 2
    assert 0 < model.summary["best_val_f1"] <= 1


def test_evaluate_json_matches_format(
    trained_model, lab_npz, kromp_root, tmp_path, splits, capsys
) -> None:
    out = tmp_path / "eval.json"
    split = f"{kromp_root / 'splits.json'}:lab_70_9"
    assert (
        main(
            [
                "evaluate",
                "--model",
                trained_model,
                "--data",
                str(lab_npz),
                "--split",
                split,
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    pixel = {"precision", "recall", "f1", "iou", "ap"}
    objects = {"object_precision", "object_recall", "object_f1", "dsb_ap"}
    assert set(result["mean"]) == pixel | objects
    assert [row["name"] for row in result["images"]] == splits["lab_70_9"]["test"]
    for key in sorted(pixel | objects):
        values = [row[key] for row in result["images"]]
        assert result["mean"][key] == pytest.approx(np.mean(values))
        assert all(0 <= v <= 1 for v in values)
    # Pooled: counts summed over the images (the documented rule).
    pooled, rows = result["pooled"], result["images"]
    tp, n_true, n_pred = (sum(row[k] for row in rows) for k in ("tp", "n_true", "n_pred"))
    assert pooled["object_f1"] == pytest.approx(2 * tp / (n_true + n_pred))
    assert pooled["merges"] == sum(row["merges"] for row in rows)
    assert "counts summed" in result["pooling"]
    printed = capsys.readouterr().out
    assert "mean" in printed and "pooled" in printed and "object F1" in printed


def test_segment_writes_one_mask_per_input(trained_model, kromp_root, tmp_path) -> None:
    inputs = sorted((kromp_root / "images").glob("*.tif"))[:2]
    out = tmp_path / "masks"
    assert (
        main(
            [
                "segment",
                "--model",
                trained_model,
                *map(str, inputs),
                "--out",
                str(out),
                "--threshold",
                "0.5",
            ]
        )
        == 0
    )
    for path in inputs:
        mask = tifffile.imread(out / path.name)
        assert mask.shape == tifffile.imread(path).shape
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert not list(out.glob(".*partial"))


def test_segment_backends_and_precisions(trained_model, kromp_root, tmp_path) -> None:
    """``--backend``/``--precision`` reach the engine: float32 runtimes give the same mask."""
    source = sorted((kromp_root / "images").glob("*.tif"))[0]
    image = tifffile.imread(source)[:400, :500]
    tifffile.imwrite(tmp_path / "crop.tif", image)
    masks = {}
    for flags in (["--backend", "torch", "--precision", "fp32"], ["--backend", "onnxruntime"]):
        out = tmp_path / flags[1]
        argv = ["segment", "--model", trained_model, str(tmp_path / "crop.tif"), "--out", str(out)]
        assert main([*argv, *flags]) == 0
        masks[flags[1]] = tifffile.imread(out / "crop.tif")
    assert masks["torch"].shape == image.shape
    assert masks["torch"].sum() > 0
    # Float32 in both runtimes: at most a handful of pixels exactly at the threshold differ.
    assert (masks["torch"] != masks["onnxruntime"]).mean() < 1e-4
    assert (
        main(
            [
                "segment",
                "--model",
                trained_model,
                str(source),
                "--out",
                str(tmp_path / "x"),
                "--precision",
                "fp16",
            ]
        )
        != 0
    )  # float16 needs CUDA: refused with a sentence


@pytest.mark.slow
def test_folder_dataset_and_fine_tuning(trained_model, kromp_root, tmp_path) -> None:
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for name in ("Ganglioneuroblastoma_0", "Neuroblastoma_1"):
        for sub in ("images", "masks"):
            shutil.copy(kromp_root / sub / f"{name}.tif", data / sub / f"{name}.tif")
    out = tmp_path / "tuned.pt"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--init",
        trained_model,
        *TINY,
    ]
    assert main(args) == 0
    assert load_model(out).summary["fine_tuned_from"] == "model"
    assert load_model(out).summary["replayed_images"] == 0
    # --replay mixes a sample of the built-in model's training images into each batch.
    replayed = tmp_path / "replayed.pt"
    args[args.index(str(out))] = str(replayed)
    assert main([*args, "--replay", "3"]) == 0
    summary = load_model(replayed).summary
    assert summary["replayed_images"] == 3 and summary["replayed_per_batch"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "missing.npz", "--out", "m.pt"], "not found"),
        (["train", "--data", "{npz}", "--out", "m.pt", "--replay", "4"], "give --init too"),
        (["segment", "--model", "missing.pt", "x.tif", "--out", "o"], "Model file not found"),
        (
            ["evaluate", "--model", "{model}", "--data", "{npz}", "--split", "{splits}:nope"],
            "nope",
        ),
        (
            ["segment", "--model", "{model}", "missing.tif", "--out", "{tmp}"],
            "Input image not found",
        ),
        (
            ["segment", "--model", "{npz}", "missing.tif", "--out", "{tmp}"],
            "not a readable model file",
        ),
    ],
)
def test_bad_input_exits_2_with_one_sentence(
    args, message, trained_model, lab_npz, kromp_root, tmp_path, capsys
) -> None:
    values = {
        "model": trained_model,
        "npz": str(lab_npz),
        "splits": str(kromp_root / "splits.json"),
        "tmp": str(tmp_path),
    }
    assert main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


@pytest.mark.slow
def test_demo_without_viewer(tmp_path, capsys) -> None:
    import csv

    import tifffile

    metrics = main(["demo", "--out", str(tmp_path), "--steps", "40", "--no-viewer"])
    assert metrics == 0
    printed = capsys.readouterr().out
    for name in ("model.pt", "metrics.json", "overlay.png", "precision_recall.png"):
        assert (tmp_path / name).stat().st_size > 1000
    result = json.loads((tmp_path / "metrics.json").read_text())
    before, after = result["before"], result["after"]
    assert before["model"] == "fluo-nuclei" and len(before["images"]) == 4
    assert before["mean"]["nuclei"] > 5 and before["mean"]["object_f1"] > 0.3
    assert len(after["images"]) == 4 and after["mean"]["object_f1"] > 0.5
    # Pooled as `evaluate` pools: the nucleus counts of the four images summed.
    assert before["pooled"]["n_true"] == sum(row["true_nuclei"] for row in before["images"])
    assert 0 < after["pooled"]["object_f1"] <= 1 and "merges" in after["images"][0]
    # A fine-tune chosen by nuclei never leaves the held-out nuclei worse than it found them
    # on its validation image; on these images it is at least as good.
    assert after["mean"]["object_f1"] >= before["mean"]["object_f1"] - 0.02
    assert result["fine_tune_steps"] == 40 and "fine-tuned, 40 steps" in after["model"]
    # nuclei.csv: every held-out image, from the model the masks come from.
    with open(tmp_path / "nuclei.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if not row[next(iter(row))].startswith("#")]
    assert "area_px" in rows[0] and "mean_intensity" in rows[0]
    masks = {p.stem: tifffile.imread(p) for p in (tmp_path / "masks").glob("*.tif")}
    assert len(masks) == 4
    for name, labels in masks.items():
        assert sum(row["image"] == name for row in rows) == labels.max() > 0
    summary = load_model(tmp_path / "model.pt").summary
    assert summary["fine_tuned_from"] == "fluo-nuclei"
    # The printout says which weights were kept, so equal before/after rows are explained.
    if result["kept_start_weights"]:
        assert "its weights were kept, so both rows are the same model" in printed
        assert after["mean"]["object_f1"] == before["mean"]["object_f1"]
    else:
        assert f"Kept epoch {summary['best_epoch']}:" in printed


def test_console_script_is_installed() -> None:
    executable = shutil.which("napari-unet-nuclei")
    command = [executable] if executable else [sys.executable, "-m", "napari_unet_nuclei.cli"]
    result = subprocess.run(
        [*command, "train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in (
        "--data",
        "--split",
        "--out",
        "--features",
        "--depth",
        "--epochs",
        "--time-budget",
        "--batch-size",
        "--lr",
        "--patch-size",
        "--no-augment",
        "--seed",
        "--init",
    ):
        assert flag in result.stdout


def test_progress_in_a_log_file_is_plain_lines(capsys) -> None:
    """stderr is not a terminal under pytest: a log gets the callers' lines (one per epoch or
    per image) and a line at the start and the end, no carriage returns."""
    from napari_unet_nuclei.console import PlainProgress, progress_bar

    bar = progress_bar(3, "segmenting (local)")
    assert isinstance(bar, PlainProgress)
    for number in range(3):
        bar.update(1)
        bar.set_postfix_str(f"frame {number}")
        bar.write(f"image_{number}.tif  nuclei 5")
    bar.unit = "image"
    bar.close()
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    assert captured.out.splitlines() == [f"image_{n}.tif  nuclei 5" for n in range(3)]
    assert captured.err.splitlines() == [
        "segmenting (local): started",
        "segmenting (local): done (3 image)",
    ]


def test_a_tiff_that_names_its_z_axis_is_segmented_in_3d(kromp_root, tmp_path, capsys) -> None:
    """--stack-axis auto (the default): an ImageJ stack with axes ZYX gives 3-D nuclei; the
    same planes without axis names give nuclei frame by frame."""
    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[16:40, :128, :128]
    tifffile.imwrite(tmp_path / "zyx.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    hints = {}
    for name in ("zyx", "plain"):
        command = ["segment", str(tmp_path / f"{name}.tif"), "--out", str(tmp_path / name)]
        assert main([*command, "--instances"]) == 0
        hints[name] = "--stack-axis z finds the 3-D nuclei" in capsys.readouterr().err
    # Segmented frame by frame, the unnamed stack's frames are recognised as slices.
    assert hints == {"zyx": False, "plain": True}
    volume = tifffile.imread(tmp_path / "zyx" / "zyx.tif")
    frames = tifffile.imread(tmp_path / "plain" / "plain.tif")
    assert volume.shape == frames.shape == stack.shape
    n_volume, n_frames = len(np.unique(volume)) - 1, len(np.unique(frames)) - 1
    assert 0 < n_volume <= n_frames / 4  # each 3-D nucleus spans many slices
    spans = [np.flatnonzero((volume == i).any(axis=(1, 2))).size for i in np.unique(volume)[1:]]
    assert min(spans) >= 2


def test_measurements_carry_micrometres_where_the_file_says_its_pixel_size(
    kromp_root, tmp_path, capsys
) -> None:
    """Issue 22, units: an ImageJ TIFF at 0.325 um per pixel, an OME-TIFF at 0.5 um and a
    TIFF without a size; the nuclei CSV names its units, and the summary the diameter."""
    import csv

    image = tifffile.imread(kromp_root / "images" / "normal_34.tif")[:256, :256]
    tifffile.imwrite(
        tmp_path / "imagej.tif",
        image,
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"unit": "micron"},
    )
    tifffile.imwrite(
        tmp_path / "ome.tif",
        image,
        ome=True,
        metadata={
            "PhysicalSizeX": 500,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 500,
            "PhysicalSizeYUnit": "nm",
        },
    )
    tifffile.imwrite(tmp_path / "plain.tif", image)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path), "--out", str(out), "--instances", "--measure"]) == 0
    assert "nucleus diameter" in capsys.readouterr().out

    def table(name: str) -> list[dict]:
        with open(out / f"{name}_nuclei.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    plain, imagej, ome = table("plain"), table("imagej"), table("ome")
    assert len(plain) == len(imagej) == len(ome) > 10
    assert "area_um2" not in plain[0] and "area_px" in plain[0]
    for rows, step in ((imagej, 0.325), (ome, 0.5)):
        for row in rows:
            assert float(row["area_um2"]) == pytest.approx(int(row["area_px"]) * step**2, rel=1e-4)
            assert float(row["centroid_x_um"]) == pytest.approx(
                float(row["centroid_x_px"]) * step, rel=1e-4
            )
    with open(out / "summary.csv", newline="") as handle:
        summary = {row["name"]: row for row in csv.DictReader(handle)}
    assert 10 < float(summary["plain"]["nucleus_diameter_px"]) < 40
    assert summary["plain"]["resized_frames"] == "0"


def test_a_diameter_given_on_the_command_line_resizes_the_image(
    kromp_root, tmp_path, capsys
) -> None:
    image = tifffile.imread(kromp_root / "images" / "normal_34.tif")[:256, :256]
    tifffile.imwrite(tmp_path / "cells.tif", image)
    out = tmp_path / "out"
    command = ["segment", str(tmp_path / "cells.tif"), "--out", str(out), "--instances"]
    assert main([*command, "--diameter", "52"]) == 0
    assert "nucleus diameter 52 px (resized)" in capsys.readouterr().out
    assert tifffile.imread(out / "cells.tif").shape == image.shape
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--diameter", "-3", "--overwrite"])
    assert exit_info.value.code == 2
    assert "is not a diameter" in capsys.readouterr().err
