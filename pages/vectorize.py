"""Vectorize: turn every image into one vector per backbone (a background job), and map them in 2-D."""

from __future__ import annotations

import os
import socket

import pandas as pd
import streamlit as st

from pages._ui.datasets import require_dataset
from pages._ui.embedding_map import embedding_map
from pages._ui.job_panel import job_panel, latest_job, start_job
from pages._ui.options import format_choice, widget_choices
from pages._ui.state import current_dataset_spec
from pages._ui.store_guard import store_guard
from pages._ui.vector_sets import align, dataset_names, read_set, set_key
from simlab.backbones import list_backbones, weights_status
from simlab.options import choice_label
from simlab.vectors.cache import cached_sets

STATUS_TEXT = {"bundled": "✓ bundled (works offline)", "cached": "✓ downloaded (works offline)",
               "download": "↓ will download on first use", "offline": "✗ offline: random weights only"}
WEIGHTS_HOST = "storage.googleapis.com"  # Keras' ImageNet weights; a backbone's options may name another


@st.cache_resource(show_spinner="Loading the backbone registry…")
def backbone_table() -> list[dict]:
    """Static facts of every registered backbone (listing the registry loads Keras: done once)."""
    return [{"name": b.name, "input": b.input_size, "dim": b.dim, "description": b.description,
             "bundled": b.bundled, "source": backbone_source(b), "preset": b.options.get("preset"),
             "host": b.options.get("weights_host", WEIGHTS_HOST)} for b in list_backbones()]


def backbone_source(b) -> str:
    """Where a backbone's weights come from, in a few words."""
    if b.options.get("preset"):
        return "KerasHub preset"
    if b.options.get("tuned"):
        return "fine-tuned here"
    if b.options.get("weight_free"):
        return "no weights"
    return "bundled package" if b.bundled else "Keras applications"


@st.cache_data(ttl=300, show_spinner=False)
def online(host: str = WEIGHTS_HOST) -> bool:
    """Whether ``host`` (a weights server) is reachable (checked at most every 5 minutes)."""
    try:
        socket.create_connection((host, 443), timeout=1.5).close()
        return True
    except OSError:
        return False


def weights_state(name: str) -> str:
    """bundled, cached, download, or offline (a download that cannot happen: random weights only)."""
    status = weights_status(name)
    host = next((r["host"] for r in backbone_table() if r["name"] == name), WEIGHTS_HOST)
    return "offline" if status == "download" and not online(host) else status


store_guard()  # a store that cannot be opened: one line; corrupt runs named
st.title("Vectorize")
st.caption("A pretrained network turns each image into one vector. Vectors are cached on disk, keyed by the "
           "images' content and the backbone: computing them again is instant.")

dataset = require_dataset()

# --------------------------------------------------------------------------- backbones

st.subheader("Backbones")
table = pd.DataFrame(backbone_table())
table["weights"] = [STATUS_TEXT[weights_state(n)] for n in table["name"]]
st.dataframe(table[["name", "input", "dim", "weights", "source", "description"]], hide_index=True, width="stretch",
             height=35 * (len(table) + 1) + 3,  # every backbone in view, no inner scrolling
             column_config={"input": st.column_config.NumberColumn("input px"),
                            "dim": st.column_config.NumberColumn("vector size"),
                            "weights": st.column_config.TextColumn("pretrained weights"),
                            "source": st.column_config.TextColumn("weights from")})
st.caption("KerasHub backbones (DINOv2, CLIP, SigLIP2) download their preset once into "
           "`cache/weights/keras_hub/<preset>/`. Without internet, copy the preset folder there (or into "
           "`$SIMLAB_KERAS_HUB_DIR/<preset>/`), or use Random weights to test the pipeline.")

job = latest_job("vectorize")
running = job is not None and job.active
with st.form("vectorize_form"):
    names = list(table["name"])
    default = [n for n in names if table.set_index("name").loc[n, "bundled"]][:1] or names[:1]
    picked = st.multiselect("Backbones", names, default=default,
                            help="One vector set per backbone. Backbones marked 'will download' fetch their "
                                 "ImageNet weights once (internet needed).")
    weights = st.radio("Weights", widget_choices("weights"), format_func=format_choice("weights"), horizontal=True,
                       help="Random weights give meaningless vectors: they exist to test the pipeline quickly.")
    go_ = st.form_submit_button("Vectorize", type="primary", disabled=running,
                                help="A job is already running: see below." if running else None)
if go_:
    blocked = [n for n in picked if weights == "imagenet" and weights_state(n) == "offline"]
    presets = {r["name"]: r["preset"] for r in backbone_table() if r["preset"]}
    if not picked:
        st.warning("Pick at least one backbone.")
    elif blocked:
        hub = [f"`cache/weights/keras_hub/{presets[n]}/`" for n in blocked if n in presets]
        st.error(f"No internet here, so the pretrained weights of {', '.join(blocked)} cannot be downloaded. "
                 + (f"Copy each KerasHub preset folder (config.json, model.weights.h5, …) to {', '.join(hub)} "
                    "(or into `$SIMLAB_KERAS_HUB_DIR/<preset>/`). " if hub else "")
                 + ("Put Keras weights files under cache/weights/ (see `python -m simlab backbones`). "
                    if len(hub) < len(blocked) else "")
                 + "Or pick Random weights, or a bundled backbone.")
    else:
        start_job("vectorize", {"dataset": dataset.spec, "backbones": picked, "weights": weights})
        st.rerun()
if job is not None:
    job_panel(job.id)

# --------------------------------------------------------------------------- cached sets

st.subheader("Cached vector sets")
sets = pd.DataFrame(cached_sets())
if sets.empty:
    st.info("No vectors yet. Pick a backbone above and press **Vectorize** (or run the demo on the Home page).",
            icon=":material/arrow_forward:")
    st.stop()
sets["this dataset"] = sets["fingerprint"] == dataset.fingerprint
sets["weights"] = sets["weights"].map(lambda w: choice_label("weights", w))
known = dataset_names(dataset)
sets["dataset"] = [known.get(f, "another dataset") for f in sets["fingerprint"]]
sets["key"] = [set_key(row) for row in sets.to_dict("records")]
sets = sets.sort_values(["this dataset", "backbone"], ascending=[False, True], kind="stable").reset_index(drop=True)
st.dataframe(sets[["backbone", "weights", "dataset", "key", "images", "dim", "mb", "this dataset"]], hide_index=True,
             width="stretch", column_config={
                 "mb": st.column_config.NumberColumn("MB", format="%.2f"),
                 "dim": st.column_config.NumberColumn("vector size"),
                 "dataset": st.column_config.TextColumn(help="The dataset these vectors are of (named when this app "
                                                             "knows it: the current one, or one with runs)."),
                 "key": st.column_config.TextColumn(help="Backbone configuration / dataset fingerprint: the two "
                                                         "halves of the cache key. Vectors of two datasets with one "
                                                         "backbone share the first half only.")})

# --------------------------------------------------------------------------- embedding map

st.subheader("Embedding map")
mine = sets[sets["this dataset"]].reset_index(drop=True)
if mine.empty:
    st.info(f"No vectors for the current dataset ({current_dataset_spec()}) yet: vectorize it above.",
            icon=":material/arrow_forward:")
    st.stop()
c1, c2 = st.columns([3, 2])
with c1:
    choice = st.selectbox("Vector set", range(len(mine)), key="map_set",
                          format_func=lambda i: f"{mine.loc[i, 'backbone']} · {mine.loc[i, 'weights']} · "
                                                f"{mine.loc[i, 'images']} images · {mine.loc[i, 'key']}")
with c2:
    method = st.segmented_control("Projection", ["PCA", "t-SNE"], default="PCA", key="map_method") or "PCA"
row = mine.loc[choice]
path = row["path"]
_, digests = read_set(path, os.stat(path).st_mtime)
index = align(dataset.digests, digests)
if not index:
    st.warning("This vector set no longer matches the dataset's files; vectorize again.")
    st.stop()
if method == "t-SNE" and len(index) > 3000:
    st.caption("t-SNE on many points takes a while; PCA is instant.")
embedding_map(dataset, path, index, method, chart_key=f"map_{choice}_{method.replace('-', '')}")
