"""One run per configuration: a grid (or the demo) whose cells already have stored results is offered as
"open the results" or "run again anyway" instead of silently storing every run twice.

The rule (which stored run is the same configuration) is simlab.experiment.stored_cells; this only draws.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from pages._ui.formatting import fmt_when
from pages._ui.store import cached_runs
from simlab.experiment import GridConfig, stored_cells


def start_once(config: GridConfig, key: str, start: Callable[[bool], None], clicked: bool,
               fingerprint: str | None = None) -> None:
    """After a click on a start button (``clicked``): start at once when nothing of ``config`` is stored yet;
    else offer the stored results or a new set of runs. ``start(reuse)`` starts the job (``reuse``: stored
    cells are reported, not run again)."""
    offer = f"_{key}_offer"
    if clicked:
        found = stored_cells(config, cached_runs(), fingerprint)
        if not found:
            start(True)
            return
        st.session_state[offer] = True
    if not st.session_state.get(offer):
        return
    found = stored_cells(config, cached_runs(), fingerprint)
    total = len(config.cells())
    if not found:
        st.session_state.pop(offer, None)
        return
    newest = max(run.finished or run.created or 0 for run in found.values())
    missing = total - len(found)
    with st.container(border=True, key=f"{key}_offer_box"):
        st.markdown(f"**{len(found)} of these {total} runs are already stored** (same method, protocol, seed and "
                    f"data; the newest finished {fmt_when(newest)}). Running them again gives the same numbers.")
        c1, c2, c3 = st.columns([2, 2, 1])
        if missing == 0:
            if c1.button("Open the results", type="primary", icon=":material/grid_on:", key=f"{key}_open"):
                st.session_state.pop(offer, None)
                st.switch_page("pages/compare.py")
        elif c1.button(f"Run only the {missing} missing", type="primary", icon=":material/play_arrow:",
                       key=f"{key}_missing"):
            st.session_state.pop(offer, None)
            start(True)
        if c2.button("Run again anyway", icon=":material/replay:", key=f"{key}_again",
                     help="Store a new set of runs beside the old ones (tables then show one row per "
                          "configuration with a count)."):
            st.session_state.pop(offer, None)
            start(False)
        if c3.button("Cancel", key=f"{key}_cancel"):
            st.session_state.pop(offer, None)
            st.rerun()
