"""Links between pages and the empty states that point to where the next step happens."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException, StreamlitPageNotFoundError

from simlab.paths import REPO_ROOT


def page_exists(page: str) -> bool:
    """Whether a page file (e.g. 'pages/compare.py') exists."""
    return (REPO_ROOT / page).exists()


def page_link(page: str, label: str, icon: str | None = None, query_params: dict | None = None) -> None:
    """st.page_link to a page if its file exists (silently nothing otherwise)."""
    if page_exists(page):
        try:
            st.page_link(page, label=label, icon=icon, query_params=query_params)
        except (StreamlitAPIException, StreamlitPageNotFoundError):  # not in st.navigation (a page run alone)
            pass


def empty_state(text: str, page: str | None = None, label: str | None = None, icon: str = ":material/arrow_forward:") -> None:
    """An info box saying what to do next, with an optional link to the page that does it."""
    st.info(text, icon=icon)
    if page:
        page_link(page, label or "Go", icon=":material/arrow_forward:")


def no_runs_yet() -> None:
    """The empty state of pages that show runs: say so, and link to where runs are made."""
    st.info("No runs yet - run the demo experiment on Home or start a grid on Train.",
            icon=":material/lightbulb:")
    cols = st.columns(4)
    with cols[0]:
        page_link("pages/home.py", "Home: the demo experiment", icon=":material/home:")
    with cols[1]:
        page_link("pages/train.py", "Train: start a grid", icon=":material/model_training:")
