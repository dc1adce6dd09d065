"""The docks fit a 1366 x 768 laptop screen and keep the image canvas wide.

The viewer window is shown at 1366 x 768 under xvfb; the docks are added through the
manifest, one at a time and then all four; every status line gets a 300-character sentence.
"""

from __future__ import annotations

import pytest

PLUGIN = "napari-unet-nuclei"
DOCKS = ("Train", "Segment", "Evaluate", "Annotate next")
LAPTOP = (1366, 768)
LONG_SENTENCE = (
    "Segmentation failed: the image layer '/home/user/data/2026-11-29 experiment/"
    "plate_07_well_B3_field_012_channel_DAPI_z05.tif' has 4 channels in its last axis "
    "and no grey channel to use; pick one channel with napari's split-channels command "
    "or give the model a single-channel image, then press Segment again."
)
#: Every widget of a dock that shows a sentence the user needs to read.
TEXT_LINES = ("status", "frames_info")


def _status_lines(widget) -> list:
    lines = [getattr(widget, name) for name in TEXT_LINES if hasattr(widget, name)]
    projects = getattr(widget, "projects", None)
    if projects is not None:
        lines += [projects.panel.folder_label, projects.panel.summary]
    return lines


def _laptop_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*LAPTOP)
    qtbot.waitUntil(lambda: window.width() == LAPTOP[0], timeout=5_000)
    return viewer, window


def _settle(qtbot) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    qtbot.wait(50)


def _assert_fits(viewer, window, docks) -> None:
    canvas = viewer.window._qt_viewer.canvas.native
    assert window.width() <= LAPTOP[0] and window.height() <= LAPTOP[1], (
        f"the window grew to {window.width()} x {window.height()}"
    )
    assert canvas.width() >= window.width() / 2, (
        f"the canvas is {canvas.width()} px wide in a {window.width()} px window"
    )
    for name, dock in docks.items():
        hint = dock.minimumSizeHint()
        assert hint.height() < 600, f"{name}: minimum height {hint.height()} px"
        assert hint.width() <= 450, f"{name}: minimum width {hint.width()} px"


@pytest.mark.parametrize("name", DOCKS)
def test_each_dock_fits_a_laptop_screen(make_napari_viewer, qtbot, name: str) -> None:
    viewer, window = _laptop_viewer(make_napari_viewer, qtbot)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    _settle(qtbot)
    _assert_fits(viewer, window, {name: dock})
    canvas_width = viewer.window._qt_viewer.canvas.native.width()
    for line in _status_lines(widget):
        line.value = LONG_SENTENCE
    _settle(qtbot)
    _assert_fits(viewer, window, {name: dock})
    assert viewer.window._qt_viewer.canvas.native.width() == canvas_width, (
        "a long sentence changed the canvas width"
    )
    for line in _status_lines(widget):
        assert line.native.toolTip() == LONG_SENTENCE  # the whole text stays readable
        assert line.native.width() <= dock.width()


def test_all_four_docks_fit_a_laptop_screen(make_napari_viewer, qtbot) -> None:
    viewer, window = _laptop_viewer(make_napari_viewer, qtbot)
    docks, widgets = {}, {}
    for name in DOCKS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    _settle(qtbot)
    _assert_fits(viewer, window, docks)
    for widget in widgets.values():
        for line in _status_lines(widget):
            line.value = LONG_SENTENCE
    # Opening the collapsed sections must not grow the window either.
    widgets["Train"].settings.advanced_section.expand(animate=False)
    widgets["Train"].projects.section.expand(animate=False)
    _settle(qtbot)
    _assert_fits(viewer, window, docks)


def test_a_plot_pops_out_to_its_own_window_and_comes_back(make_napari_viewer, qtbot) -> None:
    viewer, window = _laptop_viewer(make_napari_viewer, qtbot)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    plot = widget.pr_plot
    layout = widget.body.native.layout()
    index = layout.indexOf(plot)
    _settle(qtbot)
    docked_height = plot.canvas.height()
    popped = plot.pop_out()
    _settle(qtbot)
    assert popped is not None and popped.isVisible()
    assert layout.indexOf(plot) == -1 and plot.window() is popped
    assert plot.canvas.height() > docked_height
    popped.close()
    _settle(qtbot)
    assert plot.window_ is None and layout.indexOf(plot) == index
    assert plot.window() is window


def test_long_layer_names_elide_in_the_middle_with_the_full_name_on_hover(
    make_napari_viewer, qtbot
) -> None:
    """Issue 22: "Ganglioneuroblastoma_3 g" hid which layer was picked; the middle goes."""
    import numpy as np
    from qtpy.QtGui import QImage

    from napari_unet_nuclei._napari._dock_layout import elided_middle

    viewer, _ = _laptop_viewer(make_napari_viewer, qtbot)
    long_name = "Ganglioneuroblastoma_3 nuclei corrected by hand (second round)"
    viewer.add_image(np.zeros((32, 32), np.uint8), name=long_name)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _settle(qtbot)
    combo = segment.image_layer.native
    assert combo.currentText() == long_name and combo.toolTip() == long_name
    shown = elided_middle(combo.fontMetrics(), long_name, 120)
    assert shown.startswith("Gang") and shown.endswith(")") and "\u2026" in shown
    picture = QImage(combo.size(), QImage.Format.Format_ARGB32)
    combo.render(picture)  # paints through the eliding filter without error
    assert not picture.isNull()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="short")
    segment.image_layer.value = viewer.layers["short"]
    assert combo.toolTip() == "short"
