"""Load torch and the engine in a background thread as soon as a widget opens.

Loading torch's shared libraries, and the hundreds of modules torch imports lazily on the
first optimiser step, hold Python's GIL for up to half a second at a time. Done on the
GUI thread it freezes napari for seconds; done by the first training worker it makes the
window stutter just after the user pressed Start. A widget therefore starts, once per
process, a background thread that imports the engine and runs one tiny training step and
one tiny prediction on random pixels, while nothing else is running; it imports the
plots' matplotlib first.
"""

from __future__ import annotations

import threading

from napari_unet_nuclei._napari._threads import gui_friendly_threads

__all__ = ["engine_ready", "wait_for_warm_up", "warm_up_engine"]

_ready = threading.Event()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def _exercise_engine() -> None:
    try:
        import numpy as np

        with gui_friendly_threads():
            # The plots' matplotlib (0.9 s of imports) first: a dock opened next (Train,
            # Evaluate) then finds it loaded instead of importing it on the GUI thread.
            import matplotlib.backends.backend_qtagg
            import matplotlib.figure  # noqa: F401

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
            precision_recall_curve(predict(model, image, device="cpu"), labels)
    except Exception:  # the first real job reports any problem with one clear sentence
        pass
    finally:
        _ready.set()


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
    """Block until a started warm-up has finished (called by jobs, in their worker thread).

    The warm-up trains a tiny model, and the engine seeds torch's global random generator;
    waiting keeps a real run's weights reproducible.
    """
    if _thread is not None:
        _ready.wait(timeout)
