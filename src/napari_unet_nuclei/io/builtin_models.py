"""Models that ship inside the package, loadable by name without a download.

Each built-in model is a ``.pt`` file in ``napari_unet_nuclei/models/`` (plain tensors and
data, read like any model file) whose SHA-256 is written here: a changed byte is refused
before the file is read. The model card of each lies in ``docs/models/``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from napari_unet_nuclei.io.model_errors import ModelFileError

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "BuiltinModel",
    "builtin_model_path",
    "is_builtin_name",
]


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped with the package."""

    name: str
    filename: str
    sha256: str
    description: str
    threshold: float = 0.5  # the model's default threshold (pickers start with it)
    #: The diameter (px) of its training nuclei (``nucleus_size.diameter_of_masks``), for
    #: files written before models stored it.
    nucleus_diameter: float | None = None


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="fluo-nuclei",
            filename="fluo-nuclei.pt",
            sha256="9e5e64215c0c6297cbea5da59381e06d4b3c19a41d14b1730c59c5896ab36da9",
            description=(
                "generalist for fluorescence nuclei (DAPI/Hoechst): Kromp 2020, DSB 2018 and "
                "BBBC039 training images; nucleus probability, centre and boundary maps"
            ),
            threshold=0.66,
            nucleus_diameter=26.0,
        ),
    )
}
DEFAULT_MODEL = "fluo-nuclei"

MODELS_FOLDER = Path(__file__).resolve().parents[1] / "models"


def is_builtin_name(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a built-in model (a name, not a path to a file)."""
    return isinstance(source, str) and source in BUILTIN_MODELS


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_model_path(name: str) -> Path:
    """The checked file of the built-in model ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`BUILTIN_MODELS`, e.g. ``"fluo-nuclei"``.

    Returns
    -------
    pathlib.Path
        The model file inside the installed package.

    Raises
    ------
    ModelFileError
        For an unknown name, a missing file, or a file whose SHA-256 differs from the
        one recorded here (damaged or modified installation).
    """
    entry = BUILTIN_MODELS.get(name)
    if entry is None:
        raise ModelFileError(
            f"{name!r} is neither a model file nor a built-in model; built-in models: "
            f"{', '.join(BUILTIN_MODELS)}."
        )
    path = MODELS_FOLDER / entry.filename
    if not path.is_file():
        raise ModelFileError(
            f"The built-in model {name!r} is missing from this installation ({path}); "
            "reinstall napari-unet-nuclei."
        )
    actual = _file_sha256(path)
    if actual != entry.sha256:
        raise ModelFileError(
            f"The built-in model {name!r} ({path}) is damaged or was modified: its SHA-256 "
            f"{actual[:12]}... is not the one shipped ({entry.sha256[:12]}...); reinstall "
            "napari-unet-nuclei."
        )
    return path


def builtin_name_of(path: str | os.PathLike) -> str | None:
    """The built-in model whose shipped file ``path`` is, or None."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    for entry in BUILTIN_MODELS.values():
        if resolved == (MODELS_FOLDER / entry.filename).resolve():
            return entry.name
    return None
