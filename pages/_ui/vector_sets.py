"""The cached vector sets of a dataset, as the pages see them: listed, read and looked up through
simlab.vectors.cache, the one owner of the cache's layout."""

from __future__ import annotations

import logging

import numpy as np
import streamlit as st

from pages._ui.store import cached_runs
from simlab.runspec import split_backbone
from simlab.vectors.cache import CorruptCache, VectorCache, cached_sets, read_path

log = logging.getLogger(__name__)


def vector_sets(fingerprint: str) -> list[dict]:
    """Cached vector sets of this dataset (no TensorFlow: reads the cache folder)."""
    return [s for s in cached_sets() if s["fingerprint"] == fingerprint]


@st.cache_data(show_spinner=False, max_entries=16)
def read_set(path: str, mtime: float) -> tuple[np.ndarray, list[str]]:
    """The vectors and image digests of a listed set (``path`` from :func:`vector_sets`; cached by mtime).
    A file that cannot be read gives no vectors, so that :func:`align` reports it as not matching."""
    try:
        cached = read_path(path)
    except CorruptCache as exc:
        log.warning("%s", exc)
        return np.zeros((0, 0), np.float32), []
    return cached.vectors, cached.digests


def vectors_cached(fingerprint: str, backbone: str, weights: str) -> bool:
    """Whether the vectors of a backbone (or of each part of a fusion "a+b") are cached for a dataset."""
    try:
        return all(VectorCache(b, weights).has(fingerprint) for b in split_backbone(backbone))
    except ValueError:  # a backbone no longer in the registry
        return False


def align(dataset_digests: list[str], digests: list[str]) -> list[int]:
    """Dataset index of each cached vector (the cache keeps dataset order, minus undecodable images);
    empty when the set no longer matches the dataset."""
    out, j = [], 0
    for i, d in enumerate(dataset_digests):
        if j < len(digests) and d == digests[j]:
            out.append(i)
            j += 1
    return out if j == len(digests) else []


def set_key(s: dict) -> str:
    """The key that tells one cached vector set from every other: the backbone configuration's digest and
    the dataset's fingerprint (two datasets vectorised with one backbone share the first part only)."""
    return f"{s['key'].rsplit('-', 1)[-1]}/{s['fingerprint'][:12]}"


def dataset_names(current) -> dict[str, str]:
    """Dataset spec of each fingerprint this app knows: the current dataset's, then those of stored runs."""
    names = {}
    try:
        names = {r.fingerprint: r.dataset for r in cached_runs() if r.fingerprint and r.dataset}
    except Exception:  # an unreadable store: sets are listed without their dataset's name
        log.warning("could not read the datasets of the stored runs", exc_info=True)
    names[current.fingerprint] = current.spec
    return names
