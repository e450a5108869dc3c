"""Runs: every background job and every run, with status, configuration, metrics and errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pandas as pd
import streamlit as st

from pages._ui.formatting import STATUS_ICONS, classifier_name, escape_md, fmt_duration, fmt_when, map_column
from pages._ui.job_panel import job_label, job_panel, show_job_error, start_job
from pages._ui.links import page_link
from pages._ui.run_names import run_title, run_title_when
from pages._ui.store import cached_runs, clear_runs_cache, store, store_path
from pages._ui.store_guard import corrupt_runs_panel, store_guard
from simlab import jobs
from simlab.evaluate import headline_metrics, metric_scope, not_comparable
from simlab.experiment import rerun_config
from simlab.options import choice_label
from simlab.store import Run

JOBS_SHOWN = 50
# A run's kind as this page has always named it: a grid cell is a "pair" run
KIND_LABELS = {"grid": "pair", "finetune": "finetune"}
SELECTED_KEY = "runs_selected_ids"  # the selected runs, by id (never by row position)


def kind_label(run: Run) -> str:
    return KIND_LABELS.get(run.kind, run.kind or "")


store_guard(name_corrupt=False)  # a store that cannot be opened: one line (corrupt runs: the panel below)
st.title("Runs")
st.caption("Everything simlab has computed: background jobs (vectorising, grids, fine-tuning) and the runs "
           "they produced. Jobs keep going when you close the page.")

# --------------------------------------------------------------------------- jobs

st.subheader("Jobs")
all_jobs = jobs.list_jobs(store_path())
if not all_jobs:
    st.info("No jobs yet. Start one from the Home page (the demo), Vectorize or Train.",
            icon=":material/arrow_forward:")
else:
    for job in [j for j in all_jobs if j.active]:
        with st.container(border=True):
            st.caption(f"Job {job.id} · started {fmt_when(job.start)}")
            job_panel(job.id)
    rows = [{"status": f"{STATUS_ICONS.get(j.status, '')} {j.status}", "job": job_label(j),
             "created": fmt_when(j.created), "duration": "running" if j.active else fmt_duration(j.duration),
             "progress": j.progress, "message": j.message or "", "id": j.id} for j in all_jobs[:JOBS_SHOWN]]
    jobs_table = st.dataframe(
        pd.DataFrame(rows), hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
        key="jobs_table",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1,
                                                                   format="percent"),
                       "message": st.column_config.TextColumn("message", width="large")})
    if len(all_jobs) > JOBS_SHOWN:
        st.caption(f"Showing the {JOBS_SHOWN} newest of {len(all_jobs)} jobs.")
    picked = jobs_table.selection.rows if jobs_table else []
    if picked:
        job = next(j for j in all_jobs if j.id == rows[picked[0]]["id"])
        with st.container(border=True):
            st.markdown(f"**Job {job.id}** · {job_label(job)} · {job.status}")
            if job.status == "failed":
                show_job_error(job)
            with st.expander("Parameters and result"):
                st.json({"params": job.params, "result": job.result}, expanded=False)
            if not job.active and st.button("Delete this job", key=f"del_job_{job.id}",
                                            help="Removes the job's record, not its runs."):
                store().delete_job(job.id)
                st.rerun()
    st.caption("Select a job to see its parameters, result or error.")

# --------------------------------------------------------------------------- runs

st.subheader("Runs")
corrupt_runs_panel()  # rows that cannot be read: what is wrong, and a Delete button
runs = cached_runs()
if not runs:
    st.info("No runs yet. Run the demo on the Home page, or set up a grid on the Train page.",
            icon=":material/arrow_forward:")
    page_link("pages/home.py", "Home: run the demo", icon=":material/home:")
    st.stop()

f1, f2, f3 = st.columns(3)
with f1:
    status_pick = st.multiselect("Status", sorted({r.status for r in runs}), key="runs_status",
                                 placeholder="any")
with f2:
    dataset_pick = st.multiselect("Dataset", sorted({r.dataset or "" for r in runs}), key="runs_dataset",
                                  placeholder="any")
with f3:
    kind_pick = st.multiselect("Kind", sorted({kind_label(r) for r in runs}), key="runs_kind",
                               placeholder="any")
shown = [r for r in runs if (not status_pick or r.status in status_pick)
         and (not dataset_pick or (r.dataset or "") in dataset_pick)
         and (not kind_pick or kind_label(r) in kind_pick)]


def _row(r: Run) -> dict:
    m = r.metrics
    return {"status": f"{STATUS_ICONS.get(r.status, '')} {r.status}",
            "backbone": r.backbone, "merge": r.merge,
            "classifier": classifier_name(r.classifier) if r.classifier else None,
            **{name: m.get(name) for name in headline_metrics(r.kind)},
            "threshold": r.threshold if r.done else None,
            "duration": fmt_duration(r.duration), "error": (r.error or "")[:200],
            "weights": choice_label("weights", r.weights), "dataset": r.dataset, "split": r.protocol.split,
            "seed": r.protocol.seed, "created": fmt_when(r.created), "kind": kind_label(r), "id": r.id}


def runs_table(shown: list[Run]) -> list[Run]:
    """The runs table; returns the selected runs. The selection is kept as run ids (SELECTED_KEY), not row
    positions: when rows come or go (a run added by "Run again", a run deleted, a filter changed) the table
    is drawn anew (its key follows the ids shown, in order) with the same runs selected, wherever they now are."""
    frame = pd.DataFrame([_row(r) for r in shown])
    for col in [*headline_metrics(), "threshold"]:  # numbers, with an empty cell (not "None") where there is none
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    if not frame["error"].astype(bool).any():
        frame = frame.drop(columns="error")
    ids = [r.id for r in shown]
    table_key = "runs_table_" + hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
    for old in [k for k in st.session_state if str(k).startswith("runs_table_") and k != table_key]:
        del st.session_state[old]  # the tables of earlier row orders
    kept = set(st.session_state.get(SELECTED_KEY, []))
    table = st.container(key="runs_list").dataframe(
        frame, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key=table_key,
        selection_default={"selection": {"rows": [i for i, run_id in enumerate(ids) if run_id in kept]}},
        column_config={**{name: st.column_config.NumberColumn(label, format="%.3f", help=metric_scope(name))
                          for name, label in headline_metrics().items()},
                       "threshold": st.column_config.NumberColumn(
                           "threshold", format="%.2f",
                           help="The run's operating threshold on P(same), which accuracy and F1 use: chosen on "
                                "validation scenes carved from the training scenes; 0.5 under the 2017 study's rule."),
                       "map": map_column(),
                       "error": st.column_config.TextColumn("error", width="medium")})
    rows = table.selection.rows if table else []
    selected = [shown[i] for i in rows if i < len(shown)]
    st.session_state[SELECTED_KEY] = [r.id for r in selected]
    return selected


st.caption(f"{len(shown)} of {len(runs)} runs. Select rows to see details, delete them, run them again, or pick "
           "two to compare pair by pair.")
selected = runs_table(shown)
if not selected:
    st.stop()


def compare_two(a: Run, b: Run) -> None:
    """The link to the Two-runs page for two selected runs, when they can be compared pair by pair."""
    why_not = not_comparable(a, b, store().test_pairs_keys([a.id, b.id]) if a.done and b.done else {})
    if why_not:
        st.caption(why_not)
    else:
        page_link("pages/diff.py", "Compare pair by pair", icon=":material/compare_arrows:",
                  query_params={"a": a.id, "b": b.id})


st.markdown(f"**{len(selected)} run(s) selected**")
a1, a2, a3 = st.columns([1, 1, 3], vertical_alignment="center")
configs = [c for c in (rerun_config(r) for r in selected) if c]  # GridConfigs
with a1:
    if st.button("Run again", icon=":material/replay:", disabled=not configs,
                 help="Starts a grid job with the same configuration (seed included) for each selected run."
                 if configs else "Only pair-classifier runs can be re-run from here."):
        for config in configs:
            start_job("grid", asdict(config))
        st.toast(f"Started {len(configs)} job(s); progress is shown at the top of this page.",
                 icon=":material/autorenew:")
        st.rerun()
with a2:
    confirm_key = "confirm_delete_runs"
    if st.button("Delete", icon=":material/delete:", key="delete_runs"):
        st.session_state[confirm_key] = [r.id for r in selected]
with a3:
    if len(selected) == 2:
        compare_two(*selected)
to_delete = st.session_state.get(confirm_key)
if to_delete and to_delete == [r.id for r in selected]:
    named = [r for r in shown if r.id in to_delete]
    st.warning(f"Delete {'this run and its' if len(named) == 1 else f'these {len(named)} runs and their'} predictions? "
               "This cannot be undone.  \n" + "  \n".join(f"- {escape_md(run_title_when(r))}" for r in named),
               icon=":material/delete_forever:")
    y, n, _ = st.columns([1, 1, 4])
    if y.button("Yes, delete", type="primary", key="delete_yes"):
        for run_id in to_delete:
            store().delete_run(run_id)
        st.session_state[SELECTED_KEY] = [i for i in st.session_state.get(SELECTED_KEY, []) if i not in to_delete]
        st.session_state.pop(confirm_key, None)
        clear_runs_cache()
        st.toast(f"Deleted {len(to_delete)} run(s).", icon=":material/delete:")
        st.rerun()
    if n.button("Cancel", key="delete_no"):
        st.session_state.pop(confirm_key, None)
        st.rerun()

for r in selected[:5]:
    with st.expander(f"Run {escape_md(run_title(r))} · {r.status}",
                     expanded=len(selected) == 1):
        if r.error:
            st.error(r.error.splitlines()[0][:300], icon=":material/error:")
            if "\n" in r.error:
                st.code(r.error, language=None)
        m = r.metrics
        if m:
            headline = headline_metrics(r.kind)
            for col, (key, name) in zip(st.columns(len(headline)), headline.items()):
                if isinstance(m.get(key), (int, float)):
                    col.metric(name, f"{m[key]:.3f}", help=metric_scope(key, r.kind, r.backbone))
            if m.get("accuracy_lo") is not None:
                st.caption(f"Accuracy 95% CI {m['accuracy_lo']:.3f}–{m['accuracy_hi']:.3f} on {m.get('n_test')} "
                           f"test pairs ({m.get('n_train')} training pairs), at threshold {r.threshold:.2f}: "
                           f"{escape_md(r.threshold_rule)}.")
        if r.done and r.is_grid:
            page_link("pages/inspect.py", "Inspect this run's pairs", icon=":material/search:",
                      query_params={"run": r.id})
        tabs = st.tabs(["Configuration", "Metrics", "Timings & versions"])
        tabs[0].code(json.dumps(r.config, indent=1), language="json")
        tabs[1].code(json.dumps(m, indent=1), language="json")
        tabs[2].code(json.dumps({"timings": r.timings, "versions": r.versions, "git": r.git, "job": r.job_id},
                                indent=1), language="json")
if len(selected) > 5:
    st.caption("Details shown for the first 5 selected runs.")
