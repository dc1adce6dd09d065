"""The one segment path (workflows.segment) on real Kromp images: both ways of reading
frames agree, nuclei and measurements match the engine's own calls, a stop leaves no
half-written frame, and a z-stack gives 3-D objects."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import drain
from napari_unet_nuclei.events import TileDone
from napari_unet_nuclei.prediction.inference import InferenceCancelled, predict
from napari_unet_nuclei.prediction.instances import InstanceConfig
from napari_unet_nuclei.prediction.measurements import measure_nuclei
from napari_unet_nuclei.workflows.frame_writer import FrameSegmented
from napari_unet_nuclei.workflows.segment import SegmentOutputs, iter_segment, read_mode
from napari_unet_nuclei.workflows.segmentation import default_instance_config, predict_instances


@pytest.fixture(scope="module")
def builtin():
    from napari_unet_nuclei.io.model_io import load_model

    return load_model("fluo-nuclei")


@pytest.fixture(scope="module")
def stack(kromp_root) -> np.ndarray:
    """Two 256 x 320 crops of real Kromp images (dense tissue and cultured cells)."""
    names = ("Ganglioneuroblastoma_7", "normal_34")
    frames = [tifffile.imread(kromp_root / "images" / f"{name}.tif")[:256, :320] for name in names]
    return np.stack([f if f.ndim == 2 else f[..., 0] for f in frames]).astype(np.uint16)


def test_frames_and_bands_agree_and_measurements_match(builtin, stack, one_torch_thread) -> None:
    config = replace_seeds(default_instance_config(builtin), "distance")
    results = {}
    for read in ("frames", "bands"):
        outputs = SegmentOutputs(
            probabilities=np.zeros(stack.shape, np.float32),
            mask=np.zeros(stack.shape, np.uint8),
            labels=np.zeros(stack.shape, np.int32),
        )
        events, summary = drain(
            iter_segment(
                builtin, stack, outputs, instances=config, measure=True, read=read, tile_size=128
            )
        )
        frames = [e for e in events if isinstance(e, FrameSegmented)]
        assert [e.index for e in frames] == [(0,), (1,)]
        assert any(isinstance(e, TileDone) for e in events)
        assert summary.read == read
        assert (
            summary.nuclei == sum(e.nuclei for e in frames) == len(np.unique(outputs.labels)) - 1
        )
        assert summary.foreground == int(np.count_nonzero(outputs.labels))
        # ids unique in the stack, frame 1 continues after frame 0
        assert outputs.labels[1][outputs.labels[1] > 0].min() == frames[0].nuclei + 1
        # measurements equal the engine's measure_nuclei on the written labels
        expected = measure_nuclei(outputs.labels, stack)
        assert list(summary.table) == list(expected)
        for name in expected:
            np.testing.assert_allclose(summary.table[name], expected[name], rtol=1e-6)
        np.testing.assert_array_equal(
            outputs.mask, (outputs.probabilities >= builtin.threshold).astype(np.uint8)
        )
        results[read] = outputs
    np.testing.assert_allclose(
        results["frames"].probabilities, results["bands"].probabilities, atol=1e-4
    )
    np.testing.assert_allclose(
        results["frames"].probabilities,
        predict(builtin, stack, tile_size=128),
        atol=1e-5,
    )
    agreement = np.mean(results["frames"].mask == results["bands"].mask)
    assert agreement > 0.999
    assert summary.nuclei > 50  # 78 nuclei in the two crops (fluo-nuclei, distance seeds)


def replace_seeds(config: InstanceConfig, seeds: str) -> InstanceConfig:
    from dataclasses import replace

    return replace(config, seeds=seeds)


def test_object_maps_are_used_and_kept_when_frames_are_read_whole(builtin, stack) -> None:
    config = replace_seeds(default_instance_config(builtin), "centre")
    outputs = SegmentOutputs(
        labels=np.zeros(stack.shape, np.int32),
        maps={"centre": np.zeros(stack.shape, np.float32)},
    )
    _, summary = drain(iter_segment(builtin, stack, outputs, instances=config, tile_size=256))
    assert outputs.maps["centre"].min() >= 0.0 and outputs.maps["centre"].max() <= 1.0
    assert outputs.maps["centre"].max() > 0.5
    expected = predict_instances(builtin, stack, instance_config=config, tile_size=256)
    np.testing.assert_array_equal(outputs.labels, expected)
    assert summary.nuclei == int(expected.max())
    with pytest.raises(ValueError, match="frames are read whole"):
        drain(iter_segment(builtin, stack, outputs, instances=config, read="bands"))


def test_mask_only_nuclei_are_connected_parts(builtin, stack) -> None:
    from scipy import ndimage as ndi

    outputs = SegmentOutputs(mask=np.zeros(stack.shape, np.uint8))
    _, summary = drain(iter_segment(builtin, stack, outputs, threshold=0.5, tile_size=256))
    expected = sum(
        ndi.label(frame > 0, structure=np.ones((3, 3), bool))[1] for frame in outputs.mask
    )
    assert summary.nuclei == expected > 50
    assert summary.foreground == int(outputs.mask.sum())
    assert summary.table is None


@pytest.mark.parametrize("read", ["frames", "bands"])
def test_a_stop_leaves_no_half_written_frame(builtin, stack, read) -> None:
    outputs = SegmentOutputs(
        probabilities=np.full(stack.shape, -1, np.float32),
        labels=np.full(stack.shape, -1, np.int32),
    )
    tiles = []

    def stop_in_second_frame() -> bool:
        return any(t.frame == 1 for t in tiles)

    generator = iter_segment(
        builtin,
        stack,
        outputs,
        instances=default_instance_config(builtin),
        read=read,
        tile_size=128,
        should_stop=stop_in_second_frame,
    )
    with pytest.raises(InferenceCancelled):
        for event in generator:
            if isinstance(event, TileDone):
                tiles.append(event)
    assert (outputs.probabilities[0] >= 0).all() and outputs.labels[0].max() > 0
    # frame 1: untouched when read whole (written only once finished), zeroed when banded
    second = outputs.probabilities[1]
    assert (second == -1).all() if read == "frames" else (second == 0).all()


def test_z_stack_gives_3d_objects_with_volumes(builtin, stack) -> None:
    volume = np.stack([stack[1]] * 3)  # the same nuclei in three slices
    outputs = SegmentOutputs(labels=np.zeros(volume.shape, np.int32))
    _, summary = drain(
        iter_segment(
            builtin,
            volume,
            outputs,
            instances=default_instance_config(builtin),
            stack_axis="z",
            measure=True,
            tile_size=128,
        )
    )
    labels = outputs.labels
    assert summary.nuclei == len(np.unique(labels[0])) - 1 > 5
    for z in (1, 2):
        np.testing.assert_array_equal(labels[z], labels[0])  # one id through the slices
    assert "volume_voxels" in summary.table and len(summary.table["label"]) == summary.nuclei


def test_read_mode_rule() -> None:
    import dask.array as da

    small = np.zeros((2, 64, 64), np.float32)
    assert read_mode(small, nuclei=False) == "frames"
    lazy = da.zeros((2, 64, 64), chunks=(1, 64, 64))
    assert read_mode(lazy, nuclei=False) == "bands"
    assert read_mode(lazy, nuclei=True) == "frames"
    huge = da.zeros((1, 40_000, 40_000), chunks=(1, 4096, 4096))
    assert read_mode(huge, nuclei=True) == "bands"
    with pytest.raises(ValueError, match="read must be"):
        read_mode(small, nuclei=False, read="rows")
