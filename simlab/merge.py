"""Merge strategies: two image vectors -> one pair vector for a classifier.

Each merge is declared once, written against an array namespace ``xp`` that offers the functions
numpy and ``keras.ops`` share (``abs``, ``square``, ``sqrt``, ``sum``, ``maximum``,
``concatenate``). The same entry merges cached vectors with numpy here and runs inside a Keras model
(``keras.ops``) when fine-tuning, so vectors and pixels agree and a new merge is one entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def l2_normalise(x, xp: Any = np):
    """Each row scaled to unit length (rows of zeros stay zero)."""
    # sqrt(sum(x * x)): what numpy's linalg.norm and keras.ops.norm compute, to the bit (gradients too).
    norms = xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))
    return x / xp.maximum(norms, 1e-12)


def _dot(a, b, xp: Any = np):
    return l2_normalise(a, xp) * l2_normalise(b, xp)


def _l1(a, b, xp: Any = np):
    return xp.abs(a - b)


def _l2(a, b, xp: Any = np):
    return xp.square(a - b)


def _concat(a, b, xp: Any = np):
    return xp.concatenate([_dot(a, b, xp), _l1(a, b, xp), _l2(a, b, xp)], axis=-1)


@dataclass(frozen=True)
class Merge:
    """``fn(a, b, xp=numpy)``: rows of ``a`` and ``b`` -> merged rows, in the array namespace ``xp``."""

    name: str
    fn: Callable[..., Any]
    description: str
    width: int = 1  # output dimension as a multiple of the input dimension


MERGES: dict[str, Merge] = {m.name: m for m in (
    Merge("dot", _dot, "Elementwise product of L2-normalised vectors (sums to the cosine)."),
    Merge("l1", _l1, "Absolute difference |a - b|."),
    Merge("l2", _l2, "Squared difference (a - b)^2."),
    Merge("concat", _concat, "dot, l1 and l2 side by side.", width=3),
)}


def get_merge(name: str) -> Merge:
    try:
        return MERGES[name]
    except KeyError:
        raise ValueError(f"Unknown merge {name!r}. Choose one of: {', '.join(MERGES)}") from None


def fuse(vector_sets: list[np.ndarray]) -> np.ndarray:
    """Fusion of several backbones: each set L2-normalised, then concatenated per image."""
    if len(vector_sets) == 1:
        return vector_sets[0]
    return np.concatenate([l2_normalise(v) for v in vector_sets], axis=1)


def merge_pairs(vectors: np.ndarray, left: np.ndarray, right: np.ndarray, name: str) -> np.ndarray:
    """The merged vector of every pair (float32), computed in chunks to bound memory."""
    fn = get_merge(name).fn
    out = [fn(vectors[left[i:i + 4096]], vectors[right[i:i + 4096]]) for i in range(0, len(left), 4096)]
    if not out:
        return np.zeros((0, vectors.shape[1] * get_merge(name).width), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
