"""Whole jobs composed from the engine, Qt-free: the one place the command line, the
batch runner and the docks take them from.

- :mod:`.evaluate`: score a model on labelled images, pixels and nuclei, one pooling rule.
"""

from __future__ import annotations

from .evaluate import POOLING_RULE, evaluate_model, iter_evaluate_model

__all__ = ["POOLING_RULE", "evaluate_model", "iter_evaluate_model"]
