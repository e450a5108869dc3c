"""The command line beside the app: a command that asks for what an app job is computing waits for that job.

``python -m simlab vectorize`` while the app vectorises the same dataset (same weights, a backbone in
common) follows the job's progress on its bar until it ends, then reads the vectors from the cache
instead of computing them a second time; if the job fails, is cancelled or stops beating its heartbeat,
the command computes what is still missing itself. (The job table is read from the store: the command
line does not import the job runner.)
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time

from simlab.cli.progress_bar import ProgressBar
from simlab.data import canonical_spec
from simlab.store import Job, Store, StoreError
from simlab.vectors import default_weights

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between two looks at the job followed
QUIET_AFTER = 60.0  # a job whose worker wrote no heartbeat for this long is not waited for


def _alive(job: Job | None) -> bool:
    if job is None or not job.active:
        return False
    last = job.heartbeat or job.created or 0.0
    return time.time() - float(last) < QUIET_AFTER


def vectorize_jobs(spec: str, backbones: list[str], weights: str | None) -> list[Job]:
    """The app's queued or running vectorize jobs that compute vectors this request needs."""
    try:
        found = [j for j in Store().list_jobs() if j.kind == "vectorize" and _alive(j)]
    except (StoreError, sqlite3.Error, OSError) as exc:  # no store to read: nothing to attach to
        log.debug("Not looking for jobs to attach to: %s", exc)
        return []
    want = canonical_spec(spec)
    out = []
    for job in found:
        params = job.params
        names = params.get("backbones") or [params.get("backbone")]
        if canonical_spec(params.get("dataset") or "demo") != want:
            continue
        if any(b in names and (params.get("weights") or default_weights(b)) == (weights or default_weights(b))
               for b in backbones):
            out.append(job)
    return out


def wait_for(jobs: list[Job]) -> None:
    """Follow each job on a progress bar until it ends; say so when one ends otherwise than done."""
    store = Store()
    for job in jobs:
        print(f"attached to job {job.id}, which vectorises this dataset in the app: waiting for it",
              file=sys.stderr, flush=True)
        bar, now = ProgressBar(), job
        while _alive(now):
            if now.total:
                bar(min(now.done or 0, now.total - 1), now.total, now.message or "")
            time.sleep(POLL)
            now = store.job(job.id)
        if now is not None and now.total:
            bar(now.total, now.total, now.message or "")
        if now is None or now.status != "done":
            how = ("is gone" if now is None else f"ended {now.status}" if not now.active
                   else f"wrote no heartbeat for {QUIET_AFTER:.0f} s")
            print(f"job {job.id} {how}: computing what is missing here", file=sys.stderr, flush=True)
