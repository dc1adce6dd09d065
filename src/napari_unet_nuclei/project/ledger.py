"""The ledger of retraining rounds, kept in a project folder.

Every training run of an annotate -> retrain loop becomes a *round*: the data it used
(names, hashes, annotated pixels), its settings, its scores on the held-out images the
user designated (frozen, never trained on) with their precision-recall curve, and a copy
of its model in ``models/round-NNN.pt``. Rounds can be compared, a round's exact model
restored (:meth:`Ledger.rollback`), and a round that scores worse on the held-out set
than the best earlier one is flagged (:meth:`Ledger.regression_warning`).

Plain numpy/torch, no Qt: the widget runs the scoring in a worker thread.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet_nuclei.evaluate.metrics import (
    PrecisionRecallCurve,
    confusion_counts,
    precision_recall_curve,
)
from napari_unet_nuclei.io._file_checks import one_line, read_json
from napari_unet_nuclei.project.folder import ProjectError, atomic_write_json, sample_sha256
from napari_unet_nuclei.train.annotations import annotated_pixel_count

if TYPE_CHECKING:
    from napari_unet_nuclei.evaluate.metrics import PrecisionRecallCurve
    from napari_unet_nuclei.nn.model import NucleiModel

__all__ = [
    "LEDGER_NAME",
    "HeldOutScores",
    "Ledger",
    "LedgerRound",
    "data_item",
    "score_held_out",
    "weights_sha256",
]

LEDGER_FORMAT = "napari-unet-nuclei-ledger"
LEDGER_VERSION = 1
LEDGER_NAME = "ledger.json"
MODELS_FOLDER = "models"


def _json_safe(value: Any) -> Any:
    """Plain JSON data: NaN/inf become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def weights_sha256(model: NucleiModel) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and exact values)."""
    digest = hashlib.sha256()
    for key, tensor in model.network.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{key}:{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_item(
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    annotated: np.ndarray | None = None,
    source: str = "layer",
) -> dict[str, Any]:
    """Record of one training image for the ledger.

    Parameters
    ----------
    name : str
        Image name.
    image, labels : numpy.ndarray
        The 2-D image and its labels.
    annotated : numpy.ndarray, optional
        Map of annotated pixels; None: all.
    source : str
        Where it came from: ``"project"`` or ``"layer"``.

    Returns
    -------
    dict
        ``name``, ``sha256``, ``annotated_pixels``, ``shape`` and ``source``.
    """
    image = np.asarray(image)
    return {
        "name": str(name),
        "sha256": sample_sha256(image, np.asarray(labels), annotated),
        "annotated_pixels": annotated_pixel_count(image.shape, annotated),
        "shape": [int(s) for s in image.shape],
        "source": source,
    }


@dataclass(frozen=True)
class HeldOutScores:
    """Scores of one model on the held-out images, pooled over their annotated pixels.

    Parameters
    ----------
    names : list of str
        Held-out image names.
    fingerprint : str
        Hash of the held-out samples: rounds are only compared on the same set.
    threshold : float
        Probability threshold of the scores.
    counts : dict
        ``tp``, ``fp``, ``fn``, ``tn`` pixel counts.
    scores : dict
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``iou``.
    annotated_pixels : int
        Pixels scored.
    curve : dict
        :meth:`~napari_unet_nuclei.evaluate.metrics.PrecisionRecallCurve.to_dict` output.
    """

    names: list[str]
    fingerprint: str
    threshold: float
    counts: dict[str, int]
    scores: dict[str, float]
    annotated_pixels: int
    curve: dict[str, Any] = field(repr=False)

    @property
    def f1(self) -> float:
        """Pixel F1 at the threshold."""
        return float(self.scores["f1"])

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the ledger."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldOutScores:
        """From :meth:`to_dict` output."""
        return cls(
            names=[str(n) for n in data["names"]],
            fingerprint=str(data["fingerprint"]),
            threshold=float(data["threshold"]),
            counts={k: int(v) for k, v in data["counts"].items()},
            scores={k: math.nan if v is None else float(v) for k, v in data["scores"].items()},
            annotated_pixels=int(data["annotated_pixels"]),
            curve=dict(data["curve"]),
        )

    def precision_recall_curve(self) -> PrecisionRecallCurve:
        """The stored curve as a :class:`~napari_unet_nuclei.evaluate.metrics.PrecisionRecallCurve`."""
        return PrecisionRecallCurve.from_dict(self.curve)


def held_out_fingerprint(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    annotated: Sequence[np.ndarray | None] | None = None,
) -> str:
    """Order-independent hash of a held-out set."""
    annotated = list(annotated) if annotated is not None else [None] * len(images)
    hashes = sorted(sample_sha256(im, lab, ann) for im, lab, ann in zip(images, labels, annotated))
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def score_held_out(
    model: NucleiModel,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    annotated: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
    *,
    threshold: float | None = None,
    device: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HeldOutScores | None:
    """Score a model on held-out images, inside their annotated regions.

    Parameters
    ----------
    model : NucleiModel
        The model to score.
    images, labels : sequence of numpy.ndarray
        2-D held-out images and their labels (``> 0`` is nucleus).
    annotated : sequence of (numpy.ndarray or None), optional
        Maps of the pixels to score (None: all).
    names : sequence of str, optional
        Image names, recorded.
    threshold : float, optional
        Probability threshold; the model's own by default.
    device : str, optional
        Inference device.
    should_stop : callable, optional
        Polled between images; when it returns True, None is returned.

    Returns
    -------
    HeldOutScores or None
        Pooled scores and the precision-recall curve; None when stopped.

    Raises
    ------
    ValueError
        Without held-out images, or for mismatched shapes.
    """
    from napari_unet_nuclei.prediction.inference import predict

    if len(images) == 0:
        raise ValueError("No held-out images: mark some project images as held-out first.")
    if len(labels) != len(images):
        raise ValueError(f"Got {len(images)} held-out images but {len(labels)} label images.")
    annotated = list(annotated) if annotated is not None else [None] * len(images)
    names = (
        [str(n) for n in names]
        if names is not None
        else [f"held-out {i}" for i in range(len(images))]
    )
    threshold = float(model.threshold if threshold is None else threshold)
    total = None
    probabilities, truths = [], []
    for image, label, valid in zip(images, labels, annotated):
        if should_stop is not None and should_stop():
            return None
        image, label = np.asarray(image), np.asarray(label)
        if image.ndim != 2 or image.shape != label.shape:
            raise ValueError(
                f"Held-out image of shape {image.shape} with labels of shape {label.shape}; "
                "give 2-D images with matching labels."
            )
        probs = predict(model, image, device=device)
        truth = np.nan_to_num(label, nan=0.0) > 0 if label.dtype.kind == "f" else label > 0
        if valid is not None:
            keep = np.asarray(valid, bool)
            probs, truth = probs[keep], truth[keep]
        else:
            probs, truth = probs.ravel(), truth.ravel()
        counts = confusion_counts(probs >= threshold, truth)
        total = counts if total is None else total + counts
        probabilities.append(probs)
        truths.append(truth)
    curve = precision_recall_curve(np.concatenate(probabilities), np.concatenate(truths))
    return HeldOutScores(
        names=names,
        fingerprint=held_out_fingerprint(images, labels, annotated),
        threshold=threshold,
        counts={k: getattr(total, k) for k in ("tp", "fp", "fn", "tn")},
        scores=total.scores(),
        annotated_pixels=total.total,
        curve=curve.to_dict(),
    )


@dataclass(frozen=True)
class LedgerRound:
    """One training round as recorded in ``ledger.json``.

    Parameters
    ----------
    number : int
        1, 2, 3... in the order of recording.
    date : str
        ISO date and time.
    model_name : str
        Name of the model in the session.
    model_file : str
        Path of the model copy, relative to the project folder.
    model_sha256 : str
        Hash of that file.
    weights_sha256 : str
        Hash of the model's weights (:func:`weights_sha256`).
    started_from : str or None
        Model the round fine-tuned, None for a new network.
    data : list of dict
        The training images (:func:`data_item`).
    settings : dict
        ``TrainingConfig.to_dict()``.
    training : dict
        Stop reason, epochs, steps, seconds, best validation F1.
    held_out : HeldOutScores or None
        Scores on the held-out set, None when there was none.
    """

    number: int
    date: str
    model_name: str
    model_file: str
    model_sha256: str
    weights_sha256: str
    started_from: str | None
    data: list[dict[str, Any]]
    settings: dict[str, Any]
    training: dict[str, Any]
    held_out: HeldOutScores | None = None

    @property
    def n_images(self) -> int:
        """Number of training images."""
        return len(self.data)

    @property
    def annotated_pixels(self) -> int:
        """Annotated pixels over the training images."""
        return int(sum(int(item.get("annotated_pixels", 0)) for item in self.data))

    @property
    def label(self) -> str:
        """``"round 3"``."""
        return f"round {self.number}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``ledger.json``."""
        data = {k: v for k, v in asdict(self).items() if k != "held_out"}
        data["held_out"] = None if self.held_out is None else self.held_out.to_dict()
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerRound:
        """From :meth:`to_dict` output."""
        held = data.get("held_out")
        return cls(
            number=int(data["number"]),
            date=str(data["date"]),
            model_name=str(data["model_name"]),
            model_file=str(data["model_file"]),
            model_sha256=str(data["model_sha256"]),
            weights_sha256=str(data["weights_sha256"]),
            started_from=data.get("started_from"),
            data=list(data.get("data", [])),
            settings=dict(data.get("settings", {})),
            training=dict(data.get("training", {})),
            held_out=None if held is None else HeldOutScores.from_dict(held),
        )


class Ledger:
    """The rounds recorded in a project folder's ``ledger.json``.

    Parameters
    ----------
    folder : str or path-like
        The project folder (see :class:`~napari_unet_nuclei.project.folder.TrainingProject`).
        The ledger file is created by the first :meth:`record`.

    Raises
    ------
    ProjectError
        When ``ledger.json`` exists but is damaged or not a ledger.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.rounds: list[LedgerRound] = self._read()

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self.folder / LEDGER_NAME

    def _read(self) -> list[LedgerRound]:
        if not self.path.exists() and not self.path.is_symlink():
            return []
        try:
            data = read_json(self.path)
        except Exception as error:  # not a file, too large, not UTF-8, not JSON, too deep
            raise ProjectError(
                f"{self.path} is damaged and cannot be read as a ledger: {one_line(error)}."
            ) from error
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise ProjectError(f"{self.path} is not a napari-unet-nuclei ledger.")
        version = data.get("format_version")
        if not isinstance(version, int) or version > LEDGER_VERSION:
            raise ProjectError(
                f"{self.path} uses ledger format version {version}, newer than this plugin "
                f"reads (up to {LEDGER_VERSION}); update napari-unet-nuclei."
            )
        try:
            rounds = data.get("rounds", [])
            if not isinstance(rounds, list):
                raise TypeError("'rounds' is not a list")
            parsed = [LedgerRound.from_dict(item) for item in rounds]
            for item in parsed:  # parse the stored curves now: the widgets draw them later
                if item.held_out is not None:
                    item.held_out.precision_recall_curve()
            return parsed
        except Exception as error:  # a missing key, a wrong type, an infinite number...
            raise ProjectError(
                f"{self.path} is damaged: a round is incomplete or malformed "
                f"({type(error).__name__}: {one_line(error)})."
            ) from error

    def reload(self) -> None:
        """Read the ledger file again."""
        self.rounds = self._read()

    def __len__(self) -> int:
        return len(self.rounds)

    def round(self, number: int) -> LedgerRound:
        """The round numbered ``number``.

        Raises
        ------
        KeyError
            When there is no such round.
        """
        for item in self.rounds:
            if item.number == number:
                return item
        raise KeyError(f"The ledger has no round {number}.")

    def record(
        self,
        model: NucleiModel,
        *,
        data: Sequence[dict[str, Any]],
        settings: dict[str, Any],
        training: dict[str, Any] | None = None,
        held_out: HeldOutScores | None = None,
        started_from: str | None = None,
        model_name: str | None = None,
    ) -> LedgerRound:
        """Record a round: copy its model to ``models/round-NNN.pt`` and append it.

        Parameters
        ----------
        model : NucleiModel
            The trained model (saved with :func:`~napari_unet_nuclei.io.model_io.save_model`).
        data : sequence of dict
            Training images (:func:`data_item`).
        settings : dict
            Training settings (``TrainingConfig.to_dict()``).
        training : dict, optional
            Outcome of the run (stop reason, epochs, steps, seconds, best validation F1).
        held_out : HeldOutScores, optional
            Scores on the held-out set.
        started_from : str, optional
            Name of the model the round fine-tuned.
        model_name : str, optional
            Session name of the model (``model.name`` by default).

        Returns
        -------
        LedgerRound
        """
        from napari_unet_nuclei.io.model_io import save_model

        self.reload()
        number = max((r.number for r in self.rounds), default=0) + 1
        relative = f"{MODELS_FOLDER}/round-{number:03d}.pt"
        path = save_model(model, self.folder / relative)
        item = LedgerRound(
            number=number,
            date=time.strftime("%Y-%m-%dT%H:%M:%S"),
            model_name=str(model_name or model.name),
            model_file=relative,
            model_sha256=_file_sha256(path),
            weights_sha256=weights_sha256(model),
            started_from=started_from,
            data=[dict(d) for d in data],
            settings=dict(settings),
            training=dict(training or {}),
            held_out=held_out,
        )
        self.rounds.append(item)
        self._write()
        return item

    def set_held_out(self, number: int, held_out: HeldOutScores) -> LedgerRound:
        """Attach held-out scores to round ``number`` (scored after it was recorded).

        Returns
        -------
        LedgerRound
            The updated round.
        """
        self.reload()
        item = replace(self.round(number), held_out=held_out)
        self.rounds[self.rounds.index(self.round(number))] = item
        self._write()
        return item

    def _write(self) -> None:
        atomic_write_json(
            self.path,
            {
                "format": LEDGER_FORMAT,
                "format_version": LEDGER_VERSION,
                "rounds": [r.to_dict() for r in self.rounds],
            },
        )

    def rollback(self, number: int) -> NucleiModel:
        """The exact model of round ``number``, read back from its file.

        Raises
        ------
        KeyError
            When there is no such round.
        ProjectError
            When the model file is missing or no longer matches its recorded hash.
        """
        from napari_unet_nuclei.io.model_io import ModelFileError, load_model

        item = self.round(number)
        path = self.folder / item.model_file
        if not path.is_file():
            raise ProjectError(f"The model file of round {number} is missing: {path}")
        if _file_sha256(path) != item.model_sha256:
            raise ProjectError(
                f"The model file of round {number} ({path}) was changed after it was recorded."
            )
        try:
            model = load_model(path)
        except ModelFileError as error:
            raise ProjectError(str(error)) from error
        if weights_sha256(model) != item.weights_sha256:
            raise ProjectError(f"The weights read from {path} differ from round {number}'s.")
        return model

    def curve(self, number: int) -> PrecisionRecallCurve | None:
        """Round ``number``'s held-out precision-recall curve (None without held-out set)."""
        held = self.round(number).held_out
        return None if held is None else held.precision_recall_curve()

    def best_earlier(self, number: int) -> LedgerRound | None:
        """Best held-out F1 among rounds before ``number`` scored on the same held-out set."""
        current = self.round(number)
        if current.held_out is None:
            return None
        earlier = [
            r
            for r in self.rounds
            if r.number < number
            and r.held_out is not None
            and r.held_out.fingerprint == current.held_out.fingerprint
            and math.isfinite(r.held_out.f1)
        ]
        return max(earlier, key=lambda r: r.held_out.f1, default=None)

    def is_regression(self, number: int) -> bool:
        """Whether round ``number`` scores a lower held-out F1 than the best earlier round."""
        best = self.best_earlier(number)
        current = self.round(number).held_out
        return best is not None and current is not None and current.f1 < best.held_out.f1

    def regression_warning(self, number: int) -> str | None:
        """A sentence for the user when round ``number`` is a regression, else None."""
        if not self.is_regression(number):
            return None
        best = self.best_earlier(number)
        current = self.round(number).held_out
        return (
            f"Round {number} scores F1 {current.f1:.3f} on the held-out set, worse than "
            f"round {best.number} ({best.held_out.f1:.3f}); roll back to round {best.number} "
            "if the new annotations did not help."
        )
