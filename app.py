"""simlab's Streamlit entry point: the navigation, the dataset picker and the device badge.

Run with ``streamlit run app.py`` (or ``make run``). Every page lives in pages/ and reads and
writes through simlab; a page whose file does not exist yet is simply not listed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.common import current_dataset_spec, device_badge, known_dataset_specs, set_dataset_spec

ROOT = Path(__file__).resolve().parent

# section -> (file, title, icon); a page is listed only if its file exists
PAGES = {
    "": [("pages/home.py", "Home", ":material/home:")],
    "Prepare": [("pages/data.py", "Data", ":material/photo_library:"),
                ("pages/vectorize.py", "Vectorize", ":material/scatter_plot:")],
    "Experiment": [("pages/train.py", "Train", ":material/model_training:"),
                   ("pages/finetune.py", "Fine-tune", ":material/tune:")],
    "Explore": [("pages/compare.py", "Compare", ":material/grid_on:"),
                ("pages/inspect.py", "Inspect", ":material/search:"),
                ("pages/search.py", "Search", ":material/image_search:")],
    "Manage": [("pages/runs.py", "Runs", ":material/history:")],
}

SIDEBAR_DATASET_KEY = "sidebar_dataset"


def navigation():
    sections = {}
    for section, entries in PAGES.items():
        pages = [st.Page(file, title=title, icon=icon, default=file == "pages/home.py")
                 for file, title, icon in entries if (ROOT / file).exists()]
        if pages:
            sections[section] = pages
    return st.navigation(sections)


def _picked() -> None:
    set_dataset_spec(st.session_state[SIDEBAR_DATASET_KEY])


def sidebar() -> None:
    with st.sidebar:
        current = current_dataset_spec()
        options = known_dataset_specs()
        if st.session_state.get(SIDEBAR_DATASET_KEY) != current:
            st.session_state[SIDEBAR_DATASET_KEY] = current
        st.selectbox("Dataset", options, key=SIDEBAR_DATASET_KEY, on_change=_picked,
                     help="The images every page works on. Add a folder or CSV on the Data page.")
        device_badge()


st.set_page_config(page_title="simlab", page_icon="🔍", layout="wide")
page = navigation()
sidebar()
page.run()
