"""The widgets' pure helpers: model registry, training frames, jobs (no viewer needed)."""

from __future__ import annotations

import threading

import numpy as np
import pytest


@pytest.fixture(scope="module")
def small_model(untrained_model):
    return untrained_model


def test_registry_names_are_unique_and_signal(small_model) -> None:
    from napari_unet_nuclei._napari.model_registry import ModelRegistry

    registry = ModelRegistry()
    changes: list[int] = []
    registry.models_changed.connect(lambda: changes.append(1))
    assert registry.add(small_model, "unet") == "unet"
    assert registry.add(small_model, "unet") == "unet (2)"
    assert registry.add(small_model) == "tiny"  # model.name
    assert registry.add(small_model) == "tiny (2)"
    assert registry.names() == ["unet", "unet (2)", "tiny", "tiny (2)"] and len(changes) == 4
    registry.remove("unet (2)")
    assert "unet (2)" not in registry and len(registry) == 3
    with pytest.raises(KeyError, match="No model named"):
        registry.get("missing")


def test_registry_threshold_is_clipped_and_signalled() -> None:
    from napari_unet_nuclei._napari.model_registry import ModelRegistry

    registry = ModelRegistry()
    seen: list[float] = []
    registry.threshold_changed.connect(seen.append)
    registry.set_threshold(0.5)  # unchanged: no signal
    registry.set_threshold(1.5)
    registry.set_threshold(0.2)
    assert seen == [0.99, 0.2] and registry.threshold == 0.2


def test_registry_adopts_the_threshold_of_each_new_model(small_model) -> None:
    from napari_unet_nuclei._napari.model_registry import ModelRegistry

    registry = ModelRegistry()
    seen: list[float] = []
    registry.threshold_changed.connect(seen.append)
    calibrated = small_model.copy()
    calibrated.threshold = 0.42
    registry.add(small_model)  # 0.5, as the registry starts: no signal
    registry.set_threshold(0.6)  # the user moves the slider
    registry.add(calibrated)
    assert registry.threshold == 0.42 and seen == [0.6, 0.42]


def test_registry_caches_probabilities_per_model_and_layer() -> None:
    from napari_unet_nuclei._napari.model_registry import CachedProbabilities, ModelRegistry

    class Layer:
        pass

    registry, first, second = ModelRegistry(), Layer(), Layer()
    cached = CachedProbabilities(np.zeros((2, 4, 4), np.float32), np.array([True, False]))
    registry.store_probabilities("m", first, cached)
    assert registry.cached_probabilities("m", first) is cached and not cached.complete
    assert registry.cached_probabilities("m", second) is None
    assert registry.cached_probabilities("other", first) is None
    registry.forget_layer(first)
    assert registry.cached_probabilities("m", first) is None


def test_registry_is_one_per_viewer() -> None:
    from napari_unet_nuclei._napari.model_registry import registry_for

    class Viewer:
        pass

    class Proxy:
        def __init__(self, wrapped):
            self.__wrapped__ = wrapped

    a, b = Viewer(), Viewer()
    assert registry_for(a) is registry_for(a) is registry_for(Proxy(a))
    assert registry_for(a) is not registry_for(b)


def test_training_data_uses_labelled_frames_only() -> None:
    from napari_unet_nuclei._napari._layers import training_data

    image = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    labels = np.zeros((4, 8, 8), np.int32)
    labels[1, 2:4, 2:4] = 1
    labels[3, 0, 0] = 5
    data = training_data(image, labels, name="stack")
    assert data.n_used == 2 and data.n_total == 4
    assert data.names == ["stack [1]", "stack [3]"]
    np.testing.assert_array_equal(data.images[1], image[3])
    assert data.describe() == "Training on 2 of 4 frames."
    labels[1, 2, 2] = 7  # the copies do not follow later painting
    assert data.labels[0][2, 2] == 1
    everything = training_data(image, labels, use_empty_frames=True, name="stack")
    assert everything.n_used == 4


def test_training_data_explains_bad_input() -> None:
    from napari_unet_nuclei._napari._layers import training_data

    with pytest.raises(ValueError, match="do not match"):
        training_data(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="No labelled frame"):
        training_data(np.zeros((2, 8, 8)), np.zeros((2, 8, 8), np.int32))


def test_error_sentence_is_one_line() -> None:
    from napari_unet_nuclei._napari._notify import error_sentence

    assert error_sentence(ValueError("Bad thing.\nDetails"), "Training") == (
        "Training failed: Bad thing."
    )
    assert error_sentence(KeyError("No model named 'x'."), "Segmentation") == (
        "Segmentation failed: No model named 'x'."
    )
    assert error_sentence(RuntimeError(), "Evaluation") == "Evaluation failed: RuntimeError"
    # The sentence comes first: folders are taken off paths, quoted (spaces and all) or not.
    error = ValueError("Model file '/tmp/run 1/bad_model.pt' holds text, not a model.")
    assert error_sentence(error, "Loading the model bad_model.pt") == (
        "Loading the model bad_model.pt failed: Model file 'bad_model.pt' holds text, not a model."
    )
    assert error_sentence(OSError("Cannot read /home/me/cells.tif: 1/2 read"), "Reading") == (
        "Reading failed: Cannot read cells.tif: 1/2 read"
    )


def test_a_stopped_training_yields_its_final_event_next(lab_npz) -> None:
    """After Stop, the steps still running are consumed unseen: the next event is the
    final one, with the best weights so far."""
    from napari_unet_nuclei._napari._jobs import until_stopped
    from napari_unet_nuclei.events import TrainingFinished, TrainingStep
    from napari_unet_nuclei.train.training import TrainingConfig, train

    data = np.load(lab_npz)
    images, labels = list(data["X"][:4, 0]), list(data["Y"][:4, 0])
    config = TrainingConfig(features=4, depth=2, epochs=3, steps_per_epoch=3, batch_size=2)
    stop = threading.Event()
    seen = []
    for event in until_stopped(train(images, labels, config, should_stop=stop.is_set), stop):
        seen.append(event)
        if isinstance(event, TrainingStep) and event.global_step == 2:
            stop.set()
    assert isinstance(seen[-2], TrainingStep) and seen[-2].global_step == 2
    assert isinstance(seen[-1], TrainingFinished) and seen[-1].reason == "cancelled"
    assert seen[-1].steps == 2


def test_jobs_turn_errors_into_one_sentence(small_model) -> None:
    from napari_unet_nuclei._napari._jobs import (
        JobFailed,
        SegmentResult,
        SegmentTask,
        segmentation_job,
    )
    from napari_unet_nuclei._napari._layers import TrainingFrames
    from napari_unet_nuclei._napari.round_job import round_job
    from napari_unet_nuclei.train.training import TrainingConfig

    stop = threading.Event()
    frames = TrainingFrames([np.zeros((8, 8))], [np.zeros((8, 9))], ["x"], 1)
    events = [
        e for e in round_job(frames, TrainingConfig(), stop=stop) if not hasattr(e, "n_layer")
    ]
    # The engine's notice about the empty labels, then the failure as one sentence.
    assert [type(e).__name__ for e in events] == ["Notice", "JobFailed"]
    assert "learn that everything is background" in events[0].message
    assert isinstance(events[1], JobFailed) and "shape" in events[1].message
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    results = [
        e
        for e in segmentation_job(small_model, [SegmentTask("x", image)], tile_size=64, stop=stop)
        if isinstance(e, SegmentResult)
    ]
    assert results[0].probabilities.shape == (3, 32, 32)


def test_jobs_yield_the_engines_notices_in_order_without_python_warnings() -> None:
    """A notice reaches the dock as an event before the event that followed it, also from
    a failing job, and never as a Python warning (whose process-wide state other threads
    swap)."""
    import warnings

    from napari_unet_nuclei._napari._jobs import JobFailed, guarded_job
    from napari_unet_nuclei.nn.normalization import ImageWarning
    from napari_unet_nuclei.notices import Notice, warn_user

    @guarded_job
    def job(stop: threading.Event):
        warn_user("first", ImageWarning)
        yield "step"
        warn_user("second", ImageWarning)
        raise ValueError("broken input")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        events = list(job(stop=threading.Event()))
    assert events == [
        Notice("first", ImageWarning),
        "step",
        Notice("second", ImageWarning),
        JobFailed("broken input"),
    ]


def test_evaluation_job_matches_the_engine() -> None:
    from napari_unet_nuclei._napari._jobs import evaluation_job
    from napari_unet_nuclei.evaluate.metrics import error_map, segmentation_scores

    rng = np.random.default_rng(1)
    truth = (rng.random((2, 16, 16)) > 0.6).astype(np.int32)
    probabilities = rng.random((2, 16, 16)).astype(np.float32)
    job = evaluation_job(
        truth, source="m", probabilities=probabilities, threshold=0.4, stop=threading.Event()
    )
    with pytest.raises(StopIteration) as done:
        next(job)
    result = done.value.value
    assert result.scores == segmentation_scores(probabilities >= 0.4, truth)
    np.testing.assert_array_equal(result.errors, error_map(probabilities >= 0.4, truth))
    assert len(result.frame_scores) == 2 and result.curve is not None


@pytest.mark.parametrize("stack_axis", ["frames", "z"])
def test_segment_progress_reaches_the_end_only_when_nuclei_are_split(
    kromp_root, stack_axis
) -> None:
    """Issue 22: the bar used to read 100 % while the nuclei were still being split."""
    import tifffile

    from napari_unet_nuclei._napari._jobs import SegmentProgress, SegmentTask
    from napari_unet_nuclei._napari._object_jobs import ObjectsResult, segment_objects_job
    from napari_unet_nuclei.io.model_io import load_model
    from napari_unet_nuclei.workflows.segmentation import default_instance_config

    model = load_model("fluo-nuclei")
    stack = tifffile.imread(kromp_root.parent / "nuclei3d" / "nuclei.tif")[24:30, :128, :128]
    task = SegmentTask("cells", stack, stack_axis=stack_axis)
    events = list(
        segment_objects_job(
            model, [task], instances=default_instance_config(model), stop=threading.Event()
        )
    )
    fractions = [e.fraction for e in events if isinstance(e, SegmentProgress)]
    assert fractions == sorted(fractions) and len(fractions) >= 6
    last_tiles = max(f for f in fractions[:-1])
    assert last_tiles < 1.0  # the last frame's tiles leave room for its nuclei
    assert fractions[-1] == pytest.approx(1.0 if stack_axis == "frames" else 0.9)
    assert isinstance(events[-1], ObjectsResult) and events[-1].labels.max() > 0
