"""The run store: one SQLite file under cache/, safe for several processes at once (WAL)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path

import pandas as pd

from simlab.paths import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL, finished REAL, status TEXT, kind TEXT,
    dataset TEXT, fingerprint TEXT, backbone TEXT, merge TEXT, classifier TEXT, split TEXT, seed INTEGER,
    config TEXT, metrics TEXT, timings TEXT, versions TEXT, git TEXT, error TEXT, job_id TEXT, artifacts TEXT);
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT, left_path TEXT, right_path TEXT, left_group TEXT, right_group TEXT, label INTEGER, prob REAL);
CREATE INDEX IF NOT EXISTS predictions_run ON predictions(run_id);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT, created REAL, started REAL, finished REAL, status TEXT, params TEXT,
    done INTEGER, total INTEGER, message TEXT, pid INTEGER, error TEXT, cancel INTEGER DEFAULT 0, result TEXT,
    heartbeat REAL);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT, step INTEGER, epoch INTEGER, name TEXT, value REAL, t REAL);
CREATE INDEX IF NOT EXISTS curves_run ON curves(run_id);
"""
JSON_COLUMNS = ("config", "metrics", "timings", "versions", "params", "result", "artifacts")


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:10]


class Store:
    """Runs, per-pair predictions, jobs and training curves. Pass it around by path, not object."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_dir() / "simlab.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            yield db
        finally:
            db.close()

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict | None:
        if row is None:
            return None
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
        run_id = fields.pop("id", None) or new_id("r")
        self._insert("runs", {"id": run_id, "created": time.time(), "status": "running", "kind": "pair", **fields})
        return run_id

    def update_run(self, run_id: str, **fields) -> None:
        self._update("runs", run_id, fields)

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
            values = {"metrics": json.dumps(metrics), "status": "done", "finished": time.time(),
                      **{k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in fields.items()}}
            db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                       [*values.values(), run_id])
            db.execute("COMMIT")

    def get_run(self, run_id: str) -> dict | None:
        with self._connect() as db:
            return self._row(db.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone())

    def runs(self, status: str | None = None, kind: str | None = None, fingerprint: str | None = None) -> list[dict]:
        """Runs, newest first, optionally filtered."""
        where, args = [], []
        for col, val in (("status", status), ("kind", kind), ("fingerprint", fingerprint)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC"
        with self._connect() as db:
            return [self._row(r) for r in db.execute(sql, args).fetchall()]

    def runs_frame(self, **filters) -> pd.DataFrame:
        """Finished runs as a table: config columns plus one column per metric."""
        rows = []
        for r in self.runs(**filters):
            metrics = r.get("metrics") or {}
            rows.append({k: r[k] for k in ("id", "created", "status", "kind", "dataset", "backbone", "merge",
                                           "classifier", "split", "seed")} | metrics
                        | {"seconds": (r.get("timings") or {}).get("total")})
        return pd.DataFrame(rows)

    def predictions(self, run_id: str) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT left_path, right_path, left_group, right_group, label, prob FROM predictions "
                "WHERE run_id = ? ORDER BY rowid", db, params=[run_id])

    def delete_run(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for table, col in (("predictions", "run_id"), ("curves", "run_id"), ("runs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {col} = ?", [run_id])
            db.execute("COMMIT")

    # training curves --------------------------------------------------------------------------------
    def add_curve_points(self, run_id: str, points: list[tuple[int, int, str, float]]) -> None:
        """(step, epoch, name, value) points, e.g. name 'batch_loss', 'loss', 'val_loss', 'val_accuracy'."""
        now = time.time()
        with self._connect() as db:
            db.executemany("INSERT INTO curves (run_id, step, epoch, name, value, t) VALUES (?, ?, ?, ?, ?, ?)",
                           [(run_id, s, e, n, float(v), now) for s, e, n, v in points])

    def curves(self, run_id: str) -> pd.DataFrame:
        with self._connect() as db:
            return pd.read_sql_query("SELECT step, epoch, name, value, t FROM curves WHERE run_id = ? ORDER BY rowid",
                                     db, params=[run_id])

    # jobs ---------------------------------------------------------------------------------------------
    def add_job(self, kind: str, params: dict) -> str:
        job_id = new_id("j")
        self._insert("jobs", {"id": job_id, "kind": kind, "created": time.time(), "status": "queued",
                              "params": params, "done": 0, "total": 0, "message": "Waiting to start"})
        return job_id

    def update_job(self, job_id: str, **fields) -> None:
        self._update("jobs", job_id, fields)

    def get_job(self, job_id: str) -> dict | None:
        with self._connect() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchone())

    def jobs(self, status: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM jobs", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        with self._connect() as db:
            return [self._row(r) for r in db.execute(sql + " ORDER BY created DESC", args).fetchall()]

    def delete_job(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
