"""Label corrections: a person's verdict on a test pair's label, kept beside the runs, never in the dataset.

One row per pair of images, keyed by the two images' content digests (in sorted order, so A-B and B-A are one
pair, and a renamed or moved file keeps its verdict): the label the person says is right (1 same scene, 0
different scenes), whether they said the stored label is wrong or right, the paths and label seen at the time.
The table lives in the run store's SQLite file, created here if missing (``CREATE TABLE IF NOT EXISTS``); it is
not part of the store's versioned schema, and the runs and their predictions are never changed: re-scoring reads
both and puts the corrected numbers beside the original ones (:mod:`simlab.label_errors`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from simlab.paths import atomic_path

TABLE = "label_corrections"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    digest_a TEXT NOT NULL,
    digest_b TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    verdict TEXT NOT NULL CHECK (verdict IN ('wrong', 'right')),
    stored_label INTEGER NOT NULL CHECK (stored_label IN (0, 1)),
    path_a TEXT NOT NULL,
    path_b TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (digest_a, digest_b)
)
"""
CSV_COLUMNS = ("path_a", "path_b", "stored_label", "label", "verdict", "digest_a", "digest_b", "created")


def pair_key(digest_a: str, digest_b: str) -> tuple[str, str]:
    """The two digests in sorted order: a pair is the same whichever image is on the left."""
    return (digest_a, digest_b) if digest_a <= digest_b else (digest_b, digest_a)


@dataclass(frozen=True)
class Correction:
    digest_a: str
    digest_b: str
    label: int  # what the person says is true: 1 same scene, 0 different scenes
    verdict: str  # "wrong": the stored label was wrong; "right": it was confirmed
    stored_label: int
    path_a: str
    path_b: str
    created: float


class Corrections:
    """The corrections table of the run store at ``db`` (a path to its SQLite file)."""

    def __init__(self, db: str | os.PathLike):
        self.path = Path(db)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute(SCHEMA)
            with db:
                yield db
        finally:
            db.close()

    def mark(self, path_a: str, path_b: str, digest_a: str, digest_b: str, stored_label: int, wrong: bool,
             ) -> Correction:
        """Record that the stored label of the pair is wrong (the true one is the other) or right."""
        stored = int(stored_label)
        if stored not in (0, 1):
            raise ValueError(f"a label is 0 or 1, not {stored_label!r}")
        (da, db_), swapped = pair_key(digest_a, digest_b), digest_a > digest_b
        pa, pb = (path_b, path_a) if swapped else (path_a, path_b)
        c = Correction(da, db_, 1 - stored if wrong else stored, "wrong" if wrong else "right", stored,
                       str(pa), str(pb), time.time())
        with self._connect() as db:
            db.execute(f"INSERT OR REPLACE INTO {TABLE} (digest_a, digest_b, label, verdict, stored_label, path_a, "
                       "path_b, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (c.digest_a, c.digest_b, c.label, c.verdict, c.stored_label, c.path_a, c.path_b, c.created))
        return c

    def forget(self, digest_a: str, digest_b: str) -> None:
        """Drop the verdict on a pair (the stored label counts again)."""
        with self._connect() as db:
            db.execute(f"DELETE FROM {TABLE} WHERE digest_a = ? AND digest_b = ?", pair_key(digest_a, digest_b))

    def all(self) -> list[Correction]:
        """Every correction, oldest first."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(Correction.__dataclass_fields__)} FROM {TABLE} "
                              "ORDER BY created, rowid").fetchall()
        return [Correction(*row) for row in rows]

    def labels(self) -> dict[tuple[str, str], int]:
        """(sorted digests) -> the label a person says is true."""
        return {(c.digest_a, c.digest_b): c.label for c in self.all()}

    def get(self, digest_a: str, digest_b: str) -> Correction | None:
        key = pair_key(digest_a, digest_b)
        return next((c for c in self.all() if (c.digest_a, c.digest_b) == key), None)

    def export_csv(self, path: str | os.PathLike) -> int:
        """Write every correction as CSV (:data:`CSV_COLUMNS`), atomically; returns how many."""
        rows = self.all()
        with atomic_path(Path(path), suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            write_csv(fh, rows)
        return len(rows)


def write_csv(fh, rows: Iterable[Correction]) -> None:
    writer = csv.writer(fh)
    writer.writerow(CSV_COLUMNS)
    for c in rows:
        writer.writerow([getattr(c, name) for name in CSV_COLUMNS])
