"""The job table API pages and the CLI use: start, cancel, read and list jobs (by id, in the store)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from simlab.jobs.base import log_path, open_store
from simlab.jobs.reaper import reap_stale
from simlab.jobs.registry import check_kind
from simlab.jobs.request import request_params
from simlab.paths import REPO_ROOT
from simlab.store import HOST, Job, process_started

log = logging.getLogger(__name__)


def start_job(kind: str, params: dict | None = None, store_path: str | Path | None = None) -> str:
    """Record a job and start its worker process; returns the job id at once.

    The same request (kind and params equal as canonical JSON) while a job for it is queued or running
    returns that job's id and starts nothing: a second tab, or the CLI while the app runs it, attaches to
    it. A store that cannot be written raises :class:`simlab.store.StoreError` before anything starts.
    """
    check_kind(kind)
    params = request_params(params)  # folder:X/ and folder:X are one request
    store = open_store(store_path)
    store.check_writable()
    reap_stale(store)  # a request whose job has died starts again
    job_id, new = store.add_job_once(kind, params)
    if not new:
        log.info("Job %s (%s) is already queued or running with these settings: attached to it", job_id, kind)
        return job_id
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path(job_id), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "simlab.jobs", job_id, str(store.path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(REPO_ROOT), env=env, start_new_session=True)
    store.update_job(job_id, pid=proc.pid, pid_started=process_started(proc.pid), host=HOST, heartbeat=time.time())
    log.info("Started job %s (%s), worker pid %d", job_id, kind, proc.pid)
    # Collect the exit status when it ends, so a finished worker never lingers as a zombie.
    threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
    return job_id


def cancel_job(job_id: str, store_path: str | Path | None = None) -> None:
    """Ask a job to stop: the worker ends it as "cancelled" at its next check (between batches)."""
    store = open_store(store_path)
    job = store.job(job_id)
    if job is None or not job.active:
        return
    store.update_job(job_id, cancel=int(time.time()), message="Stopping…")


def get_job(job_id: str, store_path: str | Path | None = None) -> Job | None:
    """One job as a typed record (status, progress, message, error, result; its duration and elapsed time
    computed once), or None."""
    return open_store(store_path).job(job_id)


def list_jobs(store_path: str | Path | None = None, status: str | None = None) -> list[Job]:
    """Every job as a typed record, newest first (after marking dead workers' jobs as failed)."""
    store = open_store(store_path)
    reap_stale(store)
    return store.list_jobs(status)


def active_jobs(kind: str | None = None, store_path: str | Path | None = None) -> list[Job]:
    """Jobs queued or running (optionally of one kind), newest first."""
    store = open_store(store_path)
    reap_stale(store)
    return [j for j in store.list_jobs() if j.active and (kind is None or j.kind == kind)]
