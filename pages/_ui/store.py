"""The run store of this session, and its runs as typed records (cached for 2 s, cheap enough for every page)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from simlab.paths import cache_dir
from simlab.store import Run, Store
from simlab.store.known_datasets import normalise_spec


def store_path() -> Path:
    """Path of the run store for this session (``$SIMLAB_CACHE/simlab.db``)."""
    return cache_dir() / "simlab.db"


@st.cache_resource(show_spinner=False)
def _store_at(path: str) -> Store:
    return Store(path)


def store() -> Store:
    """The Store for the default path (cached; safe to share: each call opens its own connection)."""
    return _store_at(str(store_path()))


@st.cache_data(show_spinner=False, ttl=2)
def _runs(path: str) -> list[Run]:
    return Store(path).list_runs()


def cached_runs() -> list[Run]:
    """All runs, newest first (cached for 2 s: cheap enough to call from every page)."""
    return _runs(str(store_path()))


def same_dataset(a: str | None, b: str | None) -> bool:
    """Whether two dataset specs name one dataset (``folder:x/`` and ``folder:/abs/x`` do)."""
    return normalise_spec(a or "") == normalise_spec(b or "")


def runs_of_dataset(spec: str | None) -> list[Run]:
    """The cached runs made on the dataset ``spec`` names, newest first."""
    return [r for r in cached_runs() if same_dataset(r.dataset, spec)]


def clear_runs_cache() -> None:
    """Forget the cached runs list (after deleting or adding runs)."""
    _runs.clear()

