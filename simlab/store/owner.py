"""Who owns a row: a process told by its pid, its start time (psutil) and its machine.

A pid alone is not an identity: once its process ends, the system gives the number to another one.
"""

from __future__ import annotations

import os
import socket

import psutil

HOST = socket.gethostname()
START_SLACK = 2.0  # seconds: a start time read twice may differ this much (the boot time is whole seconds)
_STARTED: dict[int, float] = {}


def process_started(pid: int | None = None) -> float | None:
    """When process ``pid`` (default: this one) started, in seconds since the epoch; None if it is gone."""
    me = os.getpid()
    pid = pid or me
    if pid == me and pid in _STARTED:  # only this process's own start time is kept (a forked child has another pid)
        return _STARTED[pid]
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    if pid == me:
        _STARTED[pid] = started
    return started


def owner_process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that started at ``started`` (and has not ended);
    None when it is gone, a zombie, or the pid now belongs to another process."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if started is not None and abs(proc.create_time() - started) > START_SLACK:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return proc  # exists and is not ours to inspect: treated as alive, never signalled by us
    return proc
