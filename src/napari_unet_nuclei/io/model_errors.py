"""The error every model reader raises (model files and built-in model names)."""

from __future__ import annotations

__all__ = ["ModelFileError"]


class ModelFileError(ValueError):
    """A file (or a built-in model name) could not be read as a napari-unet-nuclei model."""
