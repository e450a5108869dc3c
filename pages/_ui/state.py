"""The session's state shared by every page: the current dataset (kept in the URL as ``?dataset=``, so a reload
or a shared link restores it) and the ones picked before."""

from __future__ import annotations

import logging
import os

import streamlit as st

from pages._ui.store import cached_runs
from pages._ui.url_state import set_url, url_value
from simlab.data import DatasetError, parse_spec

log = logging.getLogger(__name__)

DATASET_KEY = "dataset_spec"  # st.session_state key of the current dataset spec
DATASET_PARAM = "dataset"  # its query parameter
RECENT_KEY = "recent_datasets"  # st.session_state key of the specs picked in this session, newest first


def default_dataset_spec() -> str:
    """The dataset a new session starts on: ``$SIMLAB_DATASET`` or ``demo``."""
    return os.environ.get("SIMLAB_DATASET", "").strip() or "demo"


def _spec_from_url() -> str | None:
    """A dataset spec the URL brings that this session has not seen yet (a reload, a shared link), if well formed."""
    spec = url_value(DATASET_PARAM)
    if not spec or not spec.strip():
        return None
    try:
        parse_spec(spec)
    except DatasetError:
        log.warning("ignoring the URL's dataset %r: not a dataset spec", spec)
        return None
    return spec.strip()


def current_dataset_spec() -> str:
    """The dataset spec the pages work on: kept in st.session_state and mirrored in the URL's ``?dataset=``."""
    spec = _spec_from_url()
    if spec is not None:
        set_dataset_spec(spec)
    elif DATASET_KEY not in st.session_state:
        set_dataset_spec(default_dataset_spec())
    else:
        set_url(DATASET_PARAM, st.session_state[DATASET_KEY])
    return st.session_state[DATASET_KEY]


def set_dataset_spec(spec: str) -> None:
    """Make ``spec`` the current dataset (in the URL too, and remembered in the sidebar's list)."""
    st.session_state[DATASET_KEY] = spec
    set_url(DATASET_PARAM, spec)
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
