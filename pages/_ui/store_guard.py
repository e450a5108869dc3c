"""What every page checks of the run store before it draws.

- :func:`store_guard` (app.py, and each page that reads runs, call it first): a store this simlab cannot
  open (written by a newer simlab, damaged, unreadable) is one line on the page, which then stops; run rows
  that cannot be read are named ("corrupt run <id>: ...") with a link to the Runs page, where
  :func:`corrupt_runs_panel` deletes them.
- :func:`predictions_note`: the predictions of a run that could not all be read, named above what is drawn.
"""

from __future__ import annotations

import sqlite3

import pandas as pd
import streamlit as st

from pages._ui.formatting import escape_md
from pages._ui.links import page_link
from pages._ui.store import clear_runs_cache, store_path
from simlab.store import Store, StoreError, StoreTooNew

RUNS_PAGE = "pages/runs.py"
SHOWN = 3  # corrupt runs named on a page (the Runs page lists them all)


@st.cache_data(show_spinner=False, ttl=2)
def _corrupt(path: str) -> list[tuple[str, str]]:
    """(id, "corrupt run <id>: what is wrong") of each run row that cannot be read (cached for 2 s)."""
    return [(str(exc.run_id), str(exc)) for exc in Store(path).corrupt_runs()]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def store_guard(name_corrupt: bool = True) -> None:
    """Stop the page with one line when the store cannot be opened; name the runs that cannot be read
    (unless ``name_corrupt`` is False: app.py, which runs before every page, and the Runs page, which lists
    them with a Delete button each)."""
    try:
        corrupt = _corrupt(str(store_path()))
    except (StoreTooNew, StoreError, sqlite3.Error, OSError) as exc:
        st.error(escape_md(_one_line(exc)), icon=":material/database:")
        st.stop()
    if corrupt and name_corrupt:
        more = f"  \n(and {len(corrupt) - SHOWN} more)" if len(corrupt) > SHOWN else ""
        st.warning("  \n".join(escape_md(message) for _, message in corrupt[:SHOWN]) + more
                   + "  \nThese runs are left out until they are deleted on the Runs page.",
                   icon=":material/report:")
        page_link(RUNS_PAGE, "Runs: delete the corrupt runs", icon=":material/history:")


def corrupt_runs_panel() -> None:
    """On the Runs page: each run row that cannot be read, what is wrong with it, and a button to delete it."""
    corrupt = _corrupt(str(store_path()))
    for run_id, message in corrupt:
        text, button = st.columns([6, 1], vertical_alignment="center")
        text.warning(escape_md(message), icon=":material/report:")
        if button.button("Delete", key=f"delete_corrupt_{run_id}", icon=":material/delete:",
                         help="Deletes this row, and any predictions and curves stored under its id."):
            Store(store_path()).delete_run(run_id)
            _corrupt.clear()
            clear_runs_cache()
            st.toast(f"Deleted run {run_id}.", icon=":material/delete:")
            st.rerun()


def predictions_note(predictions: pd.DataFrame) -> None:
    """Name the stored predictions of a run that could not be read (they are left out of what is drawn)."""
    if problem := predictions.attrs.get("problem"):
        st.warning(escape_md(problem), icon=":material/report:")
