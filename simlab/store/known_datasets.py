"""The datasets a person opened in the app by hand: a link that names any other one is not trusted.

A dataset spec can arrive in a URL (``?dataset=folder:/photos``). Opening it reads and hashes every file
it names, so a link from anywhere (another web page, a chat) must not open a path nobody chose here. The
app remembers each dataset opened by hand (the Data page, the sidebar's picker, a confirmed link) in the
table ``known_datasets`` of the store's SQLite file, and opens a linked dataset at once only when it is
on that list. The table is created on first use and is not part of the runs' schema versions.

Specs are compared in the form the dataset loaders give them (``kind:/absolute/resolved/path``), so
``folder:~/photos/`` and ``folder:/home/me/photos`` are one dataset. Nothing here reads a dataset's files.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from simlab.paths import cache_dir
from simlab.store.schema import store_error

TABLE = """CREATE TABLE IF NOT EXISTS known_datasets (
    spec TEXT PRIMARY KEY, first_opened REAL, last_opened REAL)"""


def normalise_spec(spec: str) -> str:
    """``kind:path`` with the path absolute, ``~`` expanded and links resolved, as the loaders name a dataset;
    a spec without a path (``demo``) as it is, in lower case."""
    spec = str(spec or "").strip()
    kind, sep, arg = spec.partition(":")
    if not sep:
        return spec.lower() if spec.isalpha() else spec
    kind, arg = kind.strip().lower(), arg.strip()
    if not arg:
        return kind
    try:
        return f"{kind}:{Path(arg).expanduser().resolve()}"
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte: kept as typed, so never confused
        return f"{kind}:{arg}"


class KnownDatasets:
    """The list of datasets opened by hand, in the store's file (``cache/simlab.db`` by default)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_dir() / "simlab.db"

    @contextlib.contextmanager
    def _connect(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise store_error(self.path, exc) or exc from exc
        try:
            db.execute("PRAGMA busy_timeout=60000")
            db.execute(TABLE)
            yield db
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) or exc from exc
        finally:
            db.close()

    def add(self, spec: str) -> str:
        """Remember ``spec`` as opened by hand (now); returns the form it is kept under."""
        key, now = normalise_spec(spec), time.time()
        with self._connect() as db:
            db.execute("INSERT INTO known_datasets (spec, first_opened, last_opened) VALUES (?, ?, ?) "
                       "ON CONFLICT(spec) DO UPDATE SET last_opened = excluded.last_opened", [key, now, now])
        return key

    def __contains__(self, spec: object) -> bool:
        if not isinstance(spec, str):
            return False
        with self._connect() as db:
            return db.execute("SELECT 1 FROM known_datasets WHERE spec = ?",
                              [normalise_spec(spec)]).fetchone() is not None

    def specs(self) -> list[str]:
        """Every known spec, the most recently opened first."""
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT spec FROM known_datasets ORDER BY last_opened DESC")]

    def forget(self, spec: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM known_datasets WHERE spec = ?", [normalise_spec(spec)])
