"""Batch and scale: stacks frame by frame, lazy arrays, folders on a dask cluster, atomic outputs."""

from __future__ import annotations

import csv
import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from conftest import drain
from napari_unet_nuclei.cli import main
from napari_unet_nuclei.events import BatchFinished, BatchStarted, FrameDone, ImageDone
from napari_unet_nuclei.io.image_inputs import BatchError, BatchInput, discover_inputs, open_image
from napari_unet_nuclei.io.model_io import save_model
from napari_unet_nuclei.io.zarr_io import create_ome_zarr
from napari_unet_nuclei.nn.normalization import normalize_frame
from napari_unet_nuclei.prediction.inference import InferenceCancelled, iter_predict, predict
from napari_unet_nuclei.prediction.lazy import (
    frame_intensity_range,
    iter_predict_lazy,
    predict_lazy,
)
from napari_unet_nuclei.workflows.batch import segment_files
from napari_unet_nuclei.workflows.segment_options import SegmentOptions
from napari_unet_nuclei.workflows.segment_to_zarr import iter_segment_to_zarr

#: Three small real images (430 x 550, 763 x 1014, 1024 x 1024).
KROMP_NAMES = ("Ganglioneuroblastoma_9", "otherspecimen_3", "otherspecimen_9")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest)."""


@pytest.fixture(scope="module")
def model(kromp_tiny_model):
    """A tiny U-Net trained for 40 steps on 256 x 256 crops of four real images (conftest)."""
    return kromp_tiny_model


@pytest.fixture(scope="module")
def model_path(model, tmp_path_factory) -> str:
    return str(save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(scope="module")
def nuclei3d(kromp_root):
    """The 3-D stack (60, 256, 256) of ../shared/data/nuclei3d."""
    return kromp_root.parent / "nuclei3d" / "nuclei.tif"


@pytest.fixture(scope="module")
def kromp_folder(kromp_root, tmp_path_factory):
    """A folder of links to three real images (the data is never copied)."""
    folder = tmp_path_factory.mktemp("kromp_images")
    for name in KROMP_NAMES:
        (folder / f"{name}.tif").symlink_to(kromp_root / "images" / f"{name}.tif")
    return folder


class _Recording:
    """An array-like that records how many pixels each read returns."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.reads.append(out.size)
        return out


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------------
# Stacks and lazy arrays
# --------------------------------------------------------------------------------------


def test_4d_stack_frame_by_frame_with_progress_and_cancel(model) -> None:
    stack = np.random.default_rng(0).integers(0, 4000, (2, 3, 48, 64)).astype(np.uint16)
    events, whole = drain(iter_predict(model, stack))
    frames = [e for e in events if isinstance(e, FrameDone)]
    assert [(e.frame, e.n_frames) for e in frames] == [(i, 6) for i in range(6)]
    np.testing.assert_allclose(whole[1, 2], predict(model, stack[1, 2]), atol=1e-6)
    lazy_events, lazy = drain(
        iter_predict_lazy(model, da.from_array(stack, chunks=(1, 1, 48, 64)))
    )
    np.testing.assert_allclose(lazy, whole, atol=1e-6)
    assert sum(isinstance(e, FrameDone) for e in lazy_events) == 6
    for run in (iter_predict, iter_predict_lazy):
        out = np.full(stack.shape, -1, np.float32)
        done: list[int] = []

        def two_frames(done: list[int] = done) -> bool:
            return len(done) >= 2

        generator = run(model, stack, out=out, should_stop=two_frames)
        with pytest.raises(InferenceCancelled):
            for event in generator:
                if isinstance(event, FrameDone):
                    done.append(event.frame)
        assert done == [0, 1]
        assert (out[0, :2] >= 0).all() and (out[1] == -1).all()


def test_nuclei3d_stack_whole_and_as_dask_array_give_the_same_result(
    model, nuclei3d, tmp_path
) -> None:
    stack = tifffile.imread(nuclei3d)
    assert stack.shape == (60, 256, 256)
    whole = predict(model, stack)
    lazy_input = da.from_array(stack, chunks=(1, 128, 256))
    events, result = drain(
        iter_segment_to_zarr(model, lazy_input, tmp_path / "nuclei.ome.zarr", kind="mask")
    )
    assert isinstance(result, da.Array) and result.chunks[0] == (1,) * 60
    assert sum(isinstance(e, FrameDone) for e in events) == 60
    mask = result.compute()
    np.testing.assert_array_equal(mask, (whole >= model.threshold).astype(np.uint8))
    assert 0.01 < mask.mean() < 0.9
    attrs = json.loads((tmp_path / "nuclei.ome.zarr" / ".zattrs").read_text())
    assert [a["name"] for a in attrs["multiscales"][0]["axes"]] == ["z", "y", "x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.ome.zarr"]
    probabilities = np.zeros(stack.shape, np.float32)
    drain(iter_predict_lazy(model, lazy_input, out=probabilities))
    np.testing.assert_allclose(probabilities, whole, atol=1e-6)


def test_streaming_reads_bands_and_equals_tiled_inference(model, kromp_root) -> None:
    image = tifffile.imread(kromp_root / "images" / "otherspecimen_3.tif")  # 763 x 1014
    recording = _Recording(image)
    lazy = predict_lazy(model, recording, tile_size=128, overlap=32)
    tiled = predict(model, image, tile_size=128, overlap=32)
    np.testing.assert_allclose(lazy, tiled, atol=1e-5)
    # Never the whole frame: bands of at most 256 rows (sampling) or one tile high.
    assert max(recording.reads) <= 256 * image.shape[1] < image.size
    frame = np.random.default_rng(1).normal(size=(1100, 1000))  # > 2**20 pixels: sampled
    frame[3, 4], frame[500, 7] = np.nan, np.inf
    low, high = frame_intensity_range(frame)
    expected = normalize_frame(frame)
    manual = (frame.astype(np.float32).astype(np.float64) - low) / (high - low)
    finite = np.isfinite(frame)
    np.testing.assert_allclose(manual[finite], expected[finite], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def test_discover_files_folders_globs_and_zarr(tmp_path, kromp_folder) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "b.ome.tif", np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(folder / "a.tiff", np.zeros((8, 8), np.uint8))
    (folder / ".hidden.tif").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    create_ome_zarr(folder / "c.ome.zarr", (8, 8), np.uint8)
    found = discover_inputs([folder])
    assert [(i.name, i.kind) for i in found] == [("a", "tiff"), ("b", "tiff"), ("c", "zarr")]
    assert [i.name for i in discover_inputs([str(kromp_folder / "*.tif")])] == sorted(KROMP_NAMES)
    # Duplicates collapse; order is kept.
    twice = discover_inputs([folder / "c.ome.zarr", folder, folder / "a.tiff"])
    assert [i.name for i in twice] == ["c", "a", "b"]
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "a.tif", np.zeros((8, 8), np.uint8))
    for specs, message in [
        ([tmp_path / "missing.tif"], "Input image not found"),
        ([tmp_path / "empty"], "No images found"),
        ([str(tmp_path / "*.png")], "No images match"),
        ([folder / "notes.txt"], "unsupported file type"),
        ([folder, other], "same name|named 'a'"),
    ]:
        with pytest.raises(BatchError, match=message):
            discover_inputs(specs)


def test_open_multipage_tiff_lazily_and_ome_zarr(tmp_path) -> None:
    stack = np.arange(4 * 32 * 40, dtype=np.uint16).reshape(4, 32, 40)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack", metadata={"axes": "TYX"})
    with open_image(tmp_path / "s.tif") as (image, axes):
        assert isinstance(image, np.ndarray) and axes == ["t", "y", "x"]
    with open_image(tmp_path / "s.tif", lazy_bytes=0) as (image, axes):
        assert not isinstance(image, np.ndarray)
        np.testing.assert_array_equal(np.asarray(image[2, 5:9]), stack[2, 5:9])
    array = create_ome_zarr(tmp_path / "v.ome.zarr", (1, 1, 4, 32, 40), np.uint16)
    array[0, 0] = stack
    with open_image(tmp_path / "v.ome.zarr") as (image, axes):
        assert image.shape == (4, 32, 40) and axes == ["z", "y", "x"]
        np.testing.assert_array_equal(np.asarray(image[3]), stack[3])
    two = create_ome_zarr(tmp_path / "two.ome.zarr", (2, 32, 40), np.uint16, axes=["c", "y", "x"])
    two[1] = stack[0]  # the nuclei in channel 1, channel 0 empty
    del two
    from napari_unet_nuclei.nn.normalization import ImageWarning

    with (
        pytest.warns(ImageWarning, match="has 2 channels: segmenting channel 1"),
        open_image(tmp_path / "two.ome.zarr") as (image, axes),
    ):
        assert image.shape == (32, 40) and axes == ["y", "x"]
        np.testing.assert_array_equal(np.asarray(image), stack[0])
    with open_image(tmp_path / "two.ome.zarr", channel=0) as (image, _):
        assert not np.asarray(image).any()
    with (
        pytest.raises(BatchError, match="2 channels"),
        open_image(tmp_path / "two.ome.zarr", channel=5),
    ):
        pass


# --------------------------------------------------------------------------------------
# Batch runs
# --------------------------------------------------------------------------------------


def test_zarr_instances_measurements_and_rerun_skips(
    model_path, nuclei3d, kromp_root, tmp_path
) -> None:
    stack_path = tmp_path / "stack.tif"
    tifffile.imwrite(
        stack_path,
        tifffile.imread(nuclei3d)[20:24],
        photometric="minisblack",
        metadata={"axes": "ZYX"},
    )
    image_path = kromp_root / "images" / "Ganglioneuroblastoma_9.tif"
    out = tmp_path / "out"
    options = SegmentOptions(
        format="zarr", instances=True, measure=True, probabilities=True, stack_axis="frames"
    )
    events, rows = drain(segment_files(model_path, [image_path, stack_path], out, options))
    kinds = [type(e) for e in events]
    assert kinds[0] is BatchStarted and kinds[-1] is BatchFinished
    assert [r["status"] for r in rows] == ["done", "done"]
    assert sorted(p.name for p in out.iterdir()) == [
        "Ganglioneuroblastoma_9.ome.zarr",
        "Ganglioneuroblastoma_9_nuclei.csv",
        "Ganglioneuroblastoma_9_prob.ome.zarr",
        "stack.ome.zarr",
        "stack_nuclei.csv",
        "stack_prob.ome.zarr",
        "summary.csv",
    ]
    labels = zarr.open_group(str(out / "stack.ome.zarr"), mode="r")["0"][...]
    assert labels.shape == (4, 256, 256)
    ids = [set(np.unique(frame)) - {0} for frame in labels]
    assert all(ids) and not set.intersection(*ids)  # unique across frames
    assert rows[1]["nuclei"] == len(set.union(*ids)) == labels.max()
    table = _rows(out / "stack_nuclei.csv")
    assert list(table[0]) == [
        "frame",
        "label",
        "area_px",
        "centroid_y_px",
        "centroid_x_px",
        "mean_intensity",
        "integrated_intensity",
        "eccentricity",
    ]
    assert len(table) == rows[1]["nuclei"]
    summary = _rows(out / "summary.csv")
    assert [r["name"] for r in summary] == ["Ganglioneuroblastoma_9", "stack"]
    assert summary[1]["frames"] == "4" and int(summary[0]["nuclei"]) > 10
    prob = zarr.open_group(str(out / "Ganglioneuroblastoma_9_prob.ome.zarr"), mode="r")["0"]
    assert prob.dtype == np.float32 and prob.shape == (430, 550)
    # Re-running skips everything and reports the same counts.
    again, rows_again = drain(segment_files(model_path, [image_path, stack_path], out, options))
    done = [e for e in again if isinstance(e, ImageDone)]
    assert [e.status for e in done] == ["skipped", "skipped"]
    assert [r["nuclei"] for r in rows_again] == [r["nuclei"] for r in rows]


def test_folder_on_two_workers_equals_one_worker(model_path, kromp_folder, tmp_path) -> None:
    # One worker: this process (the same code a one-worker cluster runs in its task);
    # two workers: a dask LocalCluster of two processes.
    outputs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        events, rows = drain(
            segment_files(
                model_path, [kromp_folder], out, SegmentOptions(threads=1), workers=workers
            )
        )
        assert events[0].scheduler == ("local cluster" if workers else "in-process")
        assert [r["status"] for r in rows] == ["done"] * 3
        outputs[workers] = (rows, {n: tifffile.imread(out / f"{n}.tif") for n in KROMP_NAMES})
    for name in KROMP_NAMES:
        np.testing.assert_array_equal(outputs[0][1][name], outputs[2][1][name])
    for one, two in zip(outputs[0][0], outputs[2][0]):
        assert one["nuclei"] == two["nuclei"] > 0
        assert one["foreground_fraction"] == two["foreground_fraction"]
        assert 0.02 < one["foreground_fraction"] < 0.8


def test_interrupted_write_leaves_no_partial_file_and_rerun_finishes(
    model, kromp_folder, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "out"
    real_imwrite = tifffile.imwrite

    def disk_full(path, data, **options):
        if "otherspecimen_3" in str(path):
            with open(path, "wb") as handle:
                handle.write(b"II*\x00 half a file")
            raise OSError(28, "No space left on device")
        return real_imwrite(path, data, **options)

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    _, rows = drain(segment_files(model, [kromp_folder], out))
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert "No space left" in rows[1]["error"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Ganglioneuroblastoma_9.tif", "otherspecimen_9.tif", "summary.csv"]
    monkeypatch.setattr(tifffile, "imwrite", real_imwrite)

    # A killed run may leave hidden temporary files: they never count as outputs.
    (out / ".otherspecimen_3.tif.partial").write_bytes(b"junk")
    _, rows = drain(segment_files(model, [kromp_folder], out))
    assert [r["status"] for r in rows] == ["skipped", "done", "skipped"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert tifffile.imread(out / "otherspecimen_3.tif").shape == (763, 1014)

    # Cancelled in the middle of an image written as OME-Zarr: nothing is left of it.
    tiles = []

    def stop_after_some_tiles() -> bool:
        tiles.append(1)
        return len(tiles) > 3

    zarr_out = tmp_path / "zarr"
    with pytest.raises(InferenceCancelled):
        drain(
            segment_files(
                model,
                [kromp_folder / "otherspecimen_9.tif"],
                zarr_out,
                SegmentOptions(format="zarr", tile_size=256),
                should_stop=stop_after_some_tiles,
            )
        )
    assert list(zarr_out.iterdir()) == []


def test_model_object_cannot_go_to_workers(model, kromp_folder, tmp_path) -> None:
    with pytest.raises(BatchError, match="file path"):
        drain(segment_files(model, [kromp_folder], tmp_path, workers=2))
    with pytest.raises(BatchError, match="overwrite an input"):
        source = BatchInput(
            kromp_folder / "Ganglioneuroblastoma_9.tif", "Ganglioneuroblastoma_9", "tiff"
        )
        drain(segment_files(model, [source], kromp_folder))


def test_cli_segment_glob_as_zarr_labels_with_measurements(
    model_path, kromp_folder, tmp_path, capsys
) -> None:
    out = tmp_path / "cli"
    summary = tmp_path / "runs" / "summary.csv"
    pattern = str(kromp_folder / "Gang*.tif")
    args = ["segment", "--model", model_path, pattern, "--out", str(out)]
    extra = ["--format", "zarr", "--instances", "--measure", "--summary", str(summary)]
    assert main([*args, *extra]) == 0
    printed = capsys.readouterr().out
    assert "1 segmented, 0 skipped, 0 failed" in printed and "nuclei" in printed
    name = "Ganglioneuroblastoma_9"
    labels = zarr.open_group(str(out / f"{name}.ome.zarr"), mode="r")["0"][...]
    table = _rows(out / f"{name}_nuclei.csv")
    assert len(table) == labels.max() == int(_rows(summary)[0]["nuclei"]) > 10
    assert main([*args, *extra]) == 0
    assert "0 segmented, 1 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--workers", "1", "--scheduler", "tcp://x:1"])


def test_worker_reads_of_dask_arrays_leave_dask_global_callbacks_alone() -> None:
    """A worker's read must not swap dask's global callbacks (napari's cache) out and back in:
    done while napari computes a dask layer on the GUI thread, that swap corrupts the cache
    callbacks (a KeyError in dask/cache.py ended a Segment run)."""
    import dask.array as da
    from dask.callbacks import Callback

    from napari_unet_nuclei.prediction.lazy import read_array

    seen_during_compute: list[bool] = []
    calls: list[str] = []

    class Recorder(Callback):
        def _pretask(self, key, dsk, state):
            calls.append("pretask")

    def look(block):
        seen_during_compute.append(any(c[2] is not None for c in Callback.active))
        return block * 2

    stack = da.ones((3, 64, 64), chunks=(1, 32, 32))
    with Recorder():
        values = read_array(stack[1].map_blocks(look))
        assert values.shape == (64, 64) and float(values.sum()) == 2 * 64 * 64
        # The global callback stayed registered while the read computed, and was not used.
        assert seen_during_compute and all(seen_during_compute)
        assert calls == []
        np.testing.assert_array_equal(np.asarray(stack[1]), np.ones((64, 64)))
        assert calls  # an ordinary compute uses it (and swaps it out meanwhile)


def test_segmenting_a_dask_stack_leaves_dask_global_callbacks_alone(model, kromp_root) -> None:
    """The segment workflow reads dask frames whole (network, measurements) and in bands:
    neither way may use (and so swap out) dask's global callbacks, as napari's cache is."""
    import dask.array as da
    from dask.callbacks import Callback

    from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment
    from napari_unet_nuclei.workflows.segmentation import default_instance_config

    calls: list[str] = []

    class Recorder(Callback):
        def _pretask(self, key, dsk, state):
            calls.append("pretask")

    image = tifffile.imread(kromp_root / "images" / "normal_34.tif")[:128, :192]
    stack = da.from_array(np.stack([image, image[::-1]]), chunks=(1, 64, 96))
    with Recorder():
        for read in ("frames", "bands"):
            outputs = SegmentOutputs(labels=np.zeros(stack.shape, np.int32))
            _, summary = drain(
                iter_segment(
                    model,
                    stack,
                    outputs,
                    instances=default_instance_config(model),
                    measure=True,
                    read=read,
                    tile_size=64,
                )
            )
            assert summary.read == read and len(summary.table["label"]) == summary.nuclei
        assert calls == []
