"""The store's file format: its tables, their versions and migrations, and the errors a store raises."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

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
FULL_BELOW = 2**20  # bytes: a disk with less free space than this is full for the store
#: The threshold of a run that stored none: every run before schema version 4 was scored at 0.5.
DEFAULT_THRESHOLD = 0.5
JSON_COLUMNS = ("config", "metrics", "timings", "versions", "params", "result", "artifacts", "fields")

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


def _owners(db: sqlite3.Connection) -> None:
    """Version 3: runs carry their owner process and a heartbeat; jobs their worker's start time and
    machine, their progress fields and the key of their params (an identical request attaches to them)."""
    for table, column, kind in (("runs", "owner_pid", "INTEGER"), ("runs", "owner_started", "REAL"),
                                ("runs", "owner_host", "TEXT"), ("runs", "heartbeat", "REAL"),
                                ("jobs", "pid_started", "REAL"), ("jobs", "host", "TEXT"),
                                ("jobs", "fields", "TEXT"), ("jobs", "params_key", "TEXT")):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS runs_status ON runs(status)")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_request ON jobs(kind, params_key)")
    active = db.execute("SELECT id, params FROM jobs WHERE status IN ('queued', 'running')").fetchall()
    db.executemany("UPDATE jobs SET params_key = ? WHERE id = ?",
                   [(params_key(json.loads(params) if params else {}), id_) for id_, params in active])


def _thresholds(db: sqlite3.Connection) -> None:
    """Version 4: a run carries its operating threshold on P(same). Runs stored before were scored at 0.5."""
    db.execute(f"ALTER TABLE runs ADD COLUMN threshold REAL DEFAULT {DEFAULT_THRESHOLD}")
    db.execute("UPDATE runs SET threshold = ? WHERE threshold IS NULL", [DEFAULT_THRESHOLD])


#: Applied in order: a store at ``user_version`` v runs ``MIGRATIONS[v:]``. Append, never edit.
MIGRATIONS = (_tables, _run_indexes, _owners, _thresholds)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreTooNew(RuntimeError):
    """The store was written by a newer simlab, with a schema this one does not know."""


class StoreError(OSError):
    """The store cannot be written (read-only file or folder, I/O error); the message is one line:
    which file, why, and what to do."""


class StoreFull(StoreError):
    """The disk holding the store is full."""


class StoreCorrupt(StoreError):
    """The store file is damaged (not an SQLite database, or a malformed one): no run in it can be read."""


#: What SQLite says of a file that is not a database, or a damaged one.
DAMAGED = ("file is not a database", "malformed", "file is encrypted", "not a database")


def free_bytes(folder: Path) -> int | None:
    """Free space on the disk holding ``folder`` (None when it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def store_error(path: Path, exc: BaseException) -> StoreError | None:
    """The :class:`StoreError` an SQLite or OS error on ``path`` means, or None for another kind of error.

    SQLite says "database or disk is full" when a write finds no room, but "disk I/O error" when the
    full disk is met while opening (its shared-memory file); with no free space left both are a full disk.
    """
    why, where = str(exc).strip() or type(exc).__name__, "set SIMLAB_CACHE to another folder"
    no_room = "disk I/O error" in why and (free_bytes(path.parent) or 0) < FULL_BELOW
    if "disk is full" in why or getattr(exc, "errno", None) == errno.ENOSPC or no_room:
        return StoreFull(f"{path}: the disk is full ({why}). Free space on {path.parent} or {where}, "
                         "then run again.")
    if any(s in why for s in DAMAGED):
        return StoreCorrupt(f"{path}: the store is damaged ({why}), so no run in it can be read. Move the file "
                            f"aside (rename it, e.g. to {path.name}.damaged) to start an empty store there, or "
                            f"{where}.")
    if any(s in why for s in ("readonly", "read-only", "unable to open", "disk I/O error", "Permission denied")):
        return StoreError(f"{path}: the store cannot be written ({why}). Make the file and its folder "
                          f"writable, or {where}.")
    return None


def params_key(params: dict) -> str:
    """The key of a job request: a hash of its params as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(params or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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
