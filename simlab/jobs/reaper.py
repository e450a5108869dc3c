"""Finding jobs whose worker died or hangs, and ending them in the store.

A worker is known by its pid, its start time (psutil's ``create_time``, stored when it starts), its
machine and the job id in its command line. A pid that no longer names that process (the system
has given the number to another one) is never signalled: the job is only marked failed.

A job on another machine is ended when its heartbeat is older than STALE_AFTER; the runs of an ended job,
and runs whose owner wrote no heartbeat for ``simlab.store.RUN_STALE_AFTER`` (whatever the machine), are failed
by the store (:meth:`Store.reap_orphan_runs`), which :func:`reap_stale` calls after the jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil

from simlab.jobs.base import log_path, log_tail, open_store
from simlab.store import HOST, Job, Store, owner_process

log = logging.getLogger(__name__)

STALE_AFTER = 120.0  # a worker silent this long is considered dead even if its pid exists
START_GRACE = 30.0  # a queued job whose worker never reported gets this long before it is reaped
CANCEL_GRACE = 20.0  # after a cancel request, the worker is killed if it has not stopped by then
ELSEWHERE = "elsewhere"


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie counts as ended)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def worker_of(job: Job) -> tuple[psutil.Process | None, str]:
    """``(process, "")`` when the job's worker still runs on this machine; else ``(None, why not)``:
    ``"died"``, ``"reused"`` (the pid now belongs to another process) or ``ELSEWHERE`` (another machine)."""
    if job.host not in (None, HOST):
        return None, ELSEWHERE
    if not pid_alive(job.pid):
        return None, "died"
    proc = owner_process(job.pid, job.pid_started)
    try:
        if proc is None or job.id not in proc.cmdline():
            return None, "reused"
    except psutil.NoSuchProcess:
        return None, "died"
    except psutil.AccessDenied:  # another user's process: not a worker of ours
        return None, "reused"
    return proc, ""


def _kill(proc: psutil.Process) -> None:
    """SIGKILL a worker that was identified; its process group too when it leads one (its own children)."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()  # psutil checks the process is still the one identified before it signals
    except (OSError, psutil.Error) as exc:
        log.warning("Worker %d not killed: %s", proc.pid, exc)


def reap_stale(store: Store | str | Path | None = None) -> list[str]:
    """Mark active jobs whose worker is gone (or silent too long) as failed; kill overdue cancels.

    Returns the ids of the jobs it changed.
    """
    store = open_store(store)
    now, changed = time.time(), []
    for job in store.list_jobs():
        if job.active and _reap(store, job, now):
            changed.append(job.id)
    store.reap_orphan_runs(force=bool(changed))  # the runs of the jobs just ended, and runs gone silent
    return changed


def _reap(store: Store, job: Job, now: float) -> bool:
    """End one active job if its worker is dead, silent or overdue after a cancel; whether it did."""
    proc, why_not = worker_of(job)
    beat = job.heartbeat or job.created or now
    asked = job.cancel or 0  # the time of the cancel request (cancel_job writes a timestamp)
    if asked > 1e9 and proc and now - asked > CANCEL_GRACE:
        _kill(proc)
        log.warning("Job %s did not stop within %.0f s of its cancel and was killed", job.id, CANCEL_GRACE)
        store.update_job(job.id, status="cancelled", finished=now,
                         message="Stopped (the worker did not stop in time and was ended).")
        return True
    if job.status == "queued" and job.pid is None and now - beat < START_GRACE:
        return False  # being started right now
    if (proc or why_not == ELSEWHERE) and now - beat < STALE_AFTER:
        return False
    if job.cancel:
        store.update_job(job.id, status="cancelled", finished=now, message="Stopped.")
        return True
    why = _why(job, why_not, now - beat)
    if proc:
        _kill(proc)
    log.warning("Job %s failed: %s", job.id, why)
    tail = log_tail(job.id)
    store.update_job(job.id, status="failed", finished=now,
                     message=f"{why} before finishing (killed, out of memory, or the machine restarted). "
                             "Run it again.",
                     error=f"{why}.\n\nLast lines of {log_path(job.id)}:\n{tail or '(empty)'}")
    return True


def _why(job: Job, why_not: str, silent: float) -> str:
    if why_not == "reused":
        return (f"The worker process died (its pid {job.pid} now belongs to another process, "
                "which was left alone)")
    if why_not == ELSEWHERE:
        return f"The worker on {job.host} stopped responding (no heartbeat for {int(silent)} s)"
    if why_not:
        return "The worker process died"
    return f"The worker stopped responding (no heartbeat for {int(silent)} s) and was ended"
