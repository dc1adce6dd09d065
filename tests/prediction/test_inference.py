"""Tiled inference: any size, stacks, blending, cancel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_unet_nuclei.events import FrameDone, TileDone
from napari_unet_nuclei.prediction.inference import (
    InferenceCancelled,
    iter_predict,
    predict,
    predict_logits,
    threshold_mask,
)
from napari_unet_nuclei.prediction.tiling import tile_positions


@pytest.fixture(scope="module")
def model(untrained_model):
    return untrained_model


@pytest.mark.parametrize("shape", [(127, 301), (7, 9), (128, 128), (3, 40, 50), (2, 2, 33, 17)])
def test_shapes_and_dtype(model, shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    probabilities = predict(model, image)
    assert probabilities.shape == shape
    assert probabilities.dtype == np.float32
    assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_tile_positions_cover_axis() -> None:
    assert tile_positions(100, 128, 16) == [0]
    assert all(p % 8 == 0 for p in tile_positions(1000, 256, 64, align=8))
    positions = tile_positions(1000, 256, 64)
    assert positions[0] == 0 and positions[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in itertools.pairwise(positions))


def test_tiled_equals_whole_image_on_real_data(model, kromp_root) -> None:
    import tifffile

    image = tifffile.imread(kromp_root / "images" / "Ganglioneuroblastoma_0.tif")[:300, :420]
    whole = predict_logits(model, image, tile_size=1024)
    tiled = predict_logits(model, image, tile_size=128, overlap=48)
    # Tiles are aligned to the pooling grid and the receptive field (~20 px) is inside
    # the overlap, so blended tiles agree with one pass except for faint tile-edge effects.
    assert whole.shape == tiled.shape == image.shape
    assert np.abs(whole - tiled).mean() < 0.01 * whole.std()
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.995


def test_stack_frames_are_independent(model, lab_arrays) -> None:
    stack = lab_arrays[0][:3, 0]
    together = predict(model, stack)
    alone = predict(model, stack[1])
    np.testing.assert_allclose(together[1], alone, atol=1e-5)


def test_progress_events_and_out_array(model) -> None:
    image = np.random.default_rng(1).random((2, 300, 200)).astype(np.float32)
    out = np.full(image.shape, -1, np.float32)
    events = []
    result = predict(
        model, image, tile_size=128, overlap=16, batch_size=2, out=out, progress=events.append
    )
    assert result is out and (out >= 0).all()
    frames = [e for e in events if isinstance(e, FrameDone)]
    tiles = [e for e in events if isinstance(e, TileDone)]
    assert [e.frame for e in frames] == [0, 1]
    assert tiles[-1].tiles_done == tiles[-1].n_tiles == 6  # 3 rows x 2 columns of tiles


def test_cancel_between_tiles(model) -> None:
    image = np.zeros((4, 256, 256), np.float32)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    generator = iter_predict(model, image, tile_size=128, should_stop=stop)
    with pytest.raises(InferenceCancelled):
        for _ in generator:
            pass
    assert len(calls) == 1


def test_threshold_mask() -> None:
    mask = threshold_mask(np.array([[0.2, 0.5], [0.7, 0.49]], np.float32), 0.5)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 1], [1, 0]]


def test_bad_input_is_explained(model) -> None:
    with pytest.raises(ValueError, match="2-D image or a stack"):
        predict(model, np.zeros(5))
    with pytest.raises(ValueError, match="Output array shape"):
        predict(model, np.zeros((8, 8)), out=np.zeros((4, 4), np.float32))


def test_one_overlap_rule_for_every_tile_size(model, kromp_root) -> None:
    """Docks, command line and API share ``default_overlap``: an eighth of the tile."""
    import tifffile

    from napari_unet_nuclei.prediction.tiling import default_overlap

    assert [default_overlap(t) for t in (32, 64, 128, 512, 2048)] == [8, 8, 16, 64, 64]
    image = tifffile.imread(kromp_root / "images" / "normal_16.tif")[:200, :300]
    np.testing.assert_array_equal(
        predict(model, image, tile_size=128), predict(model, image, tile_size=128, overlap=16)
    )
