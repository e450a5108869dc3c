"""Background jobs seen from a page: start one, find the running one, and its live panel.

A job runs in a worker process and writes its progress to the store; the panel reads it every second
(a rerun of the page never stops the job).
"""

from __future__ import annotations

import time

import streamlit as st

from pages._ui.formatting import fmt_duration
from pages._ui.store import clear_runs_cache, same_dataset, store, store_path
from simlab import jobs
from simlab.store import Job

JOBS_KEY = "jobs"  # st.session_state key: {job kind: id of the job this session started last}


def start_job(kind: str, params: dict | None = None) -> str:
    """Start a background job (worker process) and remember it in the session; returns its id."""
    job_id = jobs.start_job(kind, params or {}, store_path=store_path())
    st.session_state.setdefault(JOBS_KEY, {})[kind] = job_id
    clear_runs_cache()
    return job_id


def get_job(job_id: str) -> Job | None:
    """The job from the store (fresh, not cached)."""
    return jobs.get_job(job_id, store_path())


def latest_job(kind: str | tuple[str, ...], active_only: bool = False, dataset: str | None = None) -> Job | None:
    """The newest job of a kind (this session's, else the store's), e.g. to find a running one after a reload;
    with ``dataset``, only a job on that dataset (its ``params["dataset"]``)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    mine = [st.session_state.get(JOBS_KEY, {}).get(k) for k in kinds]

    def wanted(job: Job | None) -> bool:
        return job is not None and job.kind in kinds and (not active_only or job.active) and (
            dataset is None or same_dataset(job.params.get("dataset"), dataset))

    jobs.reap_stale(store())
    for job_id in filter(None, mine):
        job = get_job(job_id)
        if wanted(job):
            return job
    return next((job for job in store().list_jobs() if wanted(job)), None)


def wait_for_job(job_id: str, bar, timeout: float, poll: float = 0.2) -> Job | None:
    """Wait in this script run for a short job to end, its progress driving ``bar`` (an st.progress);
    returns the ended job, or None (after asking it to stop) when it takes longer than ``timeout`` s."""
    start = last_reap = time.monotonic()
    while True:
        job = get_job(job_id)
        if job is None or not job.active:
            return job
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            jobs.cancel_job(job_id, store_path())
            return None
        if job.total:
            frac = min(0.95, ((job.done or 0) + 1) / (job.total + 1))
            bar.progress(frac, text=f"{job.message or 'Working'}… ({elapsed:.0f} s)")
        if time.monotonic() - last_reap > 2:  # a worker that died: marked failed, so the wait ends
            jobs.reap_stale(store())
            last_reap = time.monotonic()
        time.sleep(poll)


def job_label(job: Job) -> str:
    """What the job does, in words ("Vectorising", "Grid of runs", ...)."""
    return jobs.JOB_LABELS.get(job.kind, job.kind or "")


def _progress_text(job: Job) -> tuple[float, str]:
    frac = job.progress or 0.0
    pct = f"{frac:.0%} · " if job.total else ""
    return frac, f"{job_label(job)} — {pct}{job.message or ''} ({fmt_duration(job.elapsed())})"


def stopped_progress(job: Job) -> tuple[float, str]:
    """A cancelled job's bar: where it stopped (never a full bar), marked cancelled."""
    frac = job.progress or 0.0
    during = job.fields.get("stopped_during") or ""
    where = f"at {frac:.0%}" if job.total else "before any progress"
    return frac, f"■ Cancelled {where}{f' · {during}' if during else ''} (after {fmt_duration(job.duration)})"


def show_job_error(job: Job) -> None:
    """A failed job: its short message, and the traceback in a collapsed expander."""
    st.error(f"{job_label(job)} failed: {job.message or 'unknown error'}", icon=":material/error:")
    if job.error:
        with st.expander("Details (traceback)"):
            st.code(job.error, language=None)


def _job_final(job: Job) -> None:
    label = job_label(job)
    took = fmt_duration(job.duration)
    if job.status == "done":
        st.success(f"{label} finished in {took}. {job.message or ''}", icon=":material/check_circle:")
    elif job.status == "cancelled":
        st.progress(*stopped_progress(job))
        st.warning(f"{label} was cancelled. {job.message or ''}", icon=":material/stop_circle:")
    elif job.status == "failed":
        show_job_error(job)


@st.fragment(run_every=1)
def _live_job(job_id: str) -> None:
    job = get_job(job_id)
    if job is None:
        st.info("This job no longer exists.")
        return
    if job.active:
        jobs.reap_stale(store())
        job = get_job(job_id) or job
    if not job.active:
        clear_runs_cache()
        st.rerun()  # the whole page: it shows the result, and this fragment stops polling
    frac, text = _progress_text(job)
    cols = st.columns([6, 1], vertical_alignment="center")
    with cols[0]:
        st.progress(frac, text=text)
    with cols[1]:
        stopping = bool(job.cancel)
        if st.button("Stopping…" if stopping else "Cancel", key=f"cancel_{job_id}", disabled=stopping,
                     width="stretch"):
            jobs.cancel_job(job_id, store_path())
            st.rerun(scope="fragment")


def job_panel(job_id: str | None) -> Job | None:
    """Live progress of a job (bar, message, Cancel) polling every second until it ends, then its
    outcome (success, cancelled, or the error with its traceback folded). Returns the job."""
    if not job_id:
        return None
    job = get_job(job_id)
    if job is None:
        return None
    if job.active:
        _live_job(job_id)
    else:
        _job_final(job)
    return job
