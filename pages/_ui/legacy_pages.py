"""Leave Streamlit's legacy ``pages/`` folder mode, so that every run goes through app.py's st.navigation.

Streamlit treats a folder named ``pages/`` beside the entry script as a v1 multipage app until
st.navigation has run once in the server process: a first visit to e.g. /data would run pages/data.py
alone, with the folder's raw file list (app, compare, data, ...) as the sidebar. Streamlit (1.67) has no
setting for this: ``client.showSidebarNavigation`` only hides that list, and the page would still run
without app.py's sidebar. The folder keeps its name (the user's layout), so the first such run clears the
private class attribute ``PagesManager.uses_pages_directory`` and reruns; the rerun goes through app.py
and lands on the same page (page ids are their URL paths).

tests/test_app_pages.py fails the day Streamlit renames or stops reading that attribute.
"""

from __future__ import annotations

import logging

import streamlit as st

log = logging.getLogger(__name__)

try:
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx
except ImportError:  # a Streamlit without these internals: the legacy mode cannot be left this way
    PagesManager = get_script_run_ctx = None
    log.warning("streamlit.runtime.pages_manager is gone: a first visit to a page URL may run it alone")


def leave_legacy_multipage_mode() -> None:
    """Inside a script run in the legacy mode: switch it off for the server process and rerun."""
    if PagesManager is None or get_script_run_ctx() is None:
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()
