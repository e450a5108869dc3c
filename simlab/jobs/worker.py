"""The worker process of one job: ``python -m simlab.jobs JOB_ID STORE_PATH``.

It runs the job's function (:mod:`simlab.jobs.registry`), writes progress, result or error to the
store's ``jobs`` table, beats a heartbeat the reaper watches, and checks the cancel flag between
batches. Steps that cannot check it themselves (importing the job's libraries, loading a dataset or
TensorFlow) run under :func:`until_stopped`, so a cancel is honoured within a fraction of a second
from the job's first moment. The final state tells the truth: "cancelled" for a job that stopped
early, "done" for one that finished its work before it saw the cancel. Its ``logging`` records go to
the job's log file (:func:`simlab.jobs.base.log_path`), which the Runs page shows.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from simlab.jobs.base import log_path
from simlab.jobs.registry import job_function
from simlab.progress import Cancelled, ShouldStop
from simlab.store import HOST, Job, Store, StoreError, process_started

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.3  # seconds between progress writes (the first and the last always go through)
HEARTBEAT_INTERVAL = 2.0  # seconds between the worker's "still alive" writes
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_POLL = 0.2  # seconds between cancel checks while a step that cannot check runs
LOADING_THREAD = "simlab-loading"  # the threads of until_stopped (left behind on a cancel)

T = TypeVar("T")


def until_stopped(work: Callable[[], T], should_stop: ShouldStop | None, what: str) -> T:
    """``work()``, with ``should_stop`` asked every STOP_POLL seconds meanwhile: a step that cannot check
    the cancel itself (an import, TensorFlow, a dataset being hashed) never holds a cancel back.

    On a cancel it raises :class:`Cancelled` at once and leaves ``work`` running in its (daemon) thread;
    the worker process then ends without waiting for it (:func:`main`)."""
    if should_stop is None:
        return work()
    if should_stop():
        raise Cancelled(f"Stopped on request before {what}.")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"{LOADING_THREAD}: {what}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(STOP_POLL)
        if thread.is_alive() and should_stop():
            raise Cancelled(f"Stopped on request while {what}.")
    if "error" in box:
        raise box["error"]
    return box["value"]


class Reporter:
    """Progress writes for one job, at most one per PROGRESS_INTERVAL, plus the cancel check.

    :meth:`progress` is a :class:`simlab.progress.Progress`; its fields (stage, backbone, rate, eta)
    are written to the job's ``fields`` column.
    """

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id
        self.last_write = 0.0
        self.last_check, self.cancelled = 0.0, False
        self.pending: tuple | None = None
        self.latest: tuple[int, int, str] = (0, 0, "")  # the newest progress reported, written or not
        self.stopped_at: tuple[int, int, str] | None = None  # the progress when the cancel was first seen
        self.lock = threading.Lock()
        self.closed = False  # the job's end is being written: later progress (a step left running) is dropped

    def progress(self, done: int, total: int, message: str = "", **fields: Any) -> None:
        with self.lock:
            if self.closed:
                return
            self.pending = (int(done), int(total), str(message)[:300], fields)
            self.latest = self.pending[:3]
            due = time.monotonic() - self.last_write >= PROGRESS_INTERVAL or (total and done >= total)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress now (also called by the heartbeat, so a held-back one shows soon)."""
        with self.lock:
            pending, self.pending = self.pending, None
            if pending is None or self.closed:
                return
            self.last_write = time.monotonic()
            done, total, message, fields = pending
            self.store.update_job(self.job_id, done=done, total=total, message=message, heartbeat=time.time(),
                                  fields=jsonable(fields))

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last_check >= 0.5:
            self.last_check = now
            job = self.store.job(self.job_id)
            self.cancelled = bool(job and job.cancel)
            if self.cancelled:
                with self.lock:
                    self.stopped_at = self.latest
        return self.cancelled

    def where_stopped(self) -> dict:
        """The job's progress when the cancel was first seen, for its final row: a job that goes on to
        wrap up (score a checkpoint, report "done") must not read as finished at 100%."""
        if self.stopped_at is None:
            return {}
        done, total, message = self.stopped_at
        return {"done": done, "total": total, "fields": {"stage": "cancelled", "stopped_during": message}}


def heartbeat(store: Store, job_id: str, reporter: Reporter, stop: threading.Event) -> None:
    """Until ``stop`` is set: write held-back progress and a "still alive" time every HEARTBEAT_INTERVAL."""
    while not stop.wait(HEARTBEAT_INTERVAL):
        try:
            reporter.flush()
            store.update_job(job_id, heartbeat=time.time())
        except Exception:  # a busy database: the next beat tries again
            log.warning("Heartbeat of job %s not written", job_id, exc_info=True)


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """simlab's records (INFO and up) and every library's warnings go to ``path`` while in the block."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root, ours = logging.getLogger(), logging.getLogger("simlab")
    saved = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        ours.setLevel(saved)


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (ValueError, FileNotFoundError, Cancelled)) or not str(exc).strip():
        text = f"{type(exc).__name__}: {text}"
    return text[:500]


def run_worker(job_id: str, store_path: str | Path) -> int:
    """Run one job to its end in this process: status, progress, result or error go to the store."""
    store = Store(store_path)
    job = store.job(job_id)
    if job is None:
        print(f"simlab.jobs: no job {job_id} in {store.path}", file=sys.stderr)
        return 2
    if job.status != "queued":
        print(f"simlab.jobs: job {job_id} is already {job.status}", file=sys.stderr)
        return 0
    if job.cancel:
        store.update_job(job_id, status="cancelled", finished=time.time(), message="Cancelled before it started.")
        return 0
    try:
        store.check_writable()
    except StoreError as exc:
        print(f"simlab.jobs: {exc}", file=sys.stderr)
        _record(store, job_id, status="failed", finished=time.time(), message=str(exc))
        return 1
    with logging_to(log_path(job_id)):
        return _run(store, job)


def _record(store: Store, job_id: str, **fields) -> None:
    """Write a job's end; a store that cannot take it is logged (the reaper ends the job once it can)."""
    try:
        store.update_job(job_id, **fields)
    except StoreError as exc:
        log.error("Job %s: its end (%s) not recorded: %s", job_id, fields.get("status"), exc)


def _run(store: Store, job: Job) -> int:
    job_id, reporter = job.id, Reporter(store, job.id)
    store.update_job(job_id, status="running", started=time.time(), pid=os.getpid(), pid_started=process_started(),
                     host=HOST, heartbeat=time.time(), message="Starting (loading libraries)")
    stop = threading.Event()
    beat = threading.Thread(target=heartbeat, args=(store, job_id, reporter, stop), daemon=True)
    beat.start()
    log.info("Job %s (%s) started, pid %d", job_id, job.kind, os.getpid())
    try:
        fn = until_stopped(lambda: job_function(job.kind), reporter.should_stop, "loading libraries")
        kwargs = {"job_id": job_id} if "job_id" in inspect.signature(fn).parameters else {}
        result = fn(job.params, store, reporter.progress, reporter.should_stop, **kwargs)
        if reporter.should_stop() and stopped_early(result):
            raise Cancelled("Stopped on request.")
    except (Cancelled, KeyboardInterrupt) as exc:
        _flush(reporter)
        _interrupt_runs(store, "interrupted (stopped on request)")
        if reporter.cancelled or isinstance(exc, KeyboardInterrupt):
            _record(store, job_id, status="cancelled", finished=time.time(), message="Stopped on request.",
                    **reporter.where_stopped())
            log.info("Job %s cancelled", job_id)
            return 0
        _record(store, job_id, status="failed", finished=time.time(), message=_short_error(exc),
                error=traceback.format_exc())
        return 1
    except BaseException as exc:  # every failure must land in the store
        _flush(reporter)
        log.exception("Job %s failed", job_id)
        _interrupt_runs(store, f"interrupted (the job failed: {_short_error(exc)})")
        _record(store, job_id, status="failed", finished=time.time(), message=_short_error(exc),
                error=traceback.format_exc())
        return 1
    finally:
        stop.set()
        beat.join(timeout=10)
    _finish(store, job_id, reporter, result)
    return 0


def _flush(reporter: Reporter) -> None:
    """Write the last progress, then take no more: the job's end is written next."""
    try:
        reporter.flush()
    except StoreError as exc:
        log.error("Last progress of job %s not written: %s", reporter.job_id, exc)
    with reporter.lock:
        reporter.closed = True


def _interrupt_runs(store: Store, reason: str) -> None:
    """Runs this worker leaves behind are failed now, not left "running"."""
    try:
        for run_id in store.interrupt_runs(reason):
            log.warning("Run %s ended: %s", run_id, reason)
    except StoreError as exc:
        log.error("Runs of this worker not marked failed (readers will): %s", exc)


def stopped_early(result) -> bool:
    """Whether a job function that returned (rather than raise :class:`Cancelled`) says it stopped short of
    its work: ``{"stopped": True}`` or ``{"status": "cancelled"}`` (a fine-tune scores its checkpoint and
    returns). One that did all its work is "done", even if a cancel came meanwhile: its runs are done too."""
    return isinstance(result, dict) and (bool(result.get("stopped")) or result.get("status") == "cancelled")


def _finish(store: Store, job_id: str, reporter: Reporter, result) -> None:
    reporter.flush()
    job = store.job(job_id)
    total = max(job.total or 0, 1) if job else 1
    late = {"message": "Done: the cancel came after the work was finished."} if reporter.cancelled else {}
    store.update_job(job_id, status="done", finished=time.time(), result=jsonable(result), done=total, total=total,
                     **late)
    log.info("Job %s done", job_id)


def jsonable(value):
    """Results go to a JSON column: numpy numbers and tuples become plain Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(TypeError, ValueError):  # an array of several items stays as it is
            return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return jsonable(asdict(value))
    if isinstance(value, float) and math.isnan(value):  # NaN is not JSON
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m simlab.jobs JOB_ID STORE_PATH", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _terminated)  # a polite kill ends the job as cancelled, not as a crash
    code = run_worker(argv[0], argv[1])
    if any(t.name.startswith(LOADING_THREAD) and t.is_alive() for t in threading.enumerate()):
        # a step left running by a cancel (TensorFlow's import, a dataset being hashed): the job's end is
        # written, so end now rather than wait for it (its thread pools would be joined at exit)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
