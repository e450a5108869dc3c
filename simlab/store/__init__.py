"""The run store: one SQLite file under cache/, safe for several processes at once (WAL).

A run reads back as a typed :class:`Run` (``Store.get``, ``Store.list_runs``), a job as a typed :class:`Job`
(``Store.job``, ``Store.list_jobs``); a table of runs is a view of those records
(:func:`simlab.store.run.runs_frame`). The schema carries its version in ``PRAGMA user_version`` and a
store written by an older simlab migrates when opened.

Every run carries its owner, the process that writes it (pid, start time, machine) and a heartbeat the
owner writes every RUN_BEAT_INTERVAL while the run is open. A run left ``running`` by a process that has
ended is marked failed by the next reader (:meth:`Store.reap_orphan_runs`); a pid now used by another
process is told apart by its start time; a run whose heartbeat is older than RUN_STALE_AFTER is marked
failed whatever machine owns it.
A store that cannot be written raises :class:`StoreError`, one line naming the file, why and what to do
(:class:`StoreCorrupt` for a damaged file, :class:`StoreTooNew` for a newer simlab's store).

Rows are read one by one: a run row that cannot be read (bad JSON, a wrong type in a column) is left out of
the lists and reported as :class:`CorruptRun` ("corrupt run <id>: what is wrong", :meth:`Store.corrupt_runs`);
predictions that cannot be read are left out of :meth:`Store.predictions` and named in its ``attrs["problem"]``.

    schema.py   the tables, their versions and migrations, the errors a store raises
    run.py      the typed Run record
    job.py      the typed Job record (its duration and elapsed time computed once)
    owner.py    a process told by pid, start time and machine (psutil)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pandas as pd

from simlab.paths import cache_dir
from simlab.store.job import ACTIVE_JOBS, Job
from simlab.store.owner import HOST, owner_process, process_started
from simlab.store.run import KIND_COLUMN, KINDS, CorruptRun, Run, show, text_problem, what_is
from simlab.store.schema import (
    JSON_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreTooNew,
    free_bytes,
    migrate,
    params_key,
    schema_version,
    store_error,
)

log = logging.getLogger(__name__)

__all__ = ["HOST", "MIGRATIONS", "SCHEMA_VERSION", "CorruptRun", "Job", "Run", "Store", "StoreCorrupt", "StoreError",
           "StoreFull", "StoreTooNew", "new_id", "owner_process", "params_key", "process_started"]

INTERRUPTED = "interrupted (process ended)"  # the error of a run whose process ended while it ran
REAP_INTERVAL = 3.0  # seconds between two looks for orphaned runs by the readers of one store
MIN_FREE_BYTES = 16 * 2**20  # below this much free disk, work is not started
RUN_BEAT_INTERVAL = 20.0  # seconds between two heartbeats of the runs a process has open
RUN_STALE_AFTER = 300.0  # a running run whose heartbeat is older than this is marked failed, whatever its machine
PREDICTION_COLUMNS = ["left_path", "right_path", "left_group", "right_group", "label", "prob"]
_LAST_REAP: dict[str, float] = {}  # store path -> when its orphaned runs were last looked for (monotonic)
_WARNED: set[tuple[str, str]] = set()  # (store path, message) of the corrupt rows already logged
_BEATING: set[tuple[int, str]] = set()  # (pid, store path) with a heartbeat thread
_BEAT_LOCK = threading.Lock()


def _text(data: bytes) -> str:
    """SQLite text as str; bytes that are not UTF-8 are kept (surrogate-escaped) and reported by the row check."""
    return data.decode("utf-8", "surrogateescape")


def _beat_runs(path: str, pid: int) -> None:
    """Write the heartbeat of the runs process ``pid`` has open in the store at ``path``, every
    RUN_BEAT_INTERVAL, until none is left open (or the file is gone)."""
    uri = "file:" + urllib.parse.quote(path) + "?mode=rw"  # never creates a store that was removed
    while True:
        time.sleep(RUN_BEAT_INTERVAL)
        with _BEAT_LOCK:
            try:
                db = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
                try:
                    n = db.execute("UPDATE runs SET heartbeat = ? WHERE status = 'running' AND owner_pid = ? AND "
                                   "owner_host = ?", [time.time(), pid, HOST]).rowcount
                finally:
                    db.close()
            except sqlite3.Error as exc:
                log.debug("Heartbeat of the runs in %s not written: %s", path, exc)
                n = 0 if "unable to open" in str(exc) else -1
            if n == 0:
                _BEATING.discard((pid, path))
                return


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _prediction_problem(row: sqlite3.Row) -> str | None:
    """What is wrong with one stored prediction (None when it reads)."""
    for name in ("left_path", "right_path", "left_group", "right_group"):
        if problem := text_problem(name, row[name], required=name.endswith("path")):
            return problem
    label, prob = row["label"], row["prob"]
    if not isinstance(label, int) or label not in (0, 1):
        return f"label is {what_is(label)}, not 0 or 1"
    if _finite(prob) is None or not 0 <= prob <= 1:
        return f"prob is {what_is(prob)}, not a probability"
    return None


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:10]


class Store:
    """Runs, per-pair predictions, jobs and training curves in one SQLite file.

    Across processes pass the path (or nothing, for ``cache/simlab.db``): each opens its own ``Store``.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_dir() / "simlab.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(self.path, exc) or exc from exc
        with self._connect() as db:
            migrate(db, self.path)

    @contextlib.contextmanager
    def _connect(self):
        """A connection; a full disk or an unwritable file raises :class:`StoreError` (one line)."""
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) or exc from exc
        db.row_factory = sqlite3.Row
        db.text_factory = _text
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            raise store_error(self.path, exc) or exc from exc
        finally:
            db.close()

    def check_writable(self, min_free: int = MIN_FREE_BYTES) -> None:
        """Raise :class:`StoreError` (:class:`StoreFull` for a full disk) unless the store can be written now.

        Called before any work starts, so nothing is computed only to be lost. A real write is tried
        (file permissions say nothing to root, and a read-only mount says it only on a write).
        """
        free = free_bytes(self.path.parent)
        if free is not None and free < min_free:
            raise StoreFull(f"{self.path}: the disk is full ({free // 2**20} MiB free, {min_free // 2**20} MiB "
                            f"needed). Free space on {self.path.parent} or set SIMLAB_CACHE to another folder, "
                            "then run again.")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"PRAGMA user_version = {schema_version(db)}")
            db.execute("COMMIT")

    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        """A row as a dict, its JSON columns decoded."""
        out = dict(row)
        for k in JSON_COLUMNS:
            if k in out and out[k] is not None:
                out[k] = json.loads(out[k])
        return out

    def _insert(self, table: str, values: dict) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        cols = ", ".join(values)
        with self._connect() as db:
            db.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})",
                       list(values.values()))

    def _update(self, table: str, id_: str, values: dict) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._connect() as db:
            db.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*values.values(), id_])

    # runs ---------------------------------------------------------------------------------------
    def add_run(self, **fields) -> str:
        """Open a run (status "running", owned by this process unless ``owner_*`` are given); returns its id."""
        run_id = fields.pop("id", None) or new_id("r")
        now = time.time()
        owner = {"owner_pid": os.getpid(), "owner_started": process_started(), "owner_host": HOST}
        self._insert("runs", {"id": run_id, "created": now, "status": "running", "kind": "pair", "heartbeat": now,
                              **owner, **fields})
        if fields.get("owner_pid", owner["owner_pid"]) == owner["owner_pid"]:
            self._keep_beating()
        return run_id

    def _keep_beating(self) -> None:
        """Make sure a thread of this process writes the heartbeat of its open runs in this store."""
        key = (os.getpid(), str(self.path))
        with _BEAT_LOCK:
            if key in _BEATING:
                return
            _BEATING.add(key)
        threading.Thread(target=_beat_runs, args=(str(self.path), os.getpid()), daemon=True,
                         name="simlab-run-heartbeat").start()

    def update_run(self, run_id: str, **fields) -> None:
        self._update("runs", run_id, {"heartbeat": time.time(), **fields})

    def interrupt_runs(self, reason: str = "interrupted") -> list[str]:
        """Mark the runs this process still has running as failed with ``reason`` (e.g. on SIGTERM); their ids."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE status = 'running' AND owner_pid = ? AND "
                                            "owner_host = ?", [os.getpid(), HOST])]
            db.executemany("UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE id = ?",
                           [(reason, time.time(), id_) for id_ in ids])
            db.execute("COMMIT")
        return ids

    def reap_orphan_runs(self, force: bool = False) -> list[str]:
        """Mark runs left "running" by a process that has ended (or by a job that has ended) as failed.

        Readers call it, at most once per REAP_INTERVAL per store file unless ``force``; returns the ids
        it marked. A run owned by another machine is left to that machine's readers.
        """
        key, now = str(self.path), time.monotonic()
        if not force and now - _LAST_REAP.get(key, -REAP_INTERVAL) < REAP_INTERVAL:
            return []
        _LAST_REAP[key] = now
        try:
            with self._connect() as db:
                gone = self._orphans(db)
                if gone:
                    db.executemany("UPDATE runs SET status = 'failed', error = ?, finished = ? "
                                   "WHERE id = ? AND status = 'running'", [(why, time.time(), id_)
                                                                          for id_, why in gone.items()])
        except StoreError as exc:
            log.warning("Runs of ended processes not marked failed: %s", exc)
            return []
        for run_id, why in gone.items():
            log.warning("Run %s marked failed: %s", run_id, why)
        return list(gone)

    @staticmethod
    def _orphans(db: sqlite3.Connection) -> dict[str, str]:
        """Running runs whose owner process is gone, whose job has ended, or whose heartbeat (or its job's) is
        older than RUN_STALE_AFTER whatever the machine -> the error to record."""
        rows = db.execute("SELECT r.id, r.owner_pid, r.owner_started, r.owner_host, r.heartbeat, r.created, "
                          "j.status AS job_status, j.heartbeat AS job_heartbeat "
                          "FROM runs r LEFT JOIN jobs j ON j.id = r.job_id WHERE r.status = 'running'").fetchall()
        alive: dict[tuple, bool] = {}
        gone = {}
        now = time.time()
        for r in rows:
            beats = [b for b in (_finite(r["heartbeat"]), _finite(r["job_heartbeat"])) if b is not None]
            last = max(beats) if beats else _finite(r["created"])
            if r["job_status"] is not None and r["job_status"] not in ACTIVE_JOBS:
                gone[r["id"]] = f"interrupted (its job ended {r['job_status']})"
            elif (isinstance(r["owner_pid"], int) and 0 < r["owner_pid"] < 2**31
                  and r["owner_host"] in (None, HOST) and not isinstance(r["owner_started"], (str, bytes))):
                owner = (r["owner_pid"], r["owner_started"])
                if owner not in alive:
                    alive[owner] = owner_process(*owner) is not None
                if not alive[owner]:
                    gone[r["id"]] = INTERRUPTED
            if r["id"] not in gone and last is not None and now - last > RUN_STALE_AFTER:
                where = f" on {show(r['owner_host'])}" if r["owner_host"] not in (None, HOST) else ""
                gone[r["id"]] = f"interrupted (its process{where} wrote no heartbeat for {int(now - last)} s)"
        return gone

    def finish_run(self, run_id: str, metrics: dict, predictions: pd.DataFrame | None = None, **fields) -> None:
        """Record a run's results in one transaction: its predictions, metrics and status together."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            if predictions is not None:
                cols = ["left_path", "right_path", "left_group", "right_group", "label", "prob"]
                db.execute("DELETE FROM predictions WHERE run_id = ?", [run_id])
                db.executemany(
                    f"INSERT INTO predictions (run_id, {', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, *row) for row in predictions[cols].itertuples(index=False, name=None)])
            now = time.time()
            values = {"metrics": json.dumps(metrics), "status": "done", "finished": now, "heartbeat": now,
                      **{k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in fields.items()}}
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                       [*values.values(), run_id])
            db.execute("COMMIT")

    def get(self, run_id: str) -> Run | None:
        """The run as a typed record, or None; :class:`CorruptRun` (one line) if its row cannot be read."""
        self.reap_orphan_runs()
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone()
        return Run.from_row(row) if row is not None else None

    def _read_runs(self, sql: str, args: list) -> tuple[list[Run], list[CorruptRun]]:
        """The rows of ``sql`` read one by one: the runs that read, and the corrupt ones."""
        self.reap_orphan_runs()
        with self._connect() as db:
            rows = db.execute(sql, args).fetchall()
        good, bad = [], []
        for row in rows:
            try:
                good.append(Run.from_row(row))
            except CorruptRun as exc:
                bad.append(exc)
                if (str(self.path), str(exc)) not in _WARNED:
                    _WARNED.add((str(self.path), str(exc)))
                    log.warning("%s: %s (left out; delete it with: python -m simlab runs --delete %s)",
                                self.path, exc, show(exc.run_id, 60))
        return good, bad

    def corrupt_runs(self) -> list[CorruptRun]:
        """The run rows that cannot be read, newest first: each says ``corrupt run <id>: what is wrong``."""
        return self._read_runs("SELECT * FROM runs ORDER BY created DESC", [])[1]

    def list_runs(self, status: str | None = None, kind: str | None = None,
                  fingerprint: str | None = None) -> list[Run]:
        """Runs as typed records, newest first; ``kind`` is "grid" or "finetune" (as ``Run.kind``)."""
        sql, args = self._runs_query(status, kind, fingerprint)
        return self._read_runs(sql, args)[0]

    @staticmethod
    def _runs_query(status: str | None, kind: str | None, fingerprint: str | None) -> tuple[str, list]:
        """The SQL of a filtered list of runs: ``kind`` as ``Run.kind`` ("grid" matches the rows stored as "pair"
        and the oldest, NULL ones; the stored name "pair" is read as "grid")."""
        where, args = [], []
        for col, val in (("status", status), ("fingerprint", fingerprint)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if kind is not None:
            kind = KINDS.get(kind, kind)
            stored = [k for k, v in KINDS.items() if v == kind and k is not None] or [KIND_COLUMN.get(kind, kind)]
            null = " OR kind IS NULL" if KINDS.get(None) == kind else ""
            where.append(f"(kind IN ({', '.join('?' * len(stored))}){null})")
            args.extend(stored)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC"
        return sql, args

    def predictions(self, run_id: str) -> pd.DataFrame:
        """A run's test pairs (paths, groups, ``label`` 0/1, ``prob``), in stored order. Rows that cannot be
        read (a NULL or text ``prob``, a ``label`` not 0 or 1) are left out and named, one line, in
        ``frame.attrs["problem"]`` ("corrupt run <id>: n of m predictions ...")."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM predictions WHERE run_id = ? "
                              "ORDER BY rowid", [run_id]).fetchall()
        good, bad = [], []
        for i, row in enumerate(rows):
            problem = _prediction_problem(row)
            if problem is None:
                good.append(tuple(row))
            else:
                bad.append(f"row {i + 1}: {problem}")
        frame = pd.DataFrame(good, columns=PREDICTION_COLUMNS).astype({"label": "int64", "prob": "float64"})
        if bad:
            problem = str(CorruptRun(run_id, f"{len(bad)} of {len(rows)} predictions cannot be read and are left "
                                             f"out ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''})"))
            frame.attrs["problem"] = problem
            if (str(self.path), problem) not in _WARNED:
                _WARNED.add((str(self.path), problem))
                log.warning("%s: %s", self.path, problem)
        return frame

    def test_pairs_keys(self, run_ids: list[str] | None = None) -> dict[str, str]:
        """Run id -> a digest of the test pairs it was scored on (paths and labels, in any order): two runs
        with the same key can be compared pair by pair. Runs without stored predictions are left out."""
        where, args = "", []
        if run_ids is not None:
            if not run_ids:
                return {}
            where, args = f" WHERE run_id IN ({', '.join('?' * len(run_ids))})", list(run_ids)
        digests: dict = {}
        with self._connect() as db:
            rows = db.execute("SELECT run_id, left_path, right_path, label FROM predictions" + where
                              + " ORDER BY run_id, left_path, right_path", args)
            for run_id, left, right, label in rows:
                digests.setdefault(run_id, hashlib.sha1()).update(f"{left}\t{right}\t{label}\n".encode())
        return {run_id: h.hexdigest()[:16] for run_id, h in digests.items()}

    def delete_run(self, run_id: str) -> bool:
        """Delete a run, its predictions and its curves (a corrupt row too: its id is matched as text);
        whether a run row was deleted."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for table, col in (("predictions", "run_id"), ("curves", "run_id")):
                db.execute(f"DELETE FROM {table} WHERE {col} = ? OR CAST({col} AS TEXT) = ?", [run_id, run_id])
            n = db.execute("DELETE FROM runs WHERE id = ? OR CAST(id AS TEXT) = ?", [run_id, run_id]).rowcount
            db.execute("COMMIT")
        return n > 0

    # training curves --------------------------------------------------------------------------------
    def add_curve_points(self, run_id: str, points: list[tuple[int, int, str, float]]) -> None:
        """(step, epoch, name, value) points, e.g. name 'batch_loss', 'loss', 'val_loss', 'val_accuracy'."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO curves (run_id, step, epoch, name, value, t) VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, s, e, n, float(v), now) for s, e, n, v in points])
            db.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", [now, run_id])
            db.execute("COMMIT")

    def curves(self, run_id: str) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query("SELECT step, epoch, name, value, t FROM curves WHERE run_id = ? ORDER BY rowid",
                                     db, params=[run_id])

    # jobs ---------------------------------------------------------------------------------------------
    def add_job(self, kind: str, params: dict) -> str:
        job_id = new_id("j")
        self._insert("jobs", self._new_job(job_id, kind, params))
        return job_id

    def add_job_once(self, kind: str, params: dict) -> tuple[str, bool]:
        """``(id, True)`` of a new queued job, or ``(id, False)`` of the queued or running job (not being
        cancelled) with the same kind and params (equal as canonical JSON). Atomic across processes."""
        key = params_key(params)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE kind = ? AND params_key = ? AND status IN ('queued', "
                             "'running') AND COALESCE(cancel, 0) = 0 ORDER BY created LIMIT 1", [kind, key]).fetchone()
            if row is None:
                values = self._new_job(new_id("j"), kind, params)
                values["params"] = json.dumps(values["params"])
                db.execute(f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                           list(values.values()))
            db.execute("COMMIT")
        return (row["id"], False) if row is not None else (values["id"], True)

    @staticmethod
    def _new_job(job_id: str, kind: str, params: dict) -> dict:
        return {"id": job_id, "kind": kind, "created": time.time(), "status": "queued", "params": params,
                "params_key": params_key(params), "done": 0, "total": 0, "message": "Waiting to start"}

    def update_job(self, job_id: str, **fields) -> None:
        self._update("jobs", job_id, fields)

    def job(self, job_id: str) -> Job | None:
        """The job as a typed record, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchone()
        return Job.from_row(self._row(row)) if row is not None else None

    def list_jobs(self, status: str | None = None) -> list[Job]:
        """Jobs as typed records, newest first (only those with ``status``, when given)."""
        sql, args = "SELECT * FROM jobs", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created DESC", args).fetchall()
        return [Job.from_row(self._row(row)) for row in rows]

    def delete_job(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
