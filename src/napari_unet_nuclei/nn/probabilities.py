"""Network outputs as probabilities: the logistic function and its inverse.

The network gives logits; every nucleus probability, threshold and map in the package is
converted here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["logit_to_probability", "probability_to_logit", "sigmoid"]


def _float_array(x: Any) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind not in "uib":
        raise TypeError(f"Expected real numbers, got dtype {array.dtype}.")
    return array.astype(np.float64)


def logit_to_probability(x: Any) -> np.ndarray | float:
    """Logistic sigmoid ``1 / (1 + exp(-x))`` without overflow for large ``|x|``.

    Parameters
    ----------
    x : array_like or float
        Logits. Float arrays keep their dtype; other inputs become float64.

    Returns
    -------
    numpy.ndarray or float
        Probabilities in [0, 1]; a Python float for scalar input.
    """
    logits = _float_array(x)
    with np.errstate(under="ignore"):  # exp(-large) -> 0 is the right answer
        e = np.exp(-np.abs(logits))
    out = np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(logits.dtype, copy=False)
    return float(out) if out.ndim == 0 else out


def probability_to_logit(p: Any, eps: float = 1e-7) -> np.ndarray | float:
    """Inverse sigmoid ``log(p / (1 - p))``, finite for every probability.

    Parameters
    ----------
    p : array_like or float
        Probabilities; values are clipped to ``[eps, 1 - eps]`` first so that 0 and 1 map to
        finite logits (about -16.1 and +16.1 with the default ``eps``).
    eps : float, optional
        Clipping margin, in (0, 0.5).

    Returns
    -------
    numpy.ndarray or float
        Logits with the float dtype of ``p`` (float64 for non-float input); a Python float
        for scalar input.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}.")
    probs = _float_array(p)
    clipped = np.clip(probs.astype(np.float64, copy=False), eps, 1.0 - eps)
    out = (np.log(clipped) - np.log1p(-clipped)).astype(probs.dtype, copy=False)
    return float(out) if out.ndim == 0 else out


def sigmoid(values: np.ndarray) -> np.ndarray:
    """Logistic function of a logit map, as float32 (stable for large values; faster than
    :func:`logit_to_probability` on whole images)."""
    return (0.5 * (1.0 + np.tanh(0.5 * values))).astype(np.float32, copy=False)
