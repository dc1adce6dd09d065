"""Reading a bioimage.io model package back into a model: a zip or folder whose
``rdf.yaml`` carries our configuration, its weights read without running code."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

from napari_unet_nuclei.io.model_io import FORMAT_NAME, ModelFileError, model_from_dict
from napari_unet_nuclei.nn.model import NucleiModel

__all__ = ["CONFIG_KEY", "BioimageioPackageError", "import_bioimageio"]

#: ``config`` key of our bioimage.io packages; its content identifies a package of ours.
CONFIG_KEY = "napari_unet_nuclei"
#: Largest member of a package we read into memory (weights of depth 5, F=64 are ~125 MB).
_MAX_MEMBER_BYTES = 1 << 30
#: Largest ``rdf.yaml`` we parse (ours are a few kB).
_MAX_RDF_BYTES = 16 << 20


class BioimageioPackageError(ValueError):
    """A bioimage.io package could not be imported as a napari-unet-nuclei model.

    A ``ValueError`` like :class:`~napari_unet_nuclei.io.model_io.ModelFileError` (which is not
    its base class, so that this module can be imported without torch).
    """


class _Package:
    """Read-only access to the files of a bioimage.io package (zip or folder)."""

    RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")

    def __init__(self, path: Path) -> None:
        self.source = str(path)
        self.archive: zipfile.ZipFile | None = None
        self.folder: Path | None = None
        from napari_unet_nuclei.io._file_checks import file_problem, one_line

        if path.is_dir():
            self.folder = path.resolve()
            names = [p.name for p in self.folder.iterdir() if p.is_file()]
        elif path.name in self.RDF_NAMES or path.name.endswith(".bioimageio.yaml"):
            self.folder = path.parent.resolve()
            names = [path.name]
        else:
            problem = file_problem(path)
            if problem:
                raise BioimageioPackageError(f"{path} is not a bioimage.io package: it {problem}.")
            try:
                self.archive = zipfile.ZipFile(path)
            except Exception as error:  # BadZipFile, OSError, ValueError...
                raise BioimageioPackageError(
                    f"{path} is not a bioimage.io package (not a zip file): {one_line(error)}."
                ) from error
            names = self.archive.namelist()
        rdf = [n for n in names if n in self.RDF_NAMES or n.endswith(".bioimageio.yaml")]
        if not rdf:
            self.close()
            raise BioimageioPackageError(
                f"{path} is not a bioimage.io package (no rdf.yaml or bioimageio.yaml)."
            )
        self.rdf_name = rdf[0]

    def read(self, name: str, max_bytes: int = _MAX_MEMBER_BYTES) -> bytes:
        """Return the bytes of the member ``name`` (a relative path inside the package),
        refusing members whose declared size exceeds ``max_bytes`` before reading them."""
        missing = BioimageioPackageError(f"{self.source} lacks the file {name!r} it refers to.")
        large = BioimageioPackageError(f"{self.source}: {name!r} is implausibly large.")
        if self.archive is not None:
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise missing from None
            if info.file_size > max_bytes:
                raise large
            return self.archive.read(info)
        assert self.folder is not None
        member = (self.folder / name).resolve()
        if self.folder not in member.parents or not member.is_file():
            raise missing
        if member.stat().st_size > max_bytes:
            raise large
        return member.read_bytes()

    def close(self) -> None:
        if self.archive is not None:
            self.archive.close()

    def __enter__(self) -> _Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_bioimageio(path: str | os.PathLike, map_location: str = "cpu") -> NucleiModel:
    """Read a bioimage.io package written by :func:`export_bioimageio` back as a model.

    Parameters
    ----------
    path : str or path-like
        The ``.zip`` package (or its unpacked folder, or its ``rdf.yaml``).
    map_location : str
        Device the weights are loaded to.

    Returns
    -------
    NucleiModel
        The model with its normalisation, threshold and training summary.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    BioimageioPackageError
        Not a bioimage.io package, a package from another tool, or a damaged one (a weights
        file whose SHA-256 differs from the description, or that holds anything other than
        tensors). Nothing from the package is run or unpickled.
    """
    from napari_unet_nuclei.io._file_checks import one_line

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"bioimage.io package not found: {path}")
    try:
        return _import_package(path, map_location)
    except BioimageioPackageError:
        raise
    except Exception as error:  # zipfile, zlib, yaml and torch raise many types
        raise BioimageioPackageError(
            f"{path} is not a readable bioimage.io package ({type(error).__name__}: "
            f"{one_line(error)})."
        ) from error


def _import_package(path: Path, map_location: str) -> NucleiModel:
    """The work of :func:`import_bioimageio`, which turns any failure into one sentence."""
    import pickle

    import torch
    import yaml

    from napari_unet_nuclei.io._file_checks import one_line, zip_problem

    with _Package(path) as package:
        try:
            rdf = yaml.safe_load(package.read(package.rdf_name, _MAX_RDF_BYTES))
        except yaml.YAMLError as error:
            raise BioimageioPackageError(
                f"{path}: {package.rdf_name} is not valid YAML: {one_line(error)}."
            ) from error
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise BioimageioPackageError(f"{path} is not a bioimage.io model description.")
        ours = (rdf.get("config") or {}).get(CONFIG_KEY)
        if not isinstance(ours, dict) or ours.get("format") != FORMAT_NAME:
            raise BioimageioPackageError(
                f"{path} is a bioimage.io model from another tool "
                f"({rdf.get('name', 'unnamed')!r}); napari-unet-nuclei imports only packages "
                "it exported. Run other models with bioimage.io tools (bioimageio.core, "
                "ilastik, deepImageJ...)."
            )
        entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise BioimageioPackageError(f"{path} has no pytorch_state_dict weights.")
        data = package.read(entry["source"])
    expected = entry.get("sha256")
    if not expected or hashlib.sha256(data).hexdigest() != expected:
        raise BioimageioPackageError(
            f"{path}: the weights file {entry['source']!r} does not match its SHA-256 in the "
            "description (damaged or modified package)."
        )
    problem = zip_problem(io.BytesIO(data)) if data[:4] == b"PK\x03\x04" else None
    if problem:
        raise BioimageioPackageError(
            f"{path} was refused: its weights file {entry['source']!r} {problem}."
        )
    try:
        with warnings.catch_warnings():
            # torch's note on pickle protocols, irrelevant to the user (the file is refused)
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise BioimageioPackageError(
            f"{path} was refused: its weights hold objects other than tensors, so they could "
            "run code when loaded."
        ) from error
    except Exception as error:  # torch's loader raises any type for damaged weights
        raise BioimageioPackageError(
            f"{path}: unreadable weights ({type(error).__name__}: {one_line(error)})."
        ) from error
    try:
        return model_from_dict({**ours, "state_dict": state}, source=str(path))
    except ModelFileError as error:
        raise BioimageioPackageError(str(error)) from error
