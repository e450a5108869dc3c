"""Merge strategies: two image vectors -> one pair vector for a classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _dot(a, b):
    return l2_normalise(a) * l2_normalise(b)


def _l1(a, b):
    return np.abs(a - b)


def _l2(a, b):
    return (a - b) ** 2


def _concat(a, b):
    return np.concatenate([_dot(a, b), _l1(a, b), _l2(a, b)], axis=-1)


@dataclass(frozen=True)
class Merge:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
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
