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
from simlab.store import Store, StoreError
from simlab.vectors import default_weights

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between two looks at the job followed
QUIET_AFTER = 60.0  # a job whose worker wrote no heartbeat for this long is not waited for
ACTIVE = ("queued", "running")


def _alive(job: dict | None) -> bool:
    if job is None or job["status"] not in ACTIVE:
        return False
    last = job.get("heartbeat") or job.get("created") or 0.0
    return time.time() - float(last) < QUIET_AFTER


def vectorize_jobs(spec: str, backbones: list[str], weights: str | None) -> list[dict]:
    """The app's queued or running vectorize jobs that compute vectors this request needs."""
    try:
        found = [j for j in Store().jobs() if j["kind"] == "vectorize" and _alive(j)]
    except (StoreError, sqlite3.Error, OSError) as exc:  # no store to read: nothing to attach to
        log.debug("Not looking for jobs to attach to: %s", exc)
        return []
    want = canonical_spec(spec)
    out = []
    for job in found:
        params = job.get("params") or {}
        names = params.get("backbones") or [params.get("backbone")]
        if canonical_spec(params.get("dataset") or "demo") != want:
            continue
        if any(b in names and (params.get("weights") or default_weights(b)) == (weights or default_weights(b))
               for b in backbones):
            out.append(job)
    return out


def wait_for(jobs: list[dict]) -> None:
    """Follow each job on a progress bar until it ends; say so when one ends otherwise than done."""
    store = Store()
    for job in jobs:
        print(f"attached to job {job['id']}, which vectorises this dataset in the app: waiting for it",
              file=sys.stderr, flush=True)
        bar, row = ProgressBar(), job
        while _alive(row):
            if row.get("total"):
                bar(min(row["done"] or 0, row["total"] - 1), row["total"], row.get("message") or "")
            time.sleep(POLL)
            row = store.get_job(job["id"])
        if row is not None and row.get("total"):
            bar(row["total"], row["total"], row.get("message") or "")
        if row is None or row["status"] != "done":
            how = ("is gone" if row is None else f"ended {row['status']}" if row["status"] not in ACTIVE
                   else f"wrote no heartbeat for {QUIET_AFTER:.0f} s")
            print(f"job {job['id']} {how}: computing what is missing here", file=sys.stderr, flush=True)
