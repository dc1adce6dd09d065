"""Segment and Evaluate widgets: nuclei as objects, measurements, lazy stacks in zarr."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from conftest import wait_done

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"
IMAGE = "Ganglioneuroblastoma_9"  # 430 x 550, the smallest real image


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test of this module on one torch thread (conftest)."""


@pytest.fixture(scope="module")
def model(kromp_tiny_model):
    """A tiny U-Net (F=4, depth 2) trained for 40 steps on real crops (conftest)."""
    return kromp_tiny_model


@pytest.fixture(scope="module")
def stack(kromp_root) -> np.ndarray:
    """Six z-planes (20-25) of the 3-D nuclei stack, uint16 (6, 256, 256)."""
    return tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[20:26]


def dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def segment_widget(viewer, model):
    widget = dock(viewer, "Segment")
    widget.registry.add(model, "tiny")
    widget.tile_size.value = 128
    widget.scope.value = "all frames"
    return widget


class Recording:
    """An array-like recording the size of every read (to prove chunk-wise reading)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        self.reads.append(out.size)
        return out


# ------------------------------------------------------------------------- instances
def test_instances_features_match_regionprops_and_csv(
    qtbot, make_napari_viewer, model, kromp_root, tmp_path
) -> None:
    from skimage.measure import regionprops

    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei.prediction.instances import (
        InstanceConfig,
        instances_from_probabilities,
    )
    from napari_unet_nuclei.prediction.measurements import (
        MEASUREMENT_COLUMNS,
        read_measurements_csv,
    )

    image = tifffile.imread(kromp_root / "images" / f"{IMAGE}.tif")
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="kromp")
    segment = segment_widget(viewer, model)
    segment.image_layer.value = layer
    assert segment.save_measurements_to(tmp_path / "none.csv") is None
    segment.instances.value = True
    segment.run()
    wait_done(qtbot, segment)

    instances = viewer.layers["kromp instances"]
    labels = np.asarray(instances.data)
    assert instances.metadata[OWNER_KEY]["role"] == "instances"
    assert labels.shape == image.shape and labels.dtype == np.int32
    ids = np.unique(labels[labels > 0])
    assert ids.size > 10 and np.array_equal(ids, np.arange(1, ids.size + 1))
    probabilities = np.asarray(viewer.layers["kromp probabilities"].data)
    expected = instances_from_probabilities(probabilities, InstanceConfig(threshold=0.5))
    np.testing.assert_array_equal(labels, expected)

    features = instances.features
    assert list(features.columns) == ["index", *MEASUREMENT_COLUMNS]
    assert len(features) == ids.size
    props = regionprops(labels, intensity_image=image.astype(float))
    assert [p.label for p in props] == features["label"].tolist() == features["index"].tolist()
    np.testing.assert_array_equal(features["area_px"], [p.area for p in props])
    np.testing.assert_allclose(features["centroid_y_px"], [p.centroid[0] for p in props])
    np.testing.assert_allclose(features["centroid_x_px"], [p.centroid[1] for p in props])
    np.testing.assert_allclose(features["mean_intensity"], [p.intensity_mean for p in props])
    np.testing.assert_allclose(
        features["integrated_intensity"], [p.intensity_mean * p.area for p in props]
    )
    np.testing.assert_allclose(features["eccentricity"], [p.eccentricity for p in props])

    written = segment.save_measurements_to(tmp_path / "kromp_nuclei.csv")
    assert written is not None and not list(tmp_path.glob(".*"))
    table = read_measurements_csv(written)
    assert list(table) == list(MEASUREMENT_COLUMNS)
    for name, values in table.items():
        np.testing.assert_allclose(values, features[name].to_numpy(), rtol=1e-12)


def test_current_frame_instances_keep_ids_unique(qtbot, make_napari_viewer, model, stack):
    viewer = make_napari_viewer()
    layer = viewer.add_image(stack, name="planes")
    segment = segment_widget(viewer, model)
    segment.image_layer.value = layer
    segment.instances.value = True
    segment.scope.value = "current frame"
    for frame in (1, 4, 1):  # frame 1 twice: its nuclei are replaced, not added again
        viewer.dims.set_current_step(0, frame)
        segment.run()
        wait_done(qtbot, segment)
    labels = np.asarray(viewer.layers["planes instances"].data)
    features = viewer.layers["planes instances"].features
    assert [i for i in range(6) if labels[i].any()] == [1, 4]
    one, four = set(np.unique(labels[1])) - {0}, set(np.unique(labels[4])) - {0}
    assert one and four and not one & four
    assert sorted(features["label"]) == sorted(one | four)
    assert set(features.loc[features["label"].isin(one), "frame"]) == {1}
    assert set(features.loc[features["label"].isin(four), "frame"]) == {4}


# ---------------------------------------------------------------------- lazy stacks
def test_dask_stack_frame_by_frame_into_zarr_equals_in_memory(
    qtbot, make_napari_viewer, model, stack, tmp_path
) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei.io.zarr_io import open_zarr_image

    viewer = make_napari_viewer()
    recording = Recording(stack)
    lazy = viewer.add_image(da.from_array(recording, chunks=(1, 128, 256)), name="lazy")
    memory = viewer.add_image(stack.copy(), name="memory")
    segment = segment_widget(viewer, model)
    segment.tile_size.value = 256  # whole frames: the comparison does not depend on tiling
    segment.instances.value = True
    segment.results_folder.value = tmp_path / "store"
    frames_seen: list[int] = []
    shown: list[int] = []

    def on_frame(event) -> None:
        if type(event).__name__ == "LazyFrameDone":
            frames_seen.append(event.frame)
            shown.append(
                int(np.asarray(viewer.layers["lazy probabilities"].data).any((1, 2)).sum())
            )

    segment.image_layer.value = lazy
    worker = segment.run()
    worker.yielded.connect(on_frame)
    wait_done(qtbot, segment)
    # The layers grew frame by frame, each refresh showing the frames finished so far.
    assert frames_seen == list(range(6))
    assert shown == sorted(shown) and shown[-1] == 6 and all(n >= 1 for n in shown)
    assert segment.status.value.startswith("Segmented 1 image(s) with")
    # Never more than one chunk of the stack read at a time.
    assert max(recording.reads) <= 128 * 256 < stack.size
    lazy_outputs = {
        role: viewer.layers[f"lazy {role}"] for role in ("probabilities", "nuclei", "instances")
    }
    for layer in lazy_outputs.values():
        assert isinstance(layer.data, da.Array)
    store = lazy_outputs["probabilities"].metadata[OWNER_KEY]["store"]
    assert store.startswith(str(tmp_path / "store")) and store.endswith("lazy_prob.ome.zarr")
    on_disk, axes = open_zarr_image(store)
    assert on_disk.shape == stack.shape and on_disk.dtype == np.float32 and axes[-2:] == ["y", "x"]

    segment.image_layer.value = memory
    segment.run()
    wait_done(qtbot, segment)
    in_memory = {
        role: np.asarray(viewer.layers[f"memory {role}"].data)
        for role in ("probabilities", "nuclei", "instances")
    }
    np.testing.assert_allclose(
        np.asarray(lazy_outputs["probabilities"].data), in_memory["probabilities"], atol=1e-5
    )
    np.testing.assert_allclose(on_disk[...], in_memory["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(lazy_outputs["nuclei"].data), in_memory["nuclei"])
    np.testing.assert_array_equal(
        np.asarray(lazy_outputs["instances"].data), in_memory["instances"]
    )
    assert 0.01 < in_memory["nuclei"].mean() < 0.9
    lazy_features = lazy_outputs["instances"].features
    memory_features = viewer.layers["memory instances"].features
    assert list(lazy_features.columns) == list(memory_features.columns)
    assert len(lazy_features) == len(memory_features) == in_memory["instances"].max()
    np.testing.assert_allclose(
        lazy_features.drop(columns="index").to_numpy(float),
        memory_features.drop(columns="index").to_numpy(float),
    )

    # The threshold slider re-thresholds the lazy mask too.
    segment.threshold.value = 0.7
    np.testing.assert_array_equal(
        np.asarray(lazy_outputs["nuclei"].data), (on_disk[...] >= 0.7).astype(np.uint8)
    )


def test_cancel_mid_stack_shows_only_finished_frames(
    qtbot, make_napari_viewer, model, kromp_root
) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei.io.zarr_io import open_zarr_image

    full = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")  # (60, 256, 256)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(full, chunks=(1, 256, 256)), name="z")
    segment = segment_widget(viewer, model)
    segment.tile_size.value = 64
    segment.image_layer.value = layer
    segment.run()
    qtbot.waitUntil(lambda: "z probabilities" in viewer.layers, timeout=60_000)
    segment.cancel()
    wait_done(qtbot, segment, timeout=10_000)
    outputs = segment.last_run.lazy_outputs[0]
    done = outputs.frames_done
    n_done = int(done.sum())
    assert 1 <= n_done < 60 and done[:n_done].all() and not done[n_done:].any()
    assert f"{n_done} of 60 frame(s)" in segment.status.value
    shown = np.asarray(viewer.layers["z probabilities"].data)
    assert (shown[:n_done].reshape(n_done, -1).max(axis=1) > 0).all()
    assert not shown[n_done:].any()
    assert not np.asarray(viewer.layers["z nuclei"].data)[n_done:].any()
    # The store holds nothing of the interrupted frame either.
    store = viewer.layers["z probabilities"].metadata[OWNER_KEY]["store"]
    on_disk, _ = open_zarr_image(store)
    assert not on_disk[n_done:].any()


# ------------------------------------------------------------------------ evaluation
def _doctored_prediction(truth: np.ndarray) -> np.ndarray:
    """Real ground truth with the four kinds of object error put in on purpose."""
    from skimage.measure import label

    prediction = label(truth > 0).astype(np.int32)  # touching nuclei merge
    ids, areas = np.unique(truth[truth > 0], return_counts=True)
    missed = ids[np.argsort(areas)[len(ids) // 2 : len(ids) // 2 + 3]]
    prediction[np.isin(truth, missed)] = 0  # three missed nuclei
    big = ids[np.argmax(areas)]  # the largest nucleus cut in two
    _, cols = np.nonzero(truth == big)
    middle = int(np.median(cols))
    part = (truth == big) & (np.arange(truth.shape[1])[None, :] >= middle)
    prediction[truth == big] = prediction.max() + 1
    prediction[part] = prediction.max() + 1
    prediction[(truth == big) & (np.arange(truth.shape[1])[None, :] == middle - 1)] = 0
    empty = np.argwhere(truth == 0)
    y, x = empty[len(empty) // 3]
    box = (slice(max(0, y - 4), y + 4), slice(max(0, x - 4), x + 4))
    if not truth[box].any():
        prediction[box] = prediction.max() + 1  # a false nucleus
    return prediction


def test_evaluate_object_metrics_and_overlay(qtbot, make_napari_viewer, model, kromp_root) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei._napari.evaluate_widget import PredictionSource
    from napari_unet_nuclei.evaluate.object_metrics import (
        dsb_average_precision,
        object_error_map,
        object_scores,
    )
    from napari_unet_nuclei.prediction.instances import (
        InstanceConfig,
        instances_from_probabilities,
    )

    name = "normal_16"
    image = tifffile.imread(kromp_root / "images" / f"{name}.tif")
    truth = tifffile.imread(kromp_root / "masks" / f"{name}.tif")
    prediction = _doctored_prediction(truth)
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image, name="img")
    truth_layer = viewer.add_labels(truth, name="truth")
    viewer.add_labels(prediction, name="doctored")
    evaluate = dock(viewer, "Evaluate")
    evaluate.reset_choices()
    evaluate.objects.value = True
    evaluate.source.value = PredictionSource("layer", "doctored")
    evaluate.image_layer.value, evaluate.truth_layer.value = image_layer, truth_layer
    evaluate.evaluate()
    wait_done(qtbot, evaluate)

    expected = object_scores(prediction, truth)
    assert evaluate.table.value("object_precision") == pytest.approx(expected["precision"])
    assert evaluate.table.value("object_recall") == pytest.approx(expected["recall"])
    assert evaluate.table.value("object_f1") == pytest.approx(expected["f1"])
    assert evaluate.table.value("dsb_ap") == pytest.approx(
        dsb_average_precision(prediction, truth)
    )
    assert 0.3 < evaluate.table.value("object_f1") < 1.0
    overlay = viewer.layers["img object errors"]
    assert overlay.metadata[OWNER_KEY]["role"] == "object errors"
    engine = object_error_map(prediction, truth)
    np.testing.assert_array_equal(overlay.data, engine.map)
    assert {2, 3, 4, 5} <= set(np.unique(overlay.data))  # false, missed, merge, split
    counts = evaluate.last_objects.scores
    assert {key: counts[key] for key in engine.counts()} == engine.counts()
    assert counts["merges"] >= 2 and counts["splits"] >= 1 and counts["missed"] >= 3
    assert counts["false_nuclei"] >= 1
    assert evaluate.object_legend.isVisibleTo(evaluate.native)
    assert set(evaluate.object_legend.labels) == {1, 2, 3, 4, 5}
    evaluate.reset_choices()
    assert not [s for s in evaluate.source.choices if "errors" in s.name]  # overlays

    # A model: its mask is split into nuclei with the watershed before matching.
    evaluate.registry.add(model, "tiny")
    evaluate.source.value = PredictionSource("model", "tiny")
    evaluate.evaluate()
    wait_done(qtbot, evaluate)
    probabilities = evaluate.last_result.probabilities
    predicted = instances_from_probabilities(probabilities, InstanceConfig(threshold=0.5))
    assert evaluate.table.value("object_f1") == pytest.approx(
        object_scores(predicted, truth)["f1"]
    )
    assert evaluate.table.value("dsb_ap") == pytest.approx(dsb_average_precision(predicted, truth))
    np.testing.assert_array_equal(
        viewer.layers["img object errors"].data, object_error_map(predicted, truth).map
    )
