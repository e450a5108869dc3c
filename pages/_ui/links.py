"""Links between pages, the switch to a run on Inspect, and the empty state of pages that show runs."""

from __future__ import annotations

import contextlib

import streamlit as st
from streamlit.errors import StreamlitAPIException, StreamlitPageNotFoundError


def page_link(page: str, label: str, icon: str | None = None, query_params: dict | None = None) -> bool:
    """st.page_link to a page (e.g. 'pages/compare.py'); nothing when the page is not in the navigation
    (a page file run alone, as the page tests do). Returns whether the link was drawn."""
    with contextlib.suppress(StreamlitAPIException, StreamlitPageNotFoundError):
        st.page_link(page, label=label, icon=icon, query_params=query_params)
        return True
    return False


def open_on_inspect(run_id: str) -> None:
    """Switch to the Inspect page showing a run's pairs (when a page runs alone, say where to look)."""
    try:
        st.switch_page("pages/inspect.py", query_params={"run": run_id})
    except (StreamlitAPIException, StreamlitPageNotFoundError):
        st.info(f"Run {run_id} is selected: open the Inspect page to see its pairs.")


def no_runs_yet() -> None:
    """The empty state of pages that show runs: say so, and link to where runs are made."""
    st.info("No runs yet - run the demo experiment on Home or start a grid on Train.",
            icon=":material/lightbulb:")
    cols = st.columns(4)
    with cols[0]:
        page_link("pages/home.py", "Home: the demo experiment", icon=":material/home:")
    with cols[1]:
        page_link("pages/train.py", "Train: start a grid", icon=":material/model_training:")
