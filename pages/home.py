"""Home: what simlab does, the current dataset and device, and the one-click demo experiment."""

from __future__ import annotations

import streamlit as st

from pages.common import (
    current_dataset_spec,
    device_text,
    escape_md,
    fmt_duration,
    job_panel,
    latest_job,
    page_link,
    runs_frame,
    start_job,
)
from simlab.jobs import ACTIVE

st.title("simlab")
st.markdown(
    "Do two photos show **the same scene**? simlab turns each image into a vector with a pretrained "
    "network, merges the two vectors and lets a classifier decide; then it shows you **why** it was right "
    "or wrong. It reproduces, and outdoes, a 2017 transfer-learning study on the INRIA Holidays photos.")

left, right = st.columns(2)
with left:
    with st.container(border=True):
        st.caption("Current dataset")
        st.markdown(f"**{escape_md(current_dataset_spec())}**")
        page_link("pages/data.py", "Browse or change it on the Data page", icon=":material/photo_library:")
with right:
    with st.container(border=True):
        st.caption("Device")
        text = device_text(wait=0.5)
        st.markdown(f"**{escape_md(text or 'detecting…')}**")
        st.caption("Vectorising uses the GPU when there is one; everything also runs on the CPU.")

# --------------------------------------------------------------------------- how it works

st.subheader("How it works")
STEPS = [
    ("🖼️", "Two images", "a pair of photos"),
    ("🧠", "Backbone", "pretrained CNN, e.g. EfficientNet-Lite0"),
    ("📏", "Vectors", "one vector per image"),
    ("🔀", "Merge", "a·b, |a−b| or (a−b)²"),
    ("🌲", "Classifier", "threshold, logistic regression, XGBoost…"),
    ("✅", "Same scene?", "a probability"),
]
cols = st.columns(len(STEPS) * 2 - 1, vertical_alignment="center", gap="small")
for i, (icon, title, detail) in enumerate(STEPS):
    with cols[2 * i]:
        with st.container(border=True):
            st.markdown(f"<div style='text-align:center;font-size:1.6rem'>{icon}</div>", unsafe_allow_html=True)
            st.markdown(f"**{title}**")
            st.caption(detail)
    if i < len(STEPS) - 1:
        with cols[2 * i + 1]:
            st.markdown("<div style='text-align:center;font-size:1.4rem;color:#888'>→</div>",
                        unsafe_allow_html=True)

# --------------------------------------------------------------------------- the demo

st.subheader("Try it: the demo experiment")
st.markdown(
    "About 900 generated photos of 300 scenes (built offline, no download), vectorised with the bundled "
    "EfficientNet-Lite0, then 9 runs: merges **dot, l1, l2** × classifiers **threshold, logistic regression, "
    "XGBoost**, split by scene group. A few minutes on a laptop.")

demo = latest_job("demo")
running = demo is not None and demo["status"] in ACTIVE
if st.button("Run the demo experiment", type="primary", icon=":material/play_arrow:", disabled=running,
             help="Already running: see the progress below." if running else None):
    start_job("demo", {})
    st.rerun()

if demo is not None:
    job = job_panel(demo["id"])
    if job is not None and job["status"] == "done":
        result = job.get("result") or {}
        best = result.get("best") or {}
        if best:
            st.markdown(
                f"Best run: **{escape_md(best.get('backbone', ''))} + {escape_md(best.get('merge', ''))} + "
                f"{escape_md(best.get('classifier', ''))}**, held-out accuracy "
                f"**{best.get('accuracy', 0):.1%}** (95% CI {best.get('accuracy_lo', 0):.1%}–"
                f"{best.get('accuracy_hi', 0):.1%}).")
        links = st.columns(3)
        with links[0]:
            page_link("pages/compare.py", "Compare the runs", icon=":material/grid_on:")
        with links[1]:
            page_link("pages/inspect.py", "Inspect the pairs", icon=":material/search:")
        with links[2]:
            page_link("pages/runs.py", "All runs", icon=":material/history:")

# --------------------------------------------------------------------------- latest results

st.subheader("Latest results")
frame = runs_frame()
if frame.empty:
    st.info("No results yet. Run the demo above, or set up your own grid on the Train page.", icon="👉")
else:
    spec = current_dataset_spec()
    mine = frame[frame["dataset"] == spec]
    shown = mine if not mine.empty else frame
    scope = f"on {spec}" if not mine.empty else "on all datasets"
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Runs {scope}", len(shown))
    top = shown.sort_values("accuracy", ascending=False).iloc[0] if "accuracy" in shown else None
    if top is not None:
        c2.metric("Best held-out accuracy", f"{top['accuracy']:.1%}",
                  help=f"{top['backbone']} + {top['merge']} + {top['classifier']}")
        c3.metric("Best configuration", f"{top['merge']} + {top['classifier']}", help=str(top["backbone"]),
                  delta=None)
    cols = [c for c in ("backbone", "merge", "classifier", "accuracy", "auc", "f1", "map", "seconds", "dataset")
            if c in shown]
    table = shown.sort_values("accuracy", ascending=False)[cols].head(10)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "accuracy": st.column_config.ProgressColumn("accuracy", format="percent", min_value=0, max_value=1),
        "auc": st.column_config.NumberColumn("AUC", format="%.3f"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
        "map": st.column_config.NumberColumn("retrieval mAP", format="%.3f"),
        "seconds": st.column_config.NumberColumn("fit s", format="%.2f"),
    })
    page_link("pages/compare.py", "Compare all runs", icon=":material/grid_on:")
