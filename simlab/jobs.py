"""Background work: each job runs in its own worker process and reports through the store.

A page (or the CLI) calls :func:`start_job`; the worker (``python -m simlab.jobs JOB_ID STORE``)
runs the job's function from :data:`JOB_KINDS`, writes progress, result or error to the store's
``jobs`` table, and checks the cancel flag between batches. The worker is started in a new
session, so a Streamlit rerun or restart never stops it; :func:`reap_stale` marks jobs whose
worker died as failed.

Adding a kind is one entry in :data:`JOB_KINDS`: ``"name": function`` or ``"name": "module:function"``
(imported by the worker only), where the function is ``fn(params, store, progress, should_stop) -> dict``,
``progress(done, total, message)`` and ``should_stop() -> bool``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

from simlab.paths import REPO_ROOT, cache_dir
from simlab.store import Store

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
PROGRESS_INTERVAL = 0.3  # seconds between progress writes (the first and the last always go through)
HEARTBEAT_INTERVAL = 2.0  # seconds between the worker's "still alive" writes
STALE_AFTER = 120.0  # a worker silent this long is considered dead even if its pid exists
START_GRACE = 30.0  # a queued job whose worker never reported gets this long before it is reaped
CANCEL_GRACE = 20.0  # after a cancel request, the worker is killed if it has not stopped by then

Progress = Callable[[int, int, str], None]
JobFn = Callable[[dict, Store, Progress, Callable[[], bool]], dict]


# --------------------------------------------------------------------------- job kinds


def _grid_config(params: dict):
    from simlab.experiment import GridConfig

    known = {f.name for f in fields(GridConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"Unknown grid setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    return GridConfig(**params).validate()


def vectorize_job(params: dict, store: Store, progress: Progress, should_stop) -> dict:
    """Vectors of one dataset for each chosen backbone (params: dataset, backbones, weights)."""
    from simlab.data import load_dataset
    from simlab.vectors import vectorize

    backbones = params.get("backbones") or [params.get("backbone")]
    if not backbones or not all(backbones):
        raise ValueError("Pick at least one backbone to vectorise with.")
    progress(0, 0, "Loading the dataset")
    dataset = load_dataset(params.get("dataset") or "demo")
    n, k = dataset.n_images, len(backbones)
    sets = []
    for i, name in enumerate(backbones):
        def report(done, total, rate, eta, i=i, name=name):
            progress(i * n + done, k * n, f"{name}: {done}/{total} images, {rate:.1f} img/s, ETA {_duration(eta)}")

        progress(i * n, k * n, f"{name}: loading the model")
        t0 = time.perf_counter()
        vs = vectorize(dataset, name, params.get("weights") or None, progress=report, should_stop=should_stop)
        sets.append({"backbone": name, "weights": vs.weights, "key": vs.key, "images": len(vs.paths),
                     "computed": vs.computed, "problems": len(vs.problems),
                     "seconds": round(time.perf_counter() - t0, 2)})
    progress(k * n, k * n, f"Vectors ready for {k} backbone(s)")
    return {"dataset": dataset.spec, "fingerprint": dataset.fingerprint, "sets": sets}


def grid_job(params: dict, store: Store, progress: Progress, should_stop, job_id: str | None = None) -> dict:
    """A grid of runs (params: a GridConfig as a dict). One progress bar: vectorising, then training."""
    from simlab.experiment import run_grid

    config = _grid_config(params)
    cells = config.cells()
    n_b = len(config.backbones)
    # Share of the bar per phase: vectorising weighs like training, each backbone an equal slice.
    scale = 1000

    def report(stage, done, total, message):
        if stage == "vectorize":
            b = next((i for i, b in enumerate(config.backbones) if message.startswith(f"{b}:")), 0)
            frac = (b + (done / total if total else 0)) / n_b
            progress(int(scale * 0.5 * frac), scale, f"Vectorising · {message}")
        else:
            frac = done / total if total else 1
            step = f"{done}/{total} runs done · " if done < total else ""
            progress(int(scale * (0.5 + 0.5 * frac)), scale, f"Training · {step}{message}")

    progress(0, scale, "Loading the models and the dataset")
    runs = [summary for summary in run_grid(config, store, progress=report, should_stop=should_stop,
                                            job_id=job_id)]
    progress(scale, scale, f"{len(runs)} run(s) done")
    best = max(runs, key=lambda r: (r.get("accuracy") or 0, r.get("auc") or 0), default=None)
    return {"dataset": config.dataset, "runs": [r["run_id"] for r in runs], "n_runs": len(cells),
            "best": best}


DEMO_DEFAULTS = {"dataset": "demo", "merges": ["dot", "l1", "l2"], "classifiers": ["cosine", "logreg", "xgboost"]}


def demo_job(params: dict, store: Store, progress: Progress, should_stop, job_id: str | None = None) -> dict:
    """The demo experiment: the bundled backbone on the demo images, a small default grid."""
    from simlab.backbones import DEFAULT_BACKBONE

    config = {**DEMO_DEFAULTS, "backbones": [DEFAULT_BACKBONE], **(params or {})}
    if config["dataset"] == "demo":
        from simlab.data.demo import demo_dir

        if not demo_dir().exists():
            progress(0, 1000, "Generating the demo images (first time only, up to a minute)")
    return grid_job(config, store, progress, should_stop, job_id=job_id)


#: kind -> function, or "module:function" imported only by the worker. Adding a kind is one line.
JOB_KINDS: dict[str, JobFn | str] = {
    "vectorize": vectorize_job,
    "grid": grid_job,
    "demo": demo_job,
    "finetune": "simlab.finetune:finetune_job",
}

#: What each kind does, for pages and the CLI (kinds missing here show their name).
JOB_LABELS = {"vectorize": "Vectorise images", "grid": "Grid of runs", "demo": "Demo experiment",
              "finetune": "Fine-tune"}


def job_function(kind: str) -> JobFn:
    """The function behind a job kind (imports a ``"module:function"`` entry)."""
    try:
        entry = JOB_KINDS[kind]
    except KeyError:
        raise ValueError(f"Unknown job kind {kind!r}. Known kinds: {', '.join(JOB_KINDS)}.") from None
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# --------------------------------------------------------------------------- the API pages use


def _store(store: Store | str | Path | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def log_path(job_id: str) -> Path:
    """Where the worker of a job writes its stdout and stderr."""
    return cache_dir("jobs") / f"{job_id}.log"


def start_job(kind: str, params: dict | None = None, store_path: str | Path | None = None) -> str:
    """Record a job and start its worker process; returns the job id at once."""
    if kind not in JOB_KINDS:
        raise ValueError(f"Unknown job kind {kind!r}. Known kinds: {', '.join(JOB_KINDS)}.")
    params = dict(params or {})
    store = _store(store_path)
    job_id = store.add_job(kind, params)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path(job_id), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "simlab.jobs", job_id, str(store.path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(REPO_ROOT), env=env, start_new_session=True)
    store.update_job(job_id, pid=proc.pid, heartbeat=time.time())
    # Collect the exit status when it ends, so a finished worker never lingers as a zombie.
    threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
    return job_id


def cancel_job(job_id: str, store_path: str | Path | None = None) -> None:
    """Ask a job to stop: the worker ends it as "cancelled" at its next check (between batches)."""
    store = _store(store_path)
    job = store.get_job(job_id)
    if job is None or job["status"] not in ACTIVE:
        return
    store.update_job(job_id, cancel=int(time.time()), message="Stopping…")


def get_job(job_id: str, store_path: str | Path | None = None) -> dict | None:
    """One job's row (status, done, total, message, error, result...), or None."""
    return _store(store_path).get_job(job_id)


def list_jobs(store_path: str | Path | None = None, status: str | None = None) -> list[dict]:
    """Every job, newest first (after marking dead workers' jobs as failed)."""
    store = _store(store_path)
    reap_stale(store)
    return store.jobs(status)


def active_jobs(kind: str | None = None, store_path: str | Path | None = None) -> list[dict]:
    """Jobs queued or running (optionally of one kind), newest first."""
    store = _store(store_path)
    reap_stale(store)
    return [j for j in store.jobs() if j["status"] in ACTIVE and (kind is None or j["kind"] == kind)]


def _pid_alive(pid: int | None) -> bool:
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


def _log_tail(job_id: str, lines: int = 15) -> str:
    try:
        text = log_path(job_id).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def reap_stale(store: Store | str | Path | None = None) -> list[str]:
    """Mark active jobs whose worker is gone (or silent too long) as failed; kill overdue cancels.

    Returns the ids of the jobs it changed.
    """
    store = _store(store)
    now, changed = time.time(), []
    for job in store.jobs():
        if job["status"] not in ACTIVE:
            continue
        alive = _pid_alive(job.get("pid"))
        beat = job.get("heartbeat") or job.get("created") or now
        asked = job.get("cancel") or 0  # the time of the cancel request (cancel_job writes a timestamp)
        if asked > 1e9 and alive and now - asked > CANCEL_GRACE:
            with contextlib.suppress(OSError):
                os.killpg(job["pid"], signal.SIGKILL)
            store.update_job(job["id"], status="cancelled", finished=now,
                             message="Stopped (the worker did not stop in time and was ended).")
            changed.append(job["id"])
            continue
        if job["status"] == "queued" and job.get("pid") is None and now - beat < START_GRACE:
            continue  # being started right now
        if alive and now - beat < STALE_AFTER:
            continue
        if job.get("cancel"):
            store.update_job(job["id"], status="cancelled", finished=now, message="Stopped.")
        else:
            why = ("The worker process died" if not alive
                   else f"The worker stopped responding (no heartbeat for {int(now - beat)} s) and was ended")
            if alive:
                with contextlib.suppress(OSError):
                    os.killpg(job["pid"], signal.SIGKILL)
            tail = _log_tail(job["id"])
            store.update_job(job["id"], status="failed", finished=now,
                             message=f"{why} before finishing (killed, out of memory, or the machine restarted). "
                                     "Run it again.",
                             error=f"{why}.\n\nLast lines of {log_path(job['id'])}:\n{tail or '(empty)'}")
        changed.append(job["id"])
    return changed


# --------------------------------------------------------------------------- the worker


class _Reporter:
    """Progress writes for one job, at most one per PROGRESS_INTERVAL, plus the cancel check."""

    def __init__(self, store: Store, job_id: str):
        self.store, self.job_id = store, job_id
        self.last_write = 0.0
        self.last_check, self.cancelled = 0.0, False
        self.pending: tuple | None = None
        self.lock = threading.Lock()

    def progress(self, done: int, total: int, message: str = "") -> None:
        with self.lock:
            self.pending = (int(done), int(total), str(message)[:300])
            due = time.monotonic() - self.last_write >= PROGRESS_INTERVAL or (total and done >= total)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress now (also called by the heartbeat, so a held-back one shows soon)."""
        with self.lock:
            pending, self.pending = self.pending, None
            if pending is None:
                return
            self.last_write = time.monotonic()
            done, total, message = pending
            self.store.update_job(self.job_id, done=done, total=total, message=message, heartbeat=time.time())

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last_check >= 0.5:
            self.last_check = now
            job = self.store.get_job(self.job_id)
            self.cancelled = bool(job and job.get("cancel"))
        return self.cancelled


def _heartbeat(store: Store, job_id: str, reporter: _Reporter, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_INTERVAL):
        with contextlib.suppress(Exception):
            reporter.flush()
            store.update_job(job_id, heartbeat=time.time())


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (ValueError, FileNotFoundError, InterruptedError)) or not str(exc).strip():
        text = f"{type(exc).__name__}: {text}"
    return text[:500]


def run_worker(job_id: str, store_path: str | Path) -> int:
    """Run one job to its end in this process: status, progress, result or error go to the store."""
    store = Store(store_path)
    job = store.get_job(job_id)
    if job is None:
        print(f"simlab.jobs: no job {job_id} in {store.path}", file=sys.stderr)
        return 2
    if job["status"] != "queued":
        print(f"simlab.jobs: job {job_id} is already {job['status']}", file=sys.stderr)
        return 0
    reporter = _Reporter(store, job_id)
    if job.get("cancel"):
        store.update_job(job_id, status="cancelled", finished=time.time(), message="Cancelled before it started.")
        return 0
    store.update_job(job_id, status="running", started=time.time(), pid=os.getpid(), heartbeat=time.time(),
                     message="Starting (loading libraries)")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, reporter, stop), daemon=True)
    beat.start()
    print(f"[{time.strftime('%H:%M:%S')}] job {job_id} ({job['kind']}) started, pid {os.getpid()}", flush=True)
    try:
        fn = job_function(job["kind"])
        kwargs = {"job_id": job_id} if "job_id" in inspect.signature(fn).parameters else {}
        result = fn(job["params"] or {}, store, reporter.progress, reporter.should_stop, **kwargs)
        if reporter.should_stop():
            raise InterruptedError("Stopped on request.")
    except (InterruptedError, KeyboardInterrupt) as exc:
        if reporter.cancelled or isinstance(exc, KeyboardInterrupt):
            reporter.flush()
            store.update_job(job_id, status="cancelled", finished=time.time(), message="Stopped on request.")
            print(f"job {job_id} cancelled", flush=True)
            return 0
        reporter.flush()
        store.update_job(job_id, status="failed", finished=time.time(), message=_short_error(exc),
                         error=traceback.format_exc())
        return 1
    except BaseException as exc:  # noqa: BLE001 - every failure must land in the store
        reporter.flush()
        tb = traceback.format_exc()
        print(tb, flush=True)
        store.update_job(job_id, status="failed", finished=time.time(), message=_short_error(exc), error=tb)
        return 1
    finally:
        stop.set()
        beat.join(timeout=10)
    reporter.flush()
    job = store.get_job(job_id)
    total = max(job.get("total") or 0, 1)
    store.update_job(job_id, status="done", finished=time.time(), result=_jsonable(result), done=total,
                     total=total)
    print(f"[{time.strftime('%H:%M:%S')}] job {job_id} done", flush=True)
    return 0


def _jsonable(value):
    """Results go to a JSON column: numpy numbers and tuples become plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(Exception):
            return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m simlab.jobs JOB_ID STORE_PATH", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    signal.signal(signal.SIGTERM, _terminated)  # a polite kill ends the job as cancelled, not as a crash
    return run_worker(argv[0], argv[1])


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
