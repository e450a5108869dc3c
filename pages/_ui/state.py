"""The session's state shared by every page: the current dataset and the ones picked before."""

from __future__ import annotations

import logging
import os

import streamlit as st

from pages._ui.store import cached_runs

log = logging.getLogger(__name__)

DATASET_KEY = "dataset_spec"  # st.session_state key of the current dataset spec
RECENT_KEY = "recent_datasets"  # st.session_state key of the specs picked in this session, newest first


def default_dataset_spec() -> str:
    """The dataset a new session starts on: ``$SIMLAB_DATASET`` or ``demo``."""
    return os.environ.get("SIMLAB_DATASET", "").strip() or "demo"


def current_dataset_spec() -> str:
    """The dataset spec the pages work on (kept in st.session_state)."""
    if DATASET_KEY not in st.session_state:
        st.session_state[DATASET_KEY] = default_dataset_spec()
    return st.session_state[DATASET_KEY]


def set_dataset_spec(spec: str) -> None:
    """Make ``spec`` the current dataset (and remember it in the sidebar's list)."""
    st.session_state[DATASET_KEY] = spec
    recent = st.session_state.setdefault(RECENT_KEY, [])
    if spec not in recent:
        recent.insert(0, spec)


def known_dataset_specs() -> list[str]:
    """Specs to offer in the picker: current, demo, $SIMLAB_DATASET, recent ones, those with runs."""
    specs = [current_dataset_spec(), "demo", default_dataset_spec(), *st.session_state.get(RECENT_KEY, [])]
    try:
        specs += [r.dataset for r in cached_runs() if r.dataset]
    except Exception:  # an unreadable store must not hide the picker
        log.warning("could not list the datasets of the stored runs", exc_info=True)
    return list(dict.fromkeys(s for s in specs if s))
