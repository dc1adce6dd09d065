"""napari-unet-nuclei: train, apply and check a U-Net for nuclei segmentation.

The public engine API is importable from the package root; torch and the engine modules
are imported on first use, and nothing here imports Qt or napari.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "NucleiModel": "model",
    "create_model": "model",
    "UNetConfig": "network",
    "NormalizationConfig": "normalization",
    "load_model": "model_io",
    "save_model": "model_io",
    "ModelFileError": "model_io",
    "predict": "inference",
    "predict_logits": "inference",
    "iter_predict": "inference",
    "TrainingConfig": "training",
    "AugmentationConfig": "augmentation",
    "train": "training",
    "train_model": "training",
    "confusion_counts": "metrics",
    "segmentation_scores": "metrics",
    "precision_recall_curve": "metrics",
    "average_precision": "metrics",
    "error_map": "metrics",
    "load_dataset": "datasets",
    "LabelledImage": "datasets",
    "make_synthetic_nuclei": "sample_data",
    "segment_files": "batch",
    "SegmentOptions": "batch",
    "discover_inputs": "batch",
    "iter_predict_lazy": "lazy",
    "iter_segment_to_zarr": "workflows.segment",
    "iter_segment": "workflows.segment",
    "SegmentOutputs": "workflows.segment",
    "InstanceConfig": "instances",
    "instances_from_probabilities": "instances",
    "label_stack": "instances",
    "instances_from_maps": "instances",
    "predict_instances": "segmentation",
    "iter_predict_instances": "segmentation",
    "stitch_slices": "stitching",
    "measure_nuclei": "measurements",
    "write_measurements_csv": "measurements",
    "match_objects": "object_metrics",
    "object_scores": "object_metrics",
    "dsb_average_precision": "object_metrics",
    "object_error_map": "object_metrics",
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
