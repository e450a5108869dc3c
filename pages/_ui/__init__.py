"""What the pages share, one small module each (pages import from these modules, never the reverse):

    legacy_pages   leave Streamlit's legacy pages/ folder mode (runs on import of this package)
    auth           who may use the app (a password when it is served beyond this machine)
    state          the session's current dataset (kept in the URL) and its recent ones
    url_state      a widget's value mirrored in a query parameter (reloads and shared links restore it)
    store          the run store and its runs as typed records (cached for 2 s)
    datasets       loading the current dataset (cached), and the guard of pages that need one
    vector_sets    the cached vector sets of a dataset, read through simlab's vector cache
    job_panel      starting a background job and its live panel (progress, Cancel, outcome)
    thumbs         thumbnails: data URIs, cached files, grids of tiles
    formatting     Markdown escaping, short paths, durations, dates, status symbols, classifier names
    run_names      one way to name a stored run (backbone · merge · classifier · id, and when)
    embedding_map  the Vectorize page's 2-D map of a vector set, with images on hover, click and lasso
    device         the device badge (detected in a child process)
    options        widget choices, ranges and defaults from simlab.options (declared once there)
    links          links between pages, the switch to a run on Inspect, the empty state of run pages

Nothing here holds a model; slow reads are cached.
"""

import simlab.finetune  # noqa: F401  (registers the siamese-<run id> backbones every page may list or open)
from pages._ui.legacy_pages import leave_legacy_multipage_mode

leave_legacy_multipage_mode()
