"""Session state shared by the widgets of one viewer: models, threshold, probabilities.

Pure Python (psygnal ships with napari): no Qt, so it is tested without a display.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:
    from napari_unet_nuclei.nn.model import NucleiModel

__all__ = ["CachedProbabilities", "ModelRegistry", "registry_for", "unwrap_viewer"]


@dataclass
class CachedProbabilities:
    """Probabilities of one model on one image layer, kept for the threshold slider.

    Parameters
    ----------
    probabilities : numpy.ndarray
        float32 array of the image layer's shape.
    frames_done : numpy.ndarray
        Boolean array over the leading (frame) axes: True where a frame was computed
        (a 0-d array for a 2-D image).
    """

    probabilities: np.ndarray
    frames_done: np.ndarray = field(default_factory=lambda: np.ones((), bool))

    @property
    def complete(self) -> bool:
        """Whether every frame was computed."""
        return bool(np.all(self.frames_done))


class ModelRegistry:
    """Models of a napari session by unique name, the shared threshold and a cache.

    The built-in models (``napari_unet_nuclei.io.builtin_models``) are listed first by
    :meth:`choices` and loaded (SHA-256 checked) the first time :meth:`get` asks for one;
    :meth:`names` lists the models of the session (trained or loaded from files).

    Signals
    -------
    models_changed()
        A model was added or removed.
    threshold_changed(float)
        The mask threshold (a probability) changed, from Segment's slider or from a click
        on Evaluate's precision-recall curve.
    """

    models_changed = Signal()
    threshold_changed = Signal(float)

    def __init__(self, builtins: bool = False) -> None:
        self._models: dict[str, NucleiModel] = {}
        self._threshold = 0.5
        self._cache: dict[tuple[str, int], tuple[weakref.ref, CachedProbabilities]] = {}
        self._builtin_names: list[str] = []
        self._builtin_models: dict[str, NucleiModel] = {}
        self._builtin_lock = threading.Lock()
        self._not_followed: set[str] = set()
        if builtins:
            from napari_unet_nuclei.io.builtin_models import BUILTIN_MODELS, DEFAULT_MODEL

            self._builtin_names = list(BUILTIN_MODELS)
            self._threshold = BUILTIN_MODELS[DEFAULT_MODEL].threshold

    # ----------------------------------------------------------------------- models
    def add(self, model: NucleiModel, name: str | None = None, *, follow: bool = True) -> str:
        """Register a model under a unique name and return that name.

        The shared threshold becomes the model's default threshold, and pickers that
        follow the latest model select it, unless ``follow`` is False (a cancelled
        training run: listed, never put in front of the user's model).

        Parameters
        ----------
        model : NucleiModel
            The model (not copied).
        name : str, optional
            Wanted name; ``model.name`` when omitted. ``" (2)"``, ``" (3)"``... is
            appended when the name is taken, so a model is never replaced silently.

        Returns
        -------
        str
            The name the model is registered under.
        """
        base = (name or model.name or "unet").strip() or "unet"
        unique, number = base, 1
        while unique in self._models or unique in self._builtin_names:
            number += 1
            unique = f"{base} ({number})"
        self._models[unique] = model
        if not follow:
            self._not_followed.add(unique)
        self.models_changed.emit()
        if follow:
            # A new model brings its own default threshold (calibrated on its validation
            # images when it was trained).
            self.set_threshold(model.threshold)
        return unique

    def followed(self, name: str) -> bool:
        """Whether pickers that follow the latest model should select ``name``."""
        return name not in self._not_followed

    def builtin_names(self) -> list[str]:
        """Names of the built-in models this registry offers."""
        return list(self._builtin_names)

    def choices(self) -> list[str]:
        """Every model a picker offers: the built-in ones first, then the session's."""
        return [*self._builtin_names, *(n for n in self._models if n not in self._builtin_names)]

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` is a built-in model of this registry."""
        return name in self._builtin_names and name not in self._models

    def get(self, name: str) -> NucleiModel:
        """Return the model registered as ``name`` (a built-in model is loaded once).

        Raises
        ------
        KeyError
            With a readable message when no model has that name.
        napari_unet_nuclei.io.model_io.ModelFileError
            When a built-in model's file is missing or damaged.
        """
        if self.is_builtin(name):
            with self._builtin_lock:
                if name not in self._builtin_models:
                    from napari_unet_nuclei.io.model_io import load_model

                    self._builtin_models[name] = load_model(name)
                return self._builtin_models[name]
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(
                f"No model named {name!r} in this session; train or load one first."
            ) from None

    def remove(self, name: str) -> None:
        """Forget a model and its cached probabilities."""
        if self._models.pop(name, None) is not None:
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]
            self.models_changed.emit()

    def names(self) -> list[str]:
        """Names of the registered models, oldest first."""
        return list(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._models))

    def load_file(self, path: str | Path) -> str:
        """Load a ``.pt`` model file and register it; return its session name.

        Raises
        ------
        FileNotFoundError, napari_unet_nuclei.io.model_io.ModelFileError
            With a one-sentence message, when the file is missing or not a model.
        """
        from napari_unet_nuclei.io.model_io import load_model

        model = load_model(path)
        return self.add(model, model.name or Path(path).stem)

    # -------------------------------------------------------------------- threshold
    @property
    def threshold(self) -> float:
        """The shared mask threshold, a probability in (0, 1)."""
        return self._threshold

    def set_threshold(self, value: float) -> None:
        """Change the shared threshold; emits ``threshold_changed`` when it changed."""
        value = float(np.clip(value, 0.01, 0.99))
        if abs(value - self._threshold) > 1e-9:
            self._threshold = value
            self.threshold_changed.emit(value)

    # ------------------------------------------------------------------------ cache
    def store_probabilities(
        self, model_name: str, layer: Any, cached: CachedProbabilities
    ) -> None:
        """Keep the probabilities of ``model_name`` on the image ``layer``."""
        self._cache[(model_name, id(layer))] = (weakref.ref(layer), cached)

    def cached_probabilities(self, model_name: str, layer: Any) -> CachedProbabilities | None:
        """Return the cached probabilities of ``model_name`` on ``layer``, if any."""
        entry = self._cache.get((model_name, id(layer)))
        if entry is None or entry[0]() is not layer:
            return None
        return entry[1]

    def forget_layer(self, layer: Any) -> None:
        """Drop the cache entries of an image layer (e.g. when it is removed)."""
        for key in [k for k, (ref, _) in self._cache.items() if k[1] == id(layer)]:
            if self._cache[key][0]() in (layer, None):
                del self._cache[key]


_REGISTRIES: dict[int, ModelRegistry] = {}


def unwrap_viewer(viewer: Any) -> Any:
    """The viewer itself when napari hands a plugin a ``PublicOnlyProxy`` of it.

    napari makes a new proxy each time, so proxies cannot key the per-viewer state, and
    layers reached through a proxy are proxies too (identity checks fail).
    """
    return getattr(viewer, "__wrapped__", viewer)


def registry_for(viewer: Any) -> ModelRegistry:
    """Return the registry of ``viewer``, creating it on first use.

    One registry per viewer, so tests and sessions with several viewers do not mix; it is
    dropped when the viewer is garbage collected.
    """
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    registry = _REGISTRIES.get(key)
    if registry is None:
        registry = ModelRegistry(builtins=True)
        _REGISTRIES[key] = registry
        weakref.finalize(viewer, _REGISTRIES.pop, key, None)
        layers = getattr(viewer, "layers", None)
        if layers is not None:
            layers.events.removed.connect(_forget_removed(registry))
    return registry


def _forget_removed(registry: ModelRegistry) -> Any:
    """Callback dropping cached probabilities of removed layers (holds no viewer ref)."""
    registry_ref = weakref.ref(registry)

    def on_removed(event: Any) -> None:
        target = registry_ref()
        if target is not None:
            target.forget_layer(event.value)

    return on_removed
