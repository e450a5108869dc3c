"""The run store: one SQLite file under cache/, safe for several processes at once (WAL).

A run reads back as a typed :class:`Run` (``Store.get``, ``Store.list_runs``); the schema carries its
version in ``PRAGMA user_version`` and a store written by an older simlab migrates when opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from simlab.paths import cache_dir
from simlab.protocol import Protocol, unchecked

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Run", "Store", "StoreTooNew", "new_id"]

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


# --------------------------------------------------------------------------- schema versions


def _tables(db: sqlite3.Connection) -> None:
    """Version 1: the tables as simlab first wrote them (a no-op on a store that has them)."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        db.execute(statement)


def _run_indexes(db: sqlite3.Connection) -> None:
    """Version 2: the runs lists filter by fingerprint and status and sort by time."""
    db.execute("CREATE INDEX IF NOT EXISTS runs_created ON runs(created)")
    db.execute("CREATE INDEX IF NOT EXISTS runs_fingerprint ON runs(fingerprint, status)")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)")


#: Applied in order: a store at ``user_version`` v runs ``MIGRATIONS[v:]``. Append, never edit.
MIGRATIONS = (_tables, _run_indexes)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreTooNew(RuntimeError):
    """The store was written by a newer simlab, with a schema this one does not know."""


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path | str = "") -> int:
    """Bring the store up to :data:`SCHEMA_VERSION` in one transaction; returns the version it had."""
    found = schema_version(db)
    if found == SCHEMA_VERSION:
        return found
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file: read again once locked
    try:
        found = schema_version(db)
        if found > SCHEMA_VERSION:
            raise StoreTooNew(f"{path} has schema version {found}; this simlab knows up to {SCHEMA_VERSION}. "
                              "Update simlab, or set SIMLAB_CACHE to another folder.")
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if found != SCHEMA_VERSION:
        log.info("store %s: schema version %d -> %d", path, found, SCHEMA_VERSION)
    return found


# --------------------------------------------------------------------------- the typed run record

#: Stored ``kind`` column -> ``Run.kind``. Grid cells are stored as "pair" (and very old rows as NULL).
KINDS = {"pair": "grid", None: "grid", "grid": "grid", "finetune": "finetune"}
#: ``Run.kind`` -> the value written in the ``kind`` column.
KIND_COLUMN = {"grid": "pair", "finetune": "finetune"}


@dataclass
class Run:
    """One stored run. ``kind`` is "grid" (a backbone x merge x classifier cell on frozen vectors) or
    "finetune"; ``config`` is the configuration it ran with (a grid cell's ``GridConfig`` with one-item
    lists, or a ``FinetuneConfig``), and :attr:`protocol` the split, negatives, seed and weights in it.

    ``merge`` and ``classifier`` are the stored columns (a fine-tune run fills them with its method so
    the Compare heatmaps can place it); read :attr:`mode`, :attr:`loss` and :attr:`method` for what a
    fine-tune run did.
    """

    id: str
    created: float | None = None
    finished: float | None = None
    status: str | None = None
    kind: str = "grid"
    dataset: str | None = None
    fingerprint: str | None = None
    backbone: str | None = None
    merge: str | None = None
    classifier: str | None = None
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git: str | None = None
    error: str | None = None
    job_id: str | None = None
    artifacts: dict = field(default_factory=dict)
    split: str | None = None  # also in config; kept as stored for the protocol of rows without one
    seed: int | None = None

    @classmethod
    def from_row(cls, row: Mapping) -> Run:
        """From a ``runs`` row as a dict (JSON columns decoded or still text); unknown columns ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(row).items() if k in known}
        for k in ("config", "metrics", "timings", "versions", "artifacts"):
            value = values.get(k)
            if isinstance(value, (str, bytes)):
                value = json.loads(value)
            values[k] = dict(value or {})
        values["kind"] = KINDS.get(values.get("kind"), values.get("kind"))
        return cls(**values)

    def to_row(self) -> dict:
        """The dict the ``runs`` table holds (``kind`` as stored), as ``Store.get_run`` returns it."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["kind"] = KIND_COLUMN.get(self.kind, self.kind)
        return row

    # ------------------------------------------------------------------ what ran

    @property
    def is_finetune(self) -> bool:
        return self.kind == "finetune"

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def protocol(self) -> Protocol:
        """Split, test size, negatives, ratio, seed and weights; the declared defaults where a stored config
        lacks one. A stored value now out of bounds is kept as it is (logged), for display."""
        try:
            return Protocol.from_config(self.config, split=self.split, seed=self.seed)
        except ValueError as exc:
            log.warning("run %s: protocol out of today's bounds (%s); shown as stored", self.id, exc)
            return unchecked(**{"split": self.split, "seed": self.seed,
                                **{k: v for k, v in self.config.items() if k in Protocol.names() and v is not None}})

    @property
    def weights(self) -> str:
        return self.protocol.weights

    @property
    def mode(self) -> str | None:
        """A fine-tune run's mode ("siamese" or "head"); None for a grid cell."""
        return self.config.get("mode") if self.is_finetune else None

    @property
    def loss(self) -> str | None:
        """A Siamese run's loss ("contrastive", "triplet"); None otherwise."""
        return self.config.get("loss") if self.mode == "siamese" else None

    @property
    def head_merge(self) -> str | None:
        """The merge a fine-tuned head trains on; None otherwise."""
        return self.config.get("merge") if self.mode == "head" else None

    @property
    def method(self) -> str:
        """How pairs were scored: 'dot + xgboost' for a grid cell, 'siamese, contrastive loss' or
        'head on dot' for a fine-tune run, with its augmentation and unfrozen layers."""
        if not self.mode:
            return f"{self.merge} + {self.classifier}"
        base = f"siamese, {self.loss} loss" if self.mode == "siamese" else f"head on {self.head_merge}"
        extras = (["augmented"] if self.config.get("augment") else []) + (
            [f"top {self.config['unfreeze']} layers trained"] if self.config.get("unfreeze") else [])
        return base + "".join(f", {e}" for e in extras)

    @property
    def label(self) -> str:
        """One line naming the run, e.g. 'resnet50 + dot + xgboost' or 'fine-tune of resnet50: siamese, ...'."""
        if self.is_finetune:
            return f"fine-tune of {self.backbone}: {self.method}"
        return f"{self.backbone} + {self.merge} + {self.classifier}"

    @property
    def seconds(self) -> float | None:
        return self.timings.get("total")



def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:10]


class Store:
    """Runs, per-pair predictions, jobs and training curves in one SQLite file.

    Across processes pass the path (or nothing, for ``cache/simlab.db``): each opens its own ``Store``.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_dir() / "simlab.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            migrate(db, self.path)

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

    def get(self, run_id: str) -> Run | None:
        """The run as a typed record, or None."""
        row = self.get_run(run_id)
        return Run.from_row(row) if row is not None else None

    def list_runs(self, status: str | None = None, kind: str | None = None,
                  fingerprint: str | None = None) -> list[Run]:
        """Runs as typed records, newest first; ``kind`` is "grid" or "finetune" (as ``Run.kind``)."""
        where, args = [], []
        for col, val in (("status", status), ("fingerprint", fingerprint)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if kind is not None:
            stored = [k for k, v in KINDS.items() if v == kind and k is not None] or [KIND_COLUMN.get(kind, kind)]
            null = " OR kind IS NULL" if KINDS.get(None) == kind else ""
            where.append(f"(kind IN ({', '.join('?' * len(stored))}){null})")
            args.extend(stored)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC"
        with self._connect() as db:
            return [Run.from_row(self._row(r)) for r in db.execute(sql, args).fetchall()]

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
