"""napari-unet-nuclei: train, apply and check a U-Net for nuclei segmentation.

The package root holds one entry per job: load a model, train, predict, segment, evaluate,
export (with ``iter_`` twins that yield progress events); the rest lives in its module.
torch and the engine modules are imported on first use, and nothing here imports Qt or
napari.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: One entry per job (each with its ``iter_`` twin where it streams progress events);
#: everything else is reachable from its module (see docs/python-api.md).
_LAZY = {
    # models
    "load_model": "io.model_io",
    "save_model": "io.model_io",
    "NucleiModel": "nn.model",
    # train
    "TrainingConfig": "train.training",
    "train_model": "train.training",
    "iter_train": "train.training",
    # predict: nucleus probabilities
    "predict": "prediction.inference",
    "iter_predict": "prediction.inference",
    # segment: nuclei as objects, one image or many files
    "predict_instances": "workflows.segmentation",
    "iter_predict_instances": "workflows.segmentation",
    "segment_files": "workflows.batch",
    "SegmentOptions": "workflows.segment_options",
    "measure_nuclei": "prediction.measurements",
    # evaluate
    "evaluate_model": "workflows.evaluate",
    "iter_evaluate_model": "workflows.evaluate",
    # export to other tools' formats
    "export_model": "workflows.export",
    # data
    "load_dataset": "io.datasets",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(__all__)
