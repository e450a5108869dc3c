"""Home: what simlab does, the current dataset and device, and the one-click demo experiment."""

from __future__ import annotations

import streamlit as st

from pages._ui.device import device_text
from pages._ui.formatting import classifier_name, escape_md, map_column
from pages._ui.job_panel import job_panel, latest_job, start_job
from pages._ui.links import page_link
from pages._ui.reuse import start_once
from pages._ui.state import current_dataset_spec
from pages._ui.store import cached_runs
from pages._ui.store_guard import store_guard
from simlab.evaluate import headline_metrics
from simlab.experiment import GridConfig
from simlab.options import choice_label
from simlab.report.tables import one_per_config, runs_table

store_guard()  # a store that cannot be opened: one line; corrupt runs named
st.title("simlab")
st.markdown(
    "Do two photos show **the same scene**? simlab turns each image into a vector with a pretrained "
    "network, merges the two vectors and lets a classifier decide; then it shows you **why** it was right "
    "or wrong. It reproduces, and outdoes, a 2017 transfer-learning study on the INRIA Holidays photos.")

left, right = st.columns(2)
with left, st.container(border=True):
    st.caption("Current dataset")
    st.markdown(f"**{escape_md(current_dataset_spec())}**")
    st.caption("Every page works on this dataset; pick another in the sidebar.")
    page_link("pages/data.py", "Browse or change it on the Data page", icon=":material/photo_library:")
with right, st.container(border=True):
    st.caption("Device")
    text = device_text(wait=0.5)
    st.markdown(f"**{escape_md(text or 'detecting…')}**")
    st.caption("Vectorising uses the GPU when there is one; everything also runs on the CPU.")

# --------------------------------------------------------------------------- how it works

st.subheader("How it works")
# Static text only (no user strings), so plain HTML is safe here.
STEPS = [
    ("image", "Two images", "a pair of photos"),
    ("neurology", "Backbone", "a pretrained CNN, e.g. EfficientNet-Lite0"),
    ("data_array", "Two vectors", "one per image"),
    ("join", "Merge", "a·b, |a−b| or (a−b)²"),
    ("account_tree", "Classifier", f"{classifier_name('cosine')}, {classifier_name('logreg')}, "
                                   f"{classifier_name('xgboost')}…"),
    ("task_alt", "Same scene?", "a probability"),
]
BOX = ("flex:1 1 0;min-width:7.5rem;border:1px solid rgba(128,128,128,.35);border-radius:.5rem;"
       "padding:.6rem .5rem;text-align:center")
ICON = "font-family:'Material Symbols Rounded';font-size:1.7rem;line-height:1.8rem;color:#3b6ea8"
boxes = [f"<div style=\"{BOX}\"><div style=\"{ICON}\">{icon}</div><div style='font-weight:600'>{title}</div>"
         f"<div style='font-size:.8rem;opacity:.7'>{detail}</div></div>" for icon, title, detail in STEPS]
arrow = "<div style='align-self:center;font-size:1.3rem;opacity:.5'>→</div>"
st.html(f"<div style='display:flex;gap:.4rem;align-items:stretch;flex-wrap:wrap'>{arrow.join(boxes)}</div>")

# --------------------------------------------------------------------------- the demo

st.subheader("Try it: the demo experiment")
st.markdown(
    "About 400 photos, several views of each of about 40 scenes, generated offline from pictures shipped "
    "with scikit-image, "
    "vectorised with the bundled EfficientNet-Lite0; then 9 runs: merges **dot, l1, l2** × classifiers "
    f"**{classifier_name('cosine')}, {classifier_name('logreg')}, {classifier_name('xgboost')}**, tested on scene "
    "groups never seen in training. "
    "A few minutes on a laptop.")

demo = latest_job("demo")
running = demo is not None and demo.active
clicked = st.button("Run the demo experiment", type="primary", icon=":material/play_arrow:", disabled=running,
                    help="Already running: see the progress below." if running else None)


def _start_demo(reuse: bool) -> None:
    start_job("demo", {"reuse": reuse})
    st.rerun()


start_once(GridConfig(dataset="demo"), "home_demo", _start_demo, clicked)

if demo is not None:
    job = job_panel(demo.id)
    if job is not None and job.status == "done":
        result = job.result if isinstance(job.result, dict) else {}
        best = result.get("best") or {}
        if best:
            st.markdown(
                f"Best run: **{escape_md(best.get('backbone', ''))} + {escape_md(best.get('merge', ''))} + "
                f"{escape_md(classifier_name(best.get('classifier', '')))}**, held-out accuracy "
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
frame = runs_table(cached_runs())
frame = frame[frame["status"] == "done"]
if frame.empty:
    st.info("No results yet. Run the demo above, or set up your own grid on the Train page.",
            icon=":material/arrow_forward:")
else:
    spec = current_dataset_spec()
    mine = frame[frame["dataset"] == spec]
    shown = mine if not mine.empty else frame
    scope = f"on {spec}" if not mine.empty else "on all datasets"
    ranked = one_per_config(shown).sort_values(["accuracy", "auc"], ascending=False)
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Runs {scope}", len(shown), help=f"{len(ranked)} distinct configurations" if len(ranked) < len(shown)
              else None)
    if "accuracy" in ranked and len(ranked):
        top = ranked.iloc[0]
        c2.metric("Best held-out accuracy", f"{top['accuracy']:.1%}",
                  help=f"{top['backbone']} + {top['merge']} + {classifier_name(top['classifier'])}")
        with c3:  # as text, not a metric: a classifier's name is too long for a metric's large digits
            st.caption("Best configuration")
            st.markdown(f"**{escape_md(top['backbone'])}**  \n{escape_md(top['merge'])} + "
                        f"{escape_md(classifier_name(top['classifier']))}")
    ranked = ranked.assign(weights=ranked["weights"].map(lambda w: choice_label("weights", w)))
    cols = ["backbone", "merge", "classifier", *headline_metrics(), "seconds"]
    cols += ["copies"] if (ranked["copies"] > 1).any() else []
    cols += ["weights"] if (ranked["weights"] != choice_label("weights", "imagenet")).any() else []
    cols += ["dataset"] if mine.empty else []
    table = ranked[cols].head(10)
    if "classifier" in table:
        table = table.assign(classifier=table["classifier"].map(classifier_name))
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "accuracy": st.column_config.ProgressColumn("accuracy", format="percent", min_value=0, max_value=1),
        "auc": st.column_config.NumberColumn("AUC", format="%.3f"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
        "map": map_column(),
        "seconds": st.column_config.NumberColumn("fit s", format="%.2f"),
        "copies": st.column_config.NumberColumn("runs", format="%d", help="Stored runs of this very configuration "
                                                "(same method, protocol, seed and data), shown once"),
    })
    page_link("pages/compare.py", "Compare all runs", icon=":material/grid_on:")
