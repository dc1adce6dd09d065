"""Annotate next widget on the lab's real images: rank, table, jump, tile outlines, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import wait_done

pytestmark = pytest.mark.gui

PLUGIN = "napari-unet-nuclei"
N_FRAMES = 8


@pytest.fixture(scope="module")
def tiny_model(lab_tiny_model):
    return lab_tiny_model


@pytest.fixture
def notifications(monkeypatch) -> list[str]:
    """Messages passed to napari's show_error."""
    from napari.utils import notifications as module

    shown: list[str] = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def open_widget(viewer, model=None):
    """The widget through the manifest, with ``model`` in the session."""
    from napari_unet_nuclei._napari.model_registry import registry_for

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate next")
    if model is not None:
        registry_for(viewer).add(model, "tiny")
        assert widget.model.model_name == "tiny"
    return widget


def click_row(qtbot, table, row: int) -> None:
    """A real mouse click on the middle cell of ``row``."""
    from qtpy.QtCore import Qt

    table.scrollToItem(table.item(row, 1))
    rect = table.visualItemRect(table.item(row, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_rank_frames_fills_the_table_and_jumps(
    qtbot, make_napari_viewer, lab_arrays, tiny_model
) -> None:
    x, y, _ = lab_arrays
    viewer = make_napari_viewer()
    image = viewer.add_image(x[:N_FRAMES, 0], name="lab")
    annotated = np.zeros((N_FRAMES, 128, 128), np.int32)
    annotated[[1, 3]] = y[[1, 3], 0]
    labels = viewer.add_labels(annotated, name="lab labels")
    widget = open_widget(viewer, tiny_model)
    widget.image_layer.value = image
    widget.labels_layer.value = labels
    widget.frames_button.native.click()
    assert widget.running
    wait_done(qtbot, widget)

    # Annotated frames 1 and 3 are left out; the others are ranked, each once.
    frames = [entry.frame[0] for entry in widget.entries]
    assert sorted(frames) == [0, 2, 4, 5, 6, 7]
    assert [entry.rank for entry in widget.entries] == list(range(1, 7))
    assert all(0.0 <= entry.score <= 1.0 for entry in widget.entries)
    table = widget.table
    assert table.rowCount() == 6
    assert table.item(0, 0).text() == "1"
    assert table.item(2, 1).text() == f"frame {frames[2]}"
    assert float(table.item(2, 2).text()) == pytest.approx(widget.entries[2].score, abs=1e-4)
    assert "left out" in widget.status.value

    for row in (2, 4):
        click_row(qtbot, table, row)
        qtbot.waitUntil(lambda row=row: viewer.dims.current_step[0] == frames[row], timeout=5000)
    # Nothing of the user's was changed, and no layer was added in frames mode.
    assert [layer.name for layer in viewer.layers] == ["lab", "lab labels"]
    np.testing.assert_array_equal(labels.data[[1, 3]], y[[1, 3], 0])


def test_rank_tiles_outlines_the_top_tiles_and_zooms(
    qtbot, make_napari_viewer, lab_arrays, tiny_model
) -> None:
    from napari_unet_nuclei._napari._layers import OWNER_KEY
    from napari_unet_nuclei._napari.annotate_next_widget import viewer_camera

    x, _, _ = lab_arrays
    mosaic = np.block([[x[0, 0], x[1, 0]], [x[2, 0], x[3, 0]]])
    viewer = make_napari_viewer()
    image = viewer.add_image(mosaic, name="mosaic")
    widget = open_widget(viewer, tiny_model)
    widget.image_layer.value = image
    widget.tile.value = 64
    widget.top_tiles.value = 5
    widget.tiles_button.native.click()
    wait_done(qtbot, widget)

    assert len(widget.entries) == 16 and widget.table.rowCount() == 16
    assert {entry.tile[2:] for entry in widget.entries} == {(64, 64)}
    scores = [entry.score for entry in widget.entries]
    assert scores == sorted(scores, reverse=True)
    shapes = [layer for layer in viewer.layers if type(layer).__name__ == "Shapes"]
    assert len(shapes) == 1
    outline = shapes[0]
    assert outline.metadata[OWNER_KEY]["role"] == "annotate next tiles"
    assert outline.metadata[OWNER_KEY]["source"] == "mosaic"
    assert len(outline.data) == 5 and set(outline.shape_type) == {"rectangle"}
    y0, x0, h, w = widget.entries[0].tile
    np.testing.assert_allclose(outline.data[0].min(axis=0), [y0, x0])
    np.testing.assert_allclose(outline.data[0].max(axis=0), [y0 + h, x0 + w])
    assert list(outline.features["rank"]) == [1, 2, 3, 4, 5]

    camera = viewer_camera(viewer)
    viewer.reset_view()
    zoom_all = camera.zoom
    click_row(qtbot, widget.table, 0)
    qtbot.waitUntil(
        lambda: np.allclose(camera.center[-2:], (y0 + h / 2, x0 + w / 2)), timeout=5000
    )
    assert camera.zoom > 2.5 * zoom_all  # a 64-pixel tile of a 256-pixel image

    # Ranking again replaces the plugin's outline layer instead of adding another one.
    widget.top_tiles.value = 3
    widget.tiles_button.native.click()
    wait_done(qtbot, widget)
    shapes = [layer for layer in viewer.layers if type(layer).__name__ == "Shapes"]
    assert len(shapes) == 1 and len(shapes[0].data) == 3
    np.testing.assert_array_equal(image.data, mosaic)


def test_cancel_keeps_the_previous_table(
    qtbot, make_napari_viewer, lab_arrays, tiny_model
) -> None:
    x, _, _ = lab_arrays
    viewer = make_napari_viewer()
    image = viewer.add_image(x[:60, 0], name="lab")
    widget = open_widget(viewer, tiny_model)
    widget.image_layer.value = image
    worker = widget.run("frames")
    assert worker is not None
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30_000)
    widget.cancel_button.native.click()
    wait_done(qtbot, widget)
    assert widget.status.value == "Ranking cancelled."
    assert widget.entries == [] and widget.table.rowCount() == 0
    assert widget.frames_button.enabled and not widget.cancel_button.enabled


def test_errors_are_one_sentence_notifications(
    qtbot, make_napari_viewer, lab_arrays, tiny_model, notifications
) -> None:
    x, y, _ = lab_arrays
    viewer = make_napari_viewer()
    image = viewer.add_image(x[:4, 0], name="lab")
    widget = open_widget(viewer)
    widget.image_layer.value = image
    assert widget.model.model_name == "fluo-nuclei"  # the built-in model, ready at start

    from napari_unet_nuclei._napari.model_registry import registry_for

    registry_for(viewer).add(tiny_model, "tiny")
    assert widget.model.model_name == "tiny"
    labels = viewer.add_labels(y[:2, 0].astype(np.int32), name="other labels")
    widget.labels_layer.value = labels
    assert widget.run("frames") is None
    assert "do not match the image 'lab'" in notifications[-1]
    assert widget.status.value == notifications[-1]
