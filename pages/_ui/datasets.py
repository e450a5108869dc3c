"""The current dataset, loaded once and cached; the guard of pages that cannot work without one."""

from __future__ import annotations

import logging

import streamlit as st

from pages._ui.formatting import escape_md
from pages._ui.state import current_dataset_spec
from simlab.data import DatasetError, load_dataset
from simlab.data.demo import demo_dir
from simlab.paths import cache_dir

log = logging.getLogger(__name__)


@st.cache_data(show_spinner=False, ttl=600, max_entries=8)
def _load_dataset(spec: str, cache_root: str):
    return load_dataset(spec)


def load_dataset_cached(spec: str, show_error: bool = True):
    """The Dataset for ``spec`` (cached), or None with an st.error saying what is wrong."""
    first_demo = spec == "demo" and not demo_dir().exists()
    text = ("Generating the demo images (first time only, up to a minute)…" if first_demo
            else f"Loading {spec}…")
    try:
        with st.spinner(text):
            return _load_dataset(spec, str(cache_dir()))
    except DatasetError as exc:
        if show_error:
            st.error(f"Could not load the dataset **{escape_md(spec)}**: {escape_md(str(exc))}",
                     icon=":material/folder_off:")
    except Exception as exc:  # anything else: its kind only (its text may quote the file), the details in the log
        log.warning("loading the dataset %s failed", spec, exc_info=True)
        if show_error:
            st.error(f"Could not load the dataset {escape_md(spec)}: {escape_md(type(exc).__name__)} "
                     "(the details are in the server's log).")
    return None


def load_current_dataset():
    """The current Dataset (cached by spec), or None after showing an st.error."""
    return load_dataset_cached(current_dataset_spec())


def require_dataset():
    """The current Dataset; when it does not load, a pointer to the Data page and the page stops here."""
    dataset = load_current_dataset()
    if dataset is None:
        st.info("Choose a dataset that loads on the Data page first.", icon=":material/arrow_forward:")
        st.stop()
    return dataset


def clear_dataset_cache() -> None:
    """Forget cached datasets (after files changed on disk)."""
    _load_dataset.clear()
