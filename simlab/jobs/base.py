"""What every part of the job runner shares: the job states, the store to use and each job's log file."""

from __future__ import annotations

from pathlib import Path

from simlab.paths import cache_dir
from simlab.store import Store

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")


def open_store(store: Store | str | Path | None) -> Store:
    """``store`` itself, or the store at that path (default: the cache's)."""
    return store if isinstance(store, Store) else Store(store)


def log_path(job_id: str) -> Path:
    """Where the worker of a job writes its log (its stdout, stderr and ``logging`` records)."""
    return cache_dir("jobs") / f"{job_id}.log"


def log_tail(job_id: str, lines: int = 15) -> str:
    """The last lines of a job's log ("" when there is none yet)."""
    try:
        text = log_path(job_id).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
