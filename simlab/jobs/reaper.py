"""Finding jobs whose worker died or hangs, and ending them in the store."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from simlab.jobs.base import ACTIVE, log_path, log_tail, open_store
from simlab.store import Store

log = logging.getLogger(__name__)

STALE_AFTER = 120.0  # a worker silent this long is considered dead even if its pid exists
START_GRACE = 30.0  # a queued job whose worker never reported gets this long before it is reaped
CANCEL_GRACE = 20.0  # after a cancel request, the worker is killed if it has not stopped by then


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie counts as ended)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet collected) is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def reap_stale(store: Store | str | Path | None = None) -> list[str]:
    """Mark active jobs whose worker is gone (or silent too long) as failed; kill overdue cancels.

    Returns the ids of the jobs it changed.
    """
    store = open_store(store)
    now, changed = time.time(), []
    for job in store.jobs():
        if job["status"] in ACTIVE and _reap(store, job, now):
            changed.append(job["id"])
    return changed


def _reap(store: Store, job: dict, now: float) -> bool:
    """End one active job if its worker is dead, silent or overdue after a cancel; whether it did."""
    alive = pid_alive(job.get("pid"))
    beat = job.get("heartbeat") or job.get("created") or now
    asked = job.get("cancel") or 0  # the time of the cancel request (cancel_job writes a timestamp)
    if asked > 1e9 and alive and now - asked > CANCEL_GRACE:
        _kill(job["pid"])
        log.warning("Job %s did not stop within %.0f s of its cancel and was killed", job["id"], CANCEL_GRACE)
        store.update_job(job["id"], status="cancelled", finished=now,
                         message="Stopped (the worker did not stop in time and was ended).")
        return True
    if job["status"] == "queued" and job.get("pid") is None and now - beat < START_GRACE:
        return False  # being started right now
    if alive and now - beat < STALE_AFTER:
        return False
    if job.get("cancel"):
        store.update_job(job["id"], status="cancelled", finished=now, message="Stopped.")
        return True
    why = ("The worker process died" if not alive
           else f"The worker stopped responding (no heartbeat for {int(now - beat)} s) and was ended")
    if alive:
        _kill(job["pid"])
    log.warning("Job %s failed: %s", job["id"], why)
    tail = log_tail(job["id"])
    store.update_job(job["id"], status="failed", finished=now,
                     message=f"{why} before finishing (killed, out of memory, or the machine restarted). "
                             "Run it again.",
                     error=f"{why}.\n\nLast lines of {log_path(job['id'])}:\n{tail or '(empty)'}")
    return True
