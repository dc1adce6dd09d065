"""A training set on disk that survives the session: the project folder.

Layout::

    <folder>/
        project.json          index: names, hashes, dates, shapes, roles
        images/<id>.tif       2-D images (their own dtype)
        labels/<id>.tif       matching labels (``> 0`` is nucleus)
        annotated/<id>.tif    uint8 map of the pixels whose labels are complete
                              (absent when the whole image is annotated)
        ledger.json           retraining rounds (see :mod:`napari_unet_nuclei.project.ledger`)
        models/round-NNN.pt   the model of each round

Each entry has a role: ``"train"`` (used for training) or ``"held-out"`` (a frozen set
the rounds are scored on, never trained on). Writes are atomic (temporary file, then
rename), so an interrupted save leaves the previous index intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet_nuclei.io._file_checks import one_line, read_json
from napari_unet_nuclei.io.file_writing import atomic_path
from napari_unet_nuclei.train.annotations import annotated_pixel_count

__all__ = [
    "HELD_OUT",
    "INDEX_NAME",
    "PROJECT_FORMAT",
    "TRAIN",
    "ProjectEntry",
    "ProjectError",
    "TrainingProject",
    "array_sha256",
    "atomic_write_json",
    "sample_sha256",
]

PROJECT_FORMAT = "napari-unet-nuclei-project"
PROJECT_VERSION = 1
INDEX_NAME = "project.json"
TRAIN, HELD_OUT = "train", "held-out"
ROLES = (TRAIN, HELD_OUT)


class ProjectError(ValueError):
    """A folder is not a readable training project, or an entry cannot be added."""


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-ordered bytes (hex)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def sample_sha256(image: np.ndarray, labels: np.ndarray, annotated: np.ndarray | None) -> str:
    """SHA-256 of one training sample: the image, its labels and its annotated map."""
    digest = hashlib.sha256()
    digest.update(array_sha256(np.asarray(image)).encode())
    digest.update(array_sha256(np.asarray(labels)).encode())
    if annotated is not None:
        digest.update(array_sha256(np.asarray(annotated, bool)).encode())
    return digest.hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=1, allow_nan=False)
        stream.flush()
        os.fsync(stream.fileno())


def _atomic_write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    with atomic_path(path, suffix=".tif") as temporary:
        tifffile.imwrite(temporary, np.ascontiguousarray(array), compression="zlib")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


#: What an entry's file id may be: a plain file name (no folder, never ``..``).
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return slug[:60] or "image"


@dataclass(frozen=True)
class ProjectEntry:
    """One image of the project, as indexed in ``project.json``.

    Parameters
    ----------
    name : str
        Unique name (usually the layer name, with the frame for stacks).
    id : str
        File stem under ``images/``, ``labels/`` and ``annotated/``.
    sha256 : str
        Hash of image, labels and annotated map together (:func:`sample_sha256`).
    image_sha256 : str
        Hash of the image alone (to keep held-out images out of training).
    date_added : str
        ISO date and time.
    shape : tuple of int
        ``(H, W)``.
    dtype : str
        Image dtype.
    annotated_pixels : int
        Pixels whose labels are complete.
    has_annotated_map : bool
        Whether ``annotated/<id>.tif`` exists (otherwise the whole image is annotated).
    role : {"train", "held-out"}
    """

    name: str
    id: str
    sha256: str
    image_sha256: str
    date_added: str
    shape: tuple[int, int]
    dtype: str
    annotated_pixels: int
    has_annotated_map: bool
    role: str = TRAIN
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``project.json``."""
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectEntry:
        """Entry from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            id=str(data["id"]),
            sha256=str(data["sha256"]),
            image_sha256=str(data["image_sha256"]),
            date_added=str(data["date_added"]),
            shape=(int(data["shape"][0]), int(data["shape"][1])),
            dtype=str(data["dtype"]),
            annotated_pixels=int(data["annotated_pixels"]),
            has_annotated_map=bool(data["has_annotated_map"]),
            role=str(data.get("role", TRAIN)),
            extra=dict(data.get("extra", {})),
        )


@dataclass
class ProjectSample:
    """The arrays of one entry, read from disk."""

    entry: ProjectEntry
    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray | None


class TrainingProject:
    """A project folder: images, labels and annotated maps with a JSON index.

    Open one with :meth:`open` (an existing project), :meth:`create` (a new one in an
    empty or missing folder) or :meth:`open_or_create`.

    Parameters
    ----------
    folder : str or path-like
        The project folder; it must already hold ``project.json``.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._index: dict[str, Any] = self._read_index()

    # ------------------------------------------------------------------- opening
    @classmethod
    def create(cls, folder: str | os.PathLike) -> TrainingProject:
        """Create a new project in ``folder`` (missing or empty).

        Raises
        ------
        ProjectError
            When the folder already holds a project or other files.
        """
        folder = Path(folder)
        if (folder / INDEX_NAME).exists():
            raise ProjectError(f"{folder} already holds a training project; open it instead.")
        if folder.exists():
            if not folder.is_dir():
                raise ProjectError(f"{folder} is a file, not a folder.")
            if any(p for p in folder.iterdir() if not p.name.startswith(".")):
                raise ProjectError(
                    f"{folder} is not empty and is not a training project; pick an empty "
                    "folder (or an existing project)."
                )
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            folder / INDEX_NAME,
            {
                "format": PROJECT_FORMAT,
                "format_version": PROJECT_VERSION,
                "created": _now(),
                "entries": [],
            },
        )
        return cls(folder)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> TrainingProject:
        """Open an existing project.

        Raises
        ------
        ProjectError
            When the folder holds no ``project.json``, or a damaged or foreign one.
        """
        return cls(folder)

    @classmethod
    def open_or_create(cls, folder: str | os.PathLike) -> TrainingProject:
        """Open the project in ``folder``, or create one when the folder is missing or empty."""
        folder = Path(folder)
        if (folder / INDEX_NAME).exists():
            return cls(folder)
        return cls.create(folder)

    def _read_index(self) -> dict[str, Any]:
        path = self.folder / INDEX_NAME
        if not self.folder.is_dir():
            raise ProjectError(f"Project folder not found: {self.folder}")
        if not path.exists() and not path.is_symlink():
            raise ProjectError(
                f"{self.folder} is not a napari-unet-nuclei training project (no {INDEX_NAME})."
            )
        try:
            data = read_json(path)
        except Exception as error:  # not a file, too large, not UTF-8, not JSON, too deep
            raise ProjectError(
                f"{path} is damaged and cannot be read as a project index: {one_line(error)}."
            ) from error
        if not isinstance(data, dict) or data.get("format") != PROJECT_FORMAT:
            raise ProjectError(
                f"{path} is not a napari-unet-nuclei project index (its 'format' is not "
                f"{PROJECT_FORMAT!r})."
            )
        version = data.get("format_version")
        if not isinstance(version, int) or version > PROJECT_VERSION:
            raise ProjectError(
                f"{path} uses project format version {version}, newer than this plugin "
                f"reads (up to {PROJECT_VERSION}); update napari-unet-nuclei."
            )
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise ProjectError(f"{path} is damaged: 'entries' is not a list.")
        try:
            parsed = [ProjectEntry.from_dict(item) for item in entries]
        except Exception as error:  # a missing key, a wrong type, an infinite number...
            raise ProjectError(
                f"{path} is damaged: an entry is incomplete or malformed "
                f"({type(error).__name__}: {one_line(error)})."
            ) from error
        ids = [entry.id for entry in parsed]
        if any(not _SAFE_ID.fullmatch(entry_id) for entry_id in ids):
            raise ProjectError(
                f"{path} is damaged: an entry's file id is not a plain file name, so the "
                "project's files cannot be found safely."
            )
        data["entries"] = parsed
        return data

    def reload(self) -> None:
        """Read the index again (after another widget or process changed it)."""
        self._index = self._read_index()

    def _write_index(self) -> None:
        data = dict(self._index)
        data["entries"] = [entry.to_dict() for entry in self._index["entries"]]
        atomic_write_json(self.folder / INDEX_NAME, data)

    # ------------------------------------------------------------------- entries
    @property
    def entries(self) -> list[ProjectEntry]:
        """All entries, oldest first."""
        return list(self._index["entries"])

    def __len__(self) -> int:
        return len(self._index["entries"])

    def __iter__(self) -> Iterator[ProjectEntry]:
        return iter(self.entries)

    def names(self, role: str | None = None) -> list[str]:
        """Entry names, optionally of one role only."""
        return [e.name for e in self.entries if role is None or e.role == role]

    def entry(self, name: str) -> ProjectEntry:
        """The entry called ``name``.

        Raises
        ------
        KeyError
            With a readable message when there is none.
        """
        for entry in self._index["entries"]:
            if entry.name == name:
                return entry
        raise KeyError(f"No image named {name!r} in the project {self.folder}.")

    def held_out_image_hashes(self) -> set[str]:
        """Image hashes of the held-out entries (such images must never be trained on)."""
        return {e.image_sha256 for e in self.entries if e.role == HELD_OUT}

    def add(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        name: str,
        *,
        annotated: np.ndarray | None = None,
        role: str = TRAIN,
        crop_to_annotated: bool = False,
        replace: bool = True,
    ) -> ProjectEntry:
        """Store an image with its labels (and annotated map) in the project.

        Parameters
        ----------
        image : numpy.ndarray
            2-D image of any real dtype.
        labels : numpy.ndarray
            Labels of the same shape (``> 0`` is nucleus).
        name : str
            Entry name. Adding again under a taken name replaces that entry (the labels
            were corrected further), unless ``replace`` is False; identical data is not
            stored twice.
        annotated : numpy.ndarray, optional
            Boolean map of the pixels whose labels are complete; None: all of them.
        role : {"train", "held-out"}
            ``"held-out"`` entries are only used to score rounds, never for training.
        crop_to_annotated : bool
            Store only the bounding box of the annotated regions.
        replace : bool
            Whether a different sample under a taken name replaces it.

        Returns
        -------
        ProjectEntry
            The new entry (or the existing identical one).

        Raises
        ------
        ProjectError
            For arrays that are not matching 2-D images, an empty annotated map, a name
            taken by a held-out entry (held-out images are frozen), or the same image
            already stored with the other role.
        """
        if role not in ROLES:
            raise ProjectError(f"Unknown role {role!r}; use 'train' or 'held-out'.")
        name = str(name).strip()
        if not name:
            raise ProjectError("Give the image a name.")
        image, labels = np.asarray(image), np.asarray(labels)
        if image.ndim != 2:
            raise ProjectError(
                f"'{name}' has shape {image.shape}; add 2-D images (one frame at a time)."
            )
        if image.dtype.kind not in "uifb":
            raise ProjectError(f"'{name}' has dtype {image.dtype}; give a grey image.")
        if labels.shape != image.shape:
            raise ProjectError(
                f"The labels of '{name}' have shape {labels.shape} but the image has shape "
                f"{image.shape}."
            )
        if labels.dtype.kind == "f":
            labels = np.nan_to_num(labels, nan=0.0)
        if annotated is not None:
            annotated = np.asarray(annotated, bool)
            if annotated.shape != image.shape:
                raise ProjectError(
                    f"The annotated map of '{name}' has shape {annotated.shape} but the image "
                    f"has shape {image.shape}."
                )
            if not annotated.any():
                raise ProjectError(f"The annotated regions of '{name}' are empty.")
            if annotated.all():
                annotated = None
        if crop_to_annotated and annotated is not None:
            rows = np.flatnonzero(annotated.any(axis=1))
            cols = np.flatnonzero(annotated.any(axis=0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            image, labels, annotated = image[box], labels[box], annotated[box]
            if annotated.all():
                annotated = None
        digest = sample_sha256(image, labels, annotated)
        image_digest = array_sha256(image)
        entries: list[ProjectEntry] = self._index["entries"]
        for entry in entries:
            if entry.image_sha256 == image_digest and entry.role != role and entry.name != name:
                raise ProjectError(
                    f"This image is already in the project as '{entry.name}' with role "
                    f"'{entry.role}'; an image cannot be both trained on and held out."
                )
        existing = next((e for e in entries if e.name == name), None)
        if existing is not None:
            if existing.sha256 == digest and existing.role == role:
                return existing
            if existing.role == HELD_OUT or (role == HELD_OUT and existing.role != role):
                raise ProjectError(
                    f"'{name}' is in the project as '{existing.role}'; held-out images are "
                    "frozen. Remove it first, or add the image under another name."
                )
            if not replace:
                raise ProjectError(f"The project already has an image named '{name}'.")
            file_id = existing.id
        else:
            taken = {e.id for e in entries}
            number = len(entries) + 1
            file_id = f"{number:04d}-{_slug(name)}"
            while file_id in taken:
                number += 1
                file_id = f"{number:04d}-{_slug(name)}"
        _atomic_write_tiff(self.folder / "images" / f"{file_id}.tif", image)
        _atomic_write_tiff(self.folder / "labels" / f"{file_id}.tif", labels)
        annotated_path = self.folder / "annotated" / f"{file_id}.tif"
        if annotated is not None:
            _atomic_write_tiff(annotated_path, annotated.astype(np.uint8))
        else:
            annotated_path.unlink(missing_ok=True)
        entry = ProjectEntry(
            name=name,
            id=file_id,
            sha256=digest,
            image_sha256=image_digest,
            date_added=_now(),
            shape=(int(image.shape[0]), int(image.shape[1])),
            dtype=str(image.dtype),
            annotated_pixels=annotated_pixel_count(image.shape, annotated),
            has_annotated_map=annotated is not None,
            role=role,
        )
        previous = list(entries)
        if existing is not None:
            entries[entries.index(existing)] = entry
        else:
            entries.append(entry)
        try:
            self._write_index()
        except BaseException:
            self._index["entries"] = previous  # the index on disk is unchanged too
            raise
        return entry

    def remove(self, name: str) -> None:
        """Remove an entry and its files."""
        entry = self.entry(name)
        self._index["entries"].remove(entry)
        self._write_index()
        for sub in ("images", "labels", "annotated"):
            (self.folder / sub / f"{entry.id}.tif").unlink(missing_ok=True)

    def load(self, name: str, *, verify: bool = True) -> ProjectSample:
        """Read an entry's arrays from disk.

        Parameters
        ----------
        name : str
            Entry name.
        verify : bool
            Check the arrays against the stored hash.

        Raises
        ------
        ProjectError
            When a file is missing or unreadable, or the data no longer matches its hash.
        """
        import tifffile

        entry = self.entry(name)

        def read(sub: str) -> np.ndarray:
            path = self.folder / sub / f"{entry.id}.tif"
            try:
                return tifffile.imread(path)
            except FileNotFoundError:
                raise ProjectError(
                    f"The project file {path} is missing; the project folder was changed "
                    "outside the plugin."
                ) from None
            except Exception as error:  # tifffile raises several kinds for damaged files
                raise ProjectError(f"The project file {path} is unreadable: {error}") from error

        image, labels = read("images"), read("labels")
        annotated = read("annotated").astype(bool) if entry.has_annotated_map else None
        if verify and sample_sha256(image, labels, annotated) != entry.sha256:
            raise ProjectError(
                f"The files of '{name}' in {self.folder} do not match their recorded hash; "
                "they were changed outside the plugin."
            )
        return ProjectSample(entry, image, labels, annotated)

    def samples(self, role: str | None = TRAIN) -> list[ProjectSample]:
        """Read every entry of ``role`` (all entries when None)."""
        return [self.load(e.name) for e in self.entries if role is None or e.role == role]

    def describe(self) -> str:
        """One sentence: how many images of each role, and annotated pixels."""
        train = [e for e in self.entries if e.role == TRAIN]
        held = [e for e in self.entries if e.role == HELD_OUT]
        pixels = sum(e.annotated_pixels for e in train)
        return (
            f"{len(train)} training image(s) ({pixels:,} annotated pixels), "
            f"{len(held)} held-out image(s)."
        )
