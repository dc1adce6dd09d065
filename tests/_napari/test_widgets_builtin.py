"""The built-in model in the docks: listed first and ready at start, nuclei as objects in the
first minute, fine-tuning from it, and 3-D nuclei from a z-stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import wait_done

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"


def dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


@pytest.fixture
def kromp_crop(kromp_root):
    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")[:256, :320]
    labels = tifffile.imread(kromp_root / "masks" / "Ganglioneuroblastoma_0.tif")[:256, :320]
    return image, labels.astype(np.int32)


@pytest.fixture
def warnings_shown(monkeypatch) -> list[str]:
    from napari_unet_nuclei._napari import _notify

    shown: list[str] = []
    original = _notify.report_warning

    def record(message: str) -> None:
        shown.append(message)
        original(message)

    monkeypatch.setattr(_notify, "report_warning", record)
    from napari_unet_nuclei._napari import _background_job, train_widget

    monkeypatch.setattr(train_widget, "report_warning", record)
    monkeypatch.setattr(_background_job, "report_warning", record)  # the engine's notices
    return shown


def test_builtin_model_is_listed_first_and_segments_nuclei_at_once(
    qtbot, make_napari_viewer, kromp_crop
) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei._napari.model_picker import NEW_NETWORK
    from napari_unet_nuclei.evaluate.object_metrics import object_scores
    from napari_unet_nuclei.io.builtin_models import BUILTIN_MODELS

    image, truth = kromp_crop
    viewer = make_napari_viewer()
    viewer.add_image(image, name="kromp")
    segment, evaluate, train = (dock(viewer, n) for n in ("Segment", "Evaluate", "Train"))
    annotate = dock(viewer, "Annotate next")
    # Ready at start: the built-in model is the first choice and the one selected.
    assert segment.model.model_name == "fluo-nuclei"
    assert segment.model.choices[0] == "fluo-nuclei"
    assert annotate.model.model_name == "fluo-nuclei"
    assert str(evaluate.source.choices[0]) == "model: fluo-nuclei"
    assert train.start_from.choices[:2] == (NEW_NETWORK, "fluo-nuclei")
    assert segment.threshold.value == pytest.approx(BUILTIN_MODELS["fluo-nuclei"].threshold)
    assert segment.registry.names() == []  # nothing trained or loaded in this session yet
    segment.image_layer.value = viewer.layers["kromp"]
    segment.instances.value = True
    segment.run()
    wait_done(qtbot, segment)
    instances = viewer.layers["kromp instances"]
    assert instances.metadata[OWNER_KEY]["role"] == "instances"
    labels = np.asarray(instances.data)
    assert labels.shape == image.shape and labels.max() > 10
    assert len(instances.features) == len(np.unique(labels)) - 1
    assert object_scores(labels, truth)["f1"] > 0.6


def test_fine_tune_the_builtin_model_from_the_train_dock(
    qtbot, make_napari_viewer, kromp_crop, warnings_shown
) -> None:
    image, truth = kromp_crop
    viewer = make_napari_viewer()
    viewer.add_image(image, name="kromp")
    viewer.add_labels((truth > 0).astype(np.uint8), name="painted")
    train = dock(viewer, "Train")
    train.image_layer.value = viewer.layers["kromp"]
    train.labels_layer.value = viewer.layers["painted"]
    train.start_from.value = "fluo-nuclei"
    assert not train.settings.features.enabled and not train.settings.object_maps.enabled
    settings = train.settings
    settings.duration.value = "epochs"
    settings.epochs.value = 1
    settings.steps_per_epoch.value = 2
    settings.batch_size.value = 2
    settings.patch_size.value = 128
    settings.device.value = "cpu"
    settings.model_name.value = "mine"
    train.start()
    wait_done(qtbot, train)
    # Every nucleus painted with one value: the dock says (once) what that teaches.
    assert sum("one value" in message for message in warnings_shown) == 1
    # ... and nothing else: no numpy warnings ("Mean of empty slice") from the choice of
    # the epoch, threshold and instance rule.
    assert len(warnings_shown) == 1, warnings_shown
    assert train.registry.names() == ["mine"]
    tuned = train.registry.get("mine")
    assert tuned.object_maps == ("centre", "boundary")
    assert tuned.summary["fine_tuned_from"] == "fluo-nuclei"
    original = train.registry.get("fluo-nuclei")
    assert original is not tuned and original.summary.get("fine_tuned_from") is None


def test_segment_a_z_stack_into_3d_nuclei(qtbot, make_napari_viewer, kromp_root) -> None:
    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[24:36, :128, :128]
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells")
    segment = dock(viewer, "Segment")
    segment.image_layer.value = viewer.layers["cells"]
    segment.scope.value = "all frames"
    segment.instances.value = True
    segment.run()
    wait_done(qtbot, segment)
    per_frame = np.asarray(viewer.layers["cells instances"].data).copy()
    # Segmented frame by frame, the stack is recognised as a z-stack and the dock says so.
    assert "looks like a z-stack" in segment.status.value
    segment.stack_axis.value = "z"
    segment.run()
    wait_done(qtbot, segment)
    layer = viewer.layers["cells instances"]
    volume = np.asarray(layer.data)
    assert volume.shape == stack.shape
    # The 3-D nuclei cover the per-slice nuclei (holes filled, single-slice fragments gone).
    covered = np.count_nonzero((volume > 0) & (per_frame > 0))
    assert covered >= 0.9 * np.count_nonzero(per_frame > 0)
    n_volume = len(np.unique(volume)) - 1
    assert 0 < n_volume <= (len(np.unique(per_frame)) - 1) / 4  # each spans many slices
    assert "volume_voxels" in layer.features.columns and "frame" not in layer.features.columns
    assert len(layer.features) == n_volume


def test_segment_dock_measures_in_micrometres_and_takes_a_nucleus_diameter(
    qtbot, make_napari_viewer, kromp_crop
) -> None:
    """Issue 22 (units) and issue 20 (any nucleus size) in the Segment dock: a layer whose
    scale is in micrometres gets micrometre columns; the diameter field resizes the image
    and the status line says the size."""
    image, _ = kromp_crop
    viewer = make_napari_viewer()
    viewer.add_image(image, name="sized", scale=(0.5, 0.5), units=("micrometer", "micrometer"))
    viewer.add_image(image, name="pixels")
    segment = dock(viewer, "Segment")
    assert segment.diameter.value == 0 and segment.diameter.native.text() == "auto"
    segment.instances.value = True
    segment.image_layer.value = viewer.layers["sized"]
    segment.run()
    wait_done(qtbot, segment)
    sized = viewer.layers["sized instances"].features
    assert {"area_px", "area_um2", "centroid_y_um"} <= set(sized.columns)
    np.testing.assert_allclose(sized["area_um2"], sized["area_px"] * 0.25)
    assert "Nucleus diameter" in segment.status.value and "resized" not in segment.status.value
    segment.image_layer.value = viewer.layers["pixels"]
    segment.diameter.value = 60
    segment.run()
    wait_done(qtbot, segment)
    pixels = viewer.layers["pixels instances"]
    assert "area_um2" not in pixels.features.columns
    assert np.asarray(pixels.data).shape == image.shape and len(pixels.features) > 10
    assert "Nucleus diameter 60 px; 1 image(s) resized" in segment.status.value


def test_pickers_keep_builtin_then_user_models_then_load_file(
    qtbot, make_napari_viewer, tmp_path, untrained_model
) -> None:
    """Issue 22: loading a copy of the built-in model's file neither hides the built-in
    entry nor puts "load file..." first; user models sit between them."""
    import shutil
    from pathlib import Path

    import napari_unet_nuclei
    from napari_unet_nuclei._napari.model_picker import LOAD_FILE

    viewer = make_napari_viewer()
    segment = dock(viewer, "Segment")
    copy = tmp_path / "my-copy.pt"
    shutil.copy(Path(napari_unet_nuclei.__file__).parent / "models" / "fluo-nuclei.pt", copy)
    assert segment.model.load(copy) == "fluo-nuclei (2)"
    segment.registry.add(untrained_model)
    labels = [segment.model.native.itemText(i) for i in range(segment.model.native.count())]
    assert labels == ["fluo-nuclei (built-in)", "fluo-nuclei (2)", "tiny", str(LOAD_FILE)]
    assert segment.model.model_name == "tiny"  # the newest model is followed
    assert segment.registry.is_builtin("fluo-nuclei")
