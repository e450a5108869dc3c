"""simlab's Streamlit entry point: the navigation, the dataset picker and the device badge.

Run with ``streamlit run app.py`` (or ``make run``). Every page lives in pages/ and reads and
writes through simlab; what the pages share lives in pages/_ui/.
"""

from __future__ import annotations

import streamlit as st

from pages._ui.auth import require_access
from pages._ui.device import device_badge
from pages._ui.state import ask_about_linked_dataset, current_dataset_spec, known_dataset_specs, open_dataset
from pages._ui.store_guard import store_guard
from pages._ui.url_state import forget_cleared

HOME = "pages/home.py"
# section -> (file, title, icon)
PAGES = {
    "": [(HOME, "Home", ":material/home:")],
    "Prepare": [("pages/data.py", "Data", ":material/photo_library:"),
                ("pages/vectorize.py", "Vectorize", ":material/scatter_plot:")],
    "Experiment": [("pages/train.py", "Train", ":material/model_training:"),
                   ("pages/finetune.py", "Fine-tune", ":material/tune:")],
    "Explore": [("pages/compare.py", "Compare", ":material/grid_on:"),
                ("pages/inspect.py", "Inspect", ":material/search:"),
                ("pages/diff.py", "Two runs", ":material/compare_arrows:"),
                ("pages/search.py", "Search", ":material/image_search:")],
    "Manage": [("pages/runs.py", "Runs", ":material/history:")],
}

SIDEBAR_DATASET_KEY = "sidebar_dataset"


def navigation():
    return st.navigation({section: [st.Page(file, title=title, icon=icon, default=file == HOME)
                                    for file, title, icon in entries]
                          for section, entries in PAGES.items()})


def _picked() -> None:
    open_dataset(st.session_state[SIDEBAR_DATASET_KEY])


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
require_access()
forget_cleared()
page = navigation()
store_guard(name_corrupt=False)  # a store this simlab cannot open stops here, in one line
sidebar()
ask_about_linked_dataset()  # a link that names a dataset not opened here before waits for a yes
page.run()
