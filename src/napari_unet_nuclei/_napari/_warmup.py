"""Load torch and the engine in a background thread as soon as a widget opens.

Loading torch's shared libraries, and the hundreds of modules torch imports lazily on the
first optimiser step, hold Python's GIL for up to half a second at a time. Done on the
GUI thread it freezes napari for seconds; done by the first training worker it makes the
window stutter just after the user pressed Start. A widget therefore starts, once per
process, a background thread that imports the engine and runs one tiny training step and
one tiny prediction on random pixels, while nothing else is running.

napari's first image and labels layers also pay one-time costs on the GUI thread (about
a second here: pint's unit registry, the pandas import for the features table, the label
colours' skimage import, vispy's dash patterns). :func:`warm_up_layer_display` pays them in
the calling thread; the samples call it in their background thread, before they return.
"""

from __future__ import annotations

import threading

from napari_unet_nuclei._napari._threads import gui_friendly_threads

__all__ = [
    "engine_ready",
    "wait_for_warm_up",
    "warm_up_engine",
    "warm_up_engine_soon",
    "warm_up_layer_display",
]

#: How long after a dock opens the warm-up starts (the dock is drawn first).
WARM_UP_DELAY_MS = 300

_ready = threading.Event()
_lock = threading.Lock()
_thread: threading.Thread | None = None
_layer_display_warm = threading.Event()


def _exercise_engine() -> None:
    try:
        import numpy as np

        with gui_friendly_threads():
            from napari_unet_nuclei.evaluate.metrics import precision_recall_curve
            from napari_unet_nuclei.prediction.inference import predict
            from napari_unet_nuclei.train.augmentation import AugmentationConfig
            from napari_unet_nuclei.train.training import TrainingConfig, train_model

            rng = np.random.default_rng(0)
            image = rng.random((32, 32), np.float32)
            labels = (image > 0.5).astype(np.uint8)
            config = TrainingConfig(
                features=2,
                depth=1,
                epochs=1,
                steps_per_epoch=1,
                batch_size=1,
                patch_size=16,
                augmentation=AugmentationConfig(),
                validation_fraction=0.0,
                device="cpu",
            )
            model = train_model([image], [labels], config)
            precision_recall_curve(predict(model, image, device="cpu", backend="torch"), labels)
            # The built-in model on this CPU's default runtime: its ONNX graph comes from
            # the cache folder after the first time on a machine (see nn.acceleration).
            from napari_unet_nuclei.io.model_io import load_model

            predict(load_model("fluo-nuclei"), rng.random((64, 64), np.float32))
    except Exception:  # the first real job reports any problem with one clear sentence
        pass
    finally:
        _ready.set()


def warm_up_engine_soon(delay_ms: int = WARM_UP_DELAY_MS) -> None:
    """Start :func:`warm_up_engine` ``delay_ms`` after the GUI thread is free again: a dock
    being built does not compete with the warm-up's imports for Python's lock."""
    from qtpy.QtCore import QTimer

    if _thread is None:
        QTimer.singleShot(delay_ms, warm_up_engine)


def warm_up_engine() -> None:
    """Start warming the engine up in a background thread (once per process)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_exercise_engine, name="napari-unet-nuclei-warm-up")
            _thread.start()


def engine_ready() -> bool:
    """Whether the background warm-up has finished."""
    return _ready.is_set()


def wait_for_warm_up(timeout: float = 120.0) -> None:
    """Start the warm-up if a dock only scheduled it, and block until it has finished
    (called by jobs, in their worker thread).

    The warm-up trains a tiny model, and the engine seeds torch's global random generator;
    waiting keeps a real run's weights reproducible.
    """
    warm_up_engine()
    _ready.wait(timeout)


def warm_up_layer_display() -> None:
    """Pay napari's one-time costs of a first image and labels layer in this thread.

    Builds a tiny image and labels layer model (never shown) and vispy's line dash patterns
    (cached by vispy, used by the labels layer's polygon overlay), so that napari adding the
    real layers on the GUI thread afterwards costs only the layers themselves. Best effort:
    if napari or vispy change, the layers are added as before, only slower.
    """
    if _layer_display_warm.is_set():
        return
    try:
        import numpy as np
        from napari.layers import Image, Labels
        from vispy.visuals.line.dash_atlas import DashAtlas

        Image(np.zeros((8, 8), np.uint16))
        Labels(np.zeros((8, 8), np.int32))
        DashAtlas()
    except Exception:  # a warm-up only: the real layers still work without it
        return
    _layer_display_warm.set()
