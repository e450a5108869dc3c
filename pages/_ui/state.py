"""The session's state shared by every page: the current dataset (kept in the URL as ``?dataset=``, so a reload
or a shared link restores it) and the ones picked before.

A dataset named by a URL is not trusted: any web page can link here, and opening a dataset reads and hashes
every file it names. A linked dataset opens at once only when it is the demo, ``$SIMLAB_DATASET`` or one
opened in this app by hand before (:class:`simlab.store.known_datasets.KnownDatasets`); any other one waits
for a confirmation on screen (:func:`ask_about_linked_dataset`), and until then no file of it is touched.
"""

from __future__ import annotations

import logging
import os

import streamlit as st

from pages._ui.formatting import escape_md
from pages._ui.store import cached_runs, store_path
from pages._ui.url_state import set_url, url_value
from simlab.data import DATASET_KINDS
from simlab.store.known_datasets import KnownDatasets, normalise_spec

log = logging.getLogger(__name__)

DATASET_KEY = "dataset_spec"  # st.session_state key of the current dataset spec
DATASET_PARAM = "dataset"  # its query parameter
RECENT_KEY = "recent_datasets"  # st.session_state key of the specs picked in this session, newest first
LINKED_KEY = "linked_dataset"  # st.session_state key of a linked dataset waiting for a confirmation
KNOWN_IN_PICKER = 20  # datasets opened before that the sidebar's picker offers, most recent first


def default_dataset_spec() -> str:
    """The dataset a new session starts on: ``$SIMLAB_DATASET`` or ``demo``."""
    return os.environ.get("SIMLAB_DATASET", "").strip() or "demo"


def known_datasets() -> KnownDatasets:
    """The list of datasets opened in this app by hand, in the store's file."""
    return KnownDatasets(store_path())


def trusted_dataset(spec: str) -> bool:
    """Whether ``spec`` may open without asking: the demo, ``$SIMLAB_DATASET``, or one opened here by hand before.
    Reads no file of the dataset (an unreadable list trusts nothing more than the first two)."""
    key = normalise_spec(spec)
    if key in {"demo", normalise_spec(default_dataset_spec())}:
        return True
    try:
        return spec in known_datasets()
    except Exception:  # an unreadable store: ask rather than trust
        log.warning("could not read the list of known datasets", exc_info=True)
        return False


def remember_dataset(spec: str) -> None:
    """Put ``spec`` on the list of datasets opened by hand (a link to it then opens without asking)."""
    try:
        known_datasets().add(spec)
    except Exception:  # a read-only store: the dataset still opens, a later link to it asks again
        log.warning("could not remember the dataset %r as opened by hand", spec, exc_info=True)


def open_dataset(spec: str) -> None:
    """The person chose ``spec`` (the Data page, the sidebar's picker, a confirmed link): remember it and make it
    the current dataset."""
    remember_dataset(spec)
    set_dataset_spec(spec)


def _linkable(spec: str) -> bool:
    """``kind:path`` or a bare kind name: the only forms the app writes into a URL (tells without touching disk)."""
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    return kind in DATASET_KINDS and (bool(sep) == (kind != "demo") or kind == "demo" and not arg.strip())


def _spec_from_url() -> str | None:
    """A trusted dataset spec the URL brings that this session has not seen yet (a reload, a shared link).
    An untrusted one is kept aside for :func:`ask_about_linked_dataset`; a malformed one is ignored."""
    spec = url_value(DATASET_PARAM)
    if not spec or not spec.strip():
        return None
    spec = spec.strip()
    if spec == st.session_state.get(DATASET_KEY) or trusted_dataset(spec):
        return spec
    if not _linkable(spec):
        log.warning("ignoring the URL's dataset %r: not a dataset spec", spec)
        return None
    log.warning("a link names the dataset %r, not opened in this app before: asking before opening it", spec)
    st.session_state[LINKED_KEY] = spec
    return None


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


def _open_linked(spec: str) -> None:
    st.session_state.pop(LINKED_KEY, None)
    open_dataset(spec)


def _stay() -> None:
    st.session_state.pop(LINKED_KEY, None)


def ask_about_linked_dataset() -> None:
    """When a link named a dataset not opened here before, ask whether to open it, and stop the page until the
    answer. Call it after the sidebar and before the page runs."""
    spec = st.session_state.get(LINKED_KEY)
    if not spec:
        return
    current = current_dataset_spec()
    with st.container(border=True):
        named = f"`{spec}`" if "`" not in spec else f"**{escape_md(spec)}**"
        st.warning(f"Open dataset {named}? It was not opened in this app before.",
                   icon=":material/link:")
        st.caption("The link you followed names it. Opening a dataset reads every file it names: open it only if "
                   "you expected this link to bring you here.")
        left, right = st.columns(2)
        left.button("Open this dataset", type="primary", key="linked_dataset_open", on_click=_open_linked,
                    args=(spec,))
        right.button(f"Stay on {current}", key="linked_dataset_stay", on_click=_stay)
    st.stop()


def known_dataset_specs() -> list[str]:
    """Specs to offer in the picker: current, demo, $SIMLAB_DATASET, recent ones, those opened here before,
    those with runs."""
    specs = [current_dataset_spec(), "demo", default_dataset_spec(), *st.session_state.get(RECENT_KEY, [])]
    try:
        specs += known_datasets().specs()[:KNOWN_IN_PICKER]
    except Exception:  # an unreadable store must not hide the picker
        log.warning("could not list the datasets opened before", exc_info=True)
    try:
        specs += [r.dataset for r in cached_runs() if r.dataset]
    except Exception:  # an unreadable store must not hide the picker
        log.warning("could not list the datasets of the stored runs", exc_info=True)
    return list(dict.fromkeys(s for s in specs if s))
