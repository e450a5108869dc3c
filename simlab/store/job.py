"""The typed record of one background job (a row of the ``jobs`` table)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

#: A job in one of these states has a worker (or is waiting for one).
ACTIVE_JOBS = ("queued", "running")


@dataclass
class Job:
    """One job: its kind and params, where it stands (``done`` of ``total``, ``message``) and how it ended
    (``result`` or ``error``). ``fields`` holds what its kind reports beyond that (e.g. ``stopped_during``)."""

    id: str
    kind: str | None = None
    status: str | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    params: dict = field(default_factory=dict)
    done: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    result: dict | list | None = None
    cancel: int = 0
    pid: int | None = None
    pid_started: float | None = None
    host: str | None = None
    fields: dict = field(default_factory=dict)
    params_key: str | None = None

    @classmethod
    def from_row(cls, row: Mapping) -> Job:
        """From a ``jobs`` row as a dict (JSON columns decoded); unknown columns ignored, NULLs as the defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(row).items() if k in known and v is not None}
        for name in ("params", "fields"):
            if not isinstance(values.get(name, {}), dict):
                values.pop(name)
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_JOBS

    @property
    def start(self) -> float | None:
        """When it started (when it was queued, for a job that never started)."""
        return self.started or self.created

    @property
    def end(self) -> float | None:
        """When it ended: its finish time, else (a worker that died) its last heartbeat; None while it runs."""
        if self.active:
            return None
        return self.finished or self.heartbeat or self.start

    @property
    def duration(self) -> float | None:
        """Seconds from its start to its end; None while it runs (see :meth:`elapsed`) or without a start."""
        if self.end is None or self.start is None:
            return None
        return max(0.0, self.end - self.start)

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds it has run so far (its :attr:`duration` once it has ended)."""
        if not self.active:
            return self.duration
        return None if self.start is None else max(0.0, (time.time() if now is None else now) - self.start)

    @property
    def progress(self) -> float | None:
        """``done / total`` in [0, 1]; None when the total is not known."""
        return min(max((self.done or 0) / self.total, 0.0), 1.0) if self.total else None
