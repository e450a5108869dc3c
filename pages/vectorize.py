"""Vectorize: turn every image into one vector per backbone (a background job), and map them in 2-D."""

from __future__ import annotations

import html
import os
import socket

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from pages._ui.datasets import require_dataset
from pages._ui.job_panel import job_panel, latest_job, start_job
from pages._ui.state import current_dataset_spec
from pages._ui.thumbs import image_grid
from pages._ui.vector_sets import align, read_set
from simlab.backbones import list_backbones, weights_status
from simlab.jobs import ACTIVE
from simlab.vectors.cache import cached_sets

SELECTION_SHOWN = 48
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
           "#756bb1", "#636363", "#9c9ede", "#cedb9c", "#e7ba52", "#e7969c"]
STATUS_TEXT = {"bundled": "✓ bundled (works offline)", "cached": "✓ downloaded (works offline)",
               "download": "↓ will download on first use", "offline": "✗ offline: random weights only"}
WEIGHTS_HOST = "storage.googleapis.com"  # Keras' ImageNet weights; a backbone's options may name another
WEIGHT_LABELS = {"imagenet": "Pretrained (ImageNet, or the KerasHub preset's)", "random": "Random — for tests only"}


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


@st.cache_data(show_spinner="Projecting the vectors…", max_entries=16)
def project(path: str, mtime: float, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates of a cached vector set: PCA, or t-SNE on the first 50 principal components."""
    vectors, _ = read_set(path, mtime)
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if method == "PCA" or len(x) < 5:
        return PCA(n_components=2, random_state=seed).fit_transform(x) if len(x) >= 2 else np.zeros((len(x), 2))
    x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)


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
running = job is not None and job["status"] in ACTIVE
with st.form("vectorize_form"):
    names = list(table["name"])
    default = [n for n in names if table.set_index("name").loc[n, "bundled"]][:1] or names[:1]
    picked = st.multiselect("Backbones", names, default=default,
                            help="One vector set per backbone. Backbones marked 'will download' fetch their "
                                 "ImageNet weights once (internet needed).")
    weights = st.radio("Weights", list(WEIGHT_LABELS), format_func=WEIGHT_LABELS.get, horizontal=True,
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
    job_panel(job["id"])

# --------------------------------------------------------------------------- cached sets

st.subheader("Cached vector sets")
sets = pd.DataFrame(cached_sets())
if sets.empty:
    st.info("No vectors yet. Pick a backbone above and press **Vectorize** (or run the demo on the Home page).",
            icon=":material/arrow_forward:")
    st.stop()
sets["this dataset"] = sets["fingerprint"] == dataset.fingerprint
sets["weights"] = sets["weights"].map(lambda w: WEIGHT_LABELS.get(w, w))
st.dataframe(sets[["backbone", "weights", "images", "dim", "mb", "this dataset", "key"]], hide_index=True,
             width="stretch", column_config={"mb": st.column_config.NumberColumn("MB", format="%.2f"),
                                             "dim": st.column_config.NumberColumn("vector size")})

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
                                                f"{mine.loc[i, 'images']} images")
with c2:
    method = st.segmented_control("Projection", ["PCA", "t-SNE"], default="PCA", key="map_method") or "PCA"
row = mine.loc[choice]
path = row["path"]
mtime = os.stat(path).st_mtime
vectors, digests = read_set(path, mtime)
index = align(dataset.digests, digests)
if not index:
    st.warning("This vector set no longer matches the dataset's files; vectorize again.")
    st.stop()
if method == "t-SNE" and len(index) > 3000:
    st.caption("t-SNE on many points takes a while; PCA is instant.")
xy = project(path, mtime, method)
paths = [dataset.paths[i] for i in index]
groups = [str(dataset.groups[i]) for i in index]
codes = pd.factorize(pd.Series(groups))[0]
names = [os.path.basename(p) for p in paths]
fig = go.Figure(go.Scattergl(
    x=xy[:, 0], y=xy[:, 1], mode="markers",
    marker=dict(size=7, color=[PALETTE[c % len(PALETTE)] for c in codes], line=dict(width=0.5, color="white")),
    customdata=np.column_stack([[html.escape(n) for n in names], [html.escape(g) for g in groups]]),
    hovertemplate="%{customdata[0]}<br>group %{customdata[1]}<extra></extra>",
))
fig.update_layout(height=520, margin=dict(l=10, r=10, t=10, b=10), dragmode="lasso", showlegend=False,
                  xaxis=dict(showticklabels=False, title=None), yaxis=dict(showticklabels=False, title=None))
st.caption(f"{len(index)} images, coloured by group (colours repeat across groups). Images of one scene should "
           "sit together. Draw a lasso or box to see the images below.")
event = st.plotly_chart(fig, width="stretch", key=f"map_{choice}_{method}", on_select="rerun",
                        selection_mode=("points", "box", "lasso"))
points = sorted({p["point_index"] for p in (event.selection.points if event else []) if "point_index" in p})
if points:
    shown = points[:SELECTION_SHOWN]
    more = f" (showing the first {SELECTION_SHOWN})" if len(points) > SELECTION_SHOWN else ""
    groups_sel = sorted({groups[i] for i in points})
    st.markdown(f"**{len(points)} selected image(s) from {len(groups_sel)} group(s)**{more}")
    image_grid([paths[i] for i in shown], [f"{names[i]} · group {groups[i]}" for i in shown])
else:
    st.caption("Select points on the map (box or lasso; click to pick one) to see their images here.")
