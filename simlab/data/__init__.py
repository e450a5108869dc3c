"""Datasets of images grouped by scene: loading, validation and content fingerprints.

>>> ds = load_dataset("demo")                  # or "holidays:/x", "folder:/x", "csv:/x/list.csv"
>>> ds.n_images, ds.n_groups, ds.problems[:3]

Every file is validated (fully decoded once); unusable files are skipped and listed in
``ds.problems`` rather than raised. Content digests and verdicts are memoised per file, keyed by
(path, size, mtime), in ``cache/datasets/files.sqlite``, so reloading is fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from simlab.data import images
from simlab.data.sources import (
    HOLIDAYS_NAME,
    DatasetError,
    Listing,
    Problem,
    display_path,
    list_csv,
    list_demo,
    list_folder,
    list_holidays,
)
from simlab.paths import cache_dir

log = logging.getLogger(__name__)

__all__ = [
    "DATASET_KINDS",
    "Dataset",
    "DatasetError",
    "Problem",
    "canonical_spec",
    "load_dataset",
    "parse_spec",
    "file_digest",
]

_CHECK_VERSION = "1"
_DIGEST_SIZE = 16  # bytes -> 32 hex characters


@dataclass
class Dataset:
    spec: str
    root: Path
    paths: list[str]
    groups: list[str]
    problems: list[Problem]
    digests: list[str]
    fingerprint: str
    queries: list[int] | None = None

    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def n_groups(self) -> int:
        return len(set(self.groups))

    def group_sizes(self) -> dict[str, int]:
        """Images per group, in dataset order."""
        sizes: dict[str, int] = {}
        for g in self.groups:
            sizes[g] = sizes.get(g, 0) + 1
        return sizes

    def query_indices(self) -> list[int]:
        """Holidays queries, or else the first image of each group."""
        if self.queries is not None:
            return list(self.queries)
        seen: set[str] = set()
        out = []
        for i, g in enumerate(self.groups):
            if g not in seen:
                seen.add(g)
                out.append(i)
        return out

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"path": self.paths, "group": self.groups,
                             "name": [os.path.basename(p) for p in self.paths]})

    def __repr__(self) -> str:
        return (f"Dataset(spec={self.spec!r}, n_images={self.n_images}, n_groups={self.n_groups}, "
                f"problems={len(self.problems)}, fingerprint={self.fingerprint[:12]!r})")


# --------------------------------------------------------------------------- file memo


class _Memo:
    """(path, size, mtime_ns) -> (digest, verdict) in SQLite; silently disabled if unusable."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        try:
            db = cache_dir("datasets") / "files.sqlite"
            self.conn = sqlite3.connect(db, timeout=30, check_same_thread=False)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "digest TEXT, verdict TEXT, checker TEXT)")
        except (sqlite3.Error, OSError):
            log.warning("file-check memo disabled", exc_info=True)
            self.close()

    def get(self, paths: list[str]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        if self.conn is None:
            return out
        try:
            for i in range(0, len(paths), 500):
                chunk = paths[i:i + 500]
                marks = ",".join("?" * len(chunk))
                q = f"SELECT path, size, mtime_ns, digest, verdict, checker FROM files WHERE path IN ({marks})"
                for row in self.conn.execute(q, chunk):
                    out[row[0]] = row[1:]
        except sqlite3.Error:
            log.warning("could not read memoised file checks", exc_info=True)
            return {}
        return out

    def put(self, rows: list[tuple]) -> None:
        if self.conn is None or not rows:
            return
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error:
            log.warning("could not memoise file checks", exc_info=True)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
        self.conn = None


def _checker() -> str:
    return f"{_CHECK_VERSION}:{images.MAX_PIXELS}"


def _inspect(path: str) -> tuple[str, str]:
    """(digest, verdict) for one file; verdict '' means a usable image (a refused file has no digest).

    The image is checked before it is hashed, so a file that is not an image is refused from its header
    alone, never read through (4 GB of anything else costs one header read); the digest is hashed in
    chunks, so a huge image is never read whole into memory."""
    try:
        images.check_image(path)
    except images.ImageError as e:
        return "", str(e)
    except Exception as e:  # a decoder bug must cost one file, never the dataset
        log.warning("checking %s failed", display_path(path), exc_info=True)
        return "", f"unreadable image ({type(e).__name__}: {str(e)[:100]})"
    try:
        return file_digest(path), ""
    except FileNotFoundError:
        return "", "file not found"
    except PermissionError:
        return "", "unreadable (permission denied)"
    except OSError as e:
        return "", f"unreadable ({e.strerror or e})"


def file_digest(path: str | os.PathLike) -> str:
    """Content digest of one file (blake2b, 32 hex characters), as in ``Dataset.digests``; read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=_DIGEST_SIZE)).hexdigest()


_memo_lock = threading.Lock()
_TRANSIENT = ("file not found", "unreadable")  # verdicts not remembered: checked again on the next load


def _validate(listing: Listing) -> tuple[list[tuple[str, str, str, str]], list[Problem]]:
    """Returns good entries (path, group, sort name, digest) and problems for the bad ones."""
    problems = list(listing.problems)
    stats: dict[str, tuple[int, int]] = {}
    candidates = []
    for path, group, name in listing.entries:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(Problem(path, "file not found"))
            continue
        except OSError as e:
            problems.append(Problem(path, f"unreadable ({e.strerror or e})"))
            continue
        if st.st_size == 0:
            problems.append(Problem(path, "zero-byte file"))
            continue
        stats[path] = (st.st_size, st.st_mtime_ns)
        candidates.append((path, group, name))

    checker = _checker()
    with _memo_lock:
        memo = _Memo()
        try:
            known = memo.get([c[0] for c in candidates])
            verdicts: dict[str, tuple[str, str]] = {}
            todo = []
            for path, _, _ in candidates:
                row = known.get(path)
                size, mtime = stats[path]
                if row and row[0] == size and row[1] == mtime and row[4] == checker and (row[2] or row[3]):
                    verdicts[path] = (row[2], row[3])
                else:
                    todo.append(path)
            if todo:
                workers = min(8, (os.cpu_count() or 2) + 2, len(todo))
                with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                    results = list(pool.map(_inspect, todo))
                new_rows = []
                for path, (digest, verdict) in zip(todo, results):
                    verdicts[path] = (digest, verdict)
                    if digest or not verdict.startswith(_TRANSIENT):
                        size, mtime = stats[path]
                        new_rows.append((path, size, mtime, digest, verdict, checker))
                memo.put(new_rows)
        finally:
            memo.close()

    good = []
    for path, group, name in candidates:
        digest, verdict = verdicts[path]
        if verdict:
            problems.append(Problem(path, verdict))
        else:
            good.append((path, group, name, digest))
    return good, problems


def _fingerprint(digests: list[str], groups: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for d, g in sorted(zip(digests, groups)):
        h.update(f"{d}\t{g}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _build(spec: str, listing: Listing) -> Dataset:
    good, problems = _validate(listing)
    if not good:
        n = len(problems)
        detail = ""
        if n:
            reasons: dict[str, int] = {}
            for p in problems:
                reasons[p.reason] = reasons.get(p.reason, 0) + 1
            top = ", ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
            detail = f" {n} file(s) were skipped: {top}."
        raise DatasetError(f"No usable images found for {spec!r}: looked for {listing.looked_for}.{detail} "
                           f"{listing.hint}".strip())
    good.sort(key=lambda e: (e[1], e[2]))
    paths = [e[0] for e in good]
    groups = [e[1] for e in good]
    digests = [e[3] for e in good]
    queries = None
    if listing.holidays_queries:
        queries, prev = [], None
        for i, g in enumerate(groups):
            if g != prev:
                queries.append(i)
                prev = g
    problems.sort(key=lambda p: p.path)
    return Dataset(spec=spec, root=listing.root, paths=paths, groups=groups, problems=problems,
                   digests=digests, fingerprint=_fingerprint(digests, groups), queries=queries)


# --------------------------------------------------------------------------- specs


class DatasetKind(NamedTuple):
    loader: Callable[[str], Dataset]
    description: str
    example: str


def _loader(kind: str, lister: Callable[[str], Listing]) -> Callable[[str], Dataset]:
    def load(arg: str = "") -> Dataset:
        arg = (arg or "").strip()
        listing = lister(arg)
        return _build(_canonical(kind, arg), listing)

    load.__name__ = f"load_{kind}"
    return load


DATASET_KINDS: dict[str, DatasetKind] = {
    "demo": DatasetKind(_loader("demo", list_demo),
                        "Built-in demo: views of scenes cut from photos shipped with scikit-image and "
                        "scikit-learn (generated once, offline, in Holidays layout).", "demo"),
    "holidays": DatasetKind(_loader("holidays", list_holidays),
                            "INRIA Holidays layout: NNNNNN.jpg in DIR or DIR/jpg; group = first 4 digits; "
                            "each group's first image is its query.", "holidays:/data/holidays"),
    "folder": DatasetKind(_loader("folder", list_folder),
                          "One subfolder per group, any image format Pillow reads.", "folder:/data/scenes"),
    "csv": DatasetKind(_loader("csv", list_csv),
                       "CSV file with columns path,group; relative paths resolve against the CSV's folder.",
                       "csv:/data/scenes/list.csv"),
}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"kind:arg"`` -> ``(kind, arg)``. ``"demo"`` -> ``("demo", "")``. A bare existing path is
    read as a CSV file, a Holidays folder (if it holds NNNNNN.jpg files) or a group folder."""
    if spec is None or not str(spec).strip():
        return "demo", ""
    spec = str(spec).strip()
    kind, sep, arg = spec.partition(":")
    kind_l = kind.strip().lower()
    if sep and kind_l in DATASET_KINDS:
        return kind_l, arg.strip()
    if not sep and kind_l in DATASET_KINDS:
        return kind_l, ""
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_file() and p.suffix.lower() == ".csv":
            return "csv", str(p)
        if p.is_dir():
            for d in (p, p / "jpg"):
                if d.is_dir() and any(HOLIDAYS_NAME.match(n) for n in os.listdir(d)):
                    return "holidays", str(p)
            return "folder", str(p)
    kinds = ", ".join(f"'{k}'" for k in DATASET_KINDS)
    examples = "; ".join(v.example for v in DATASET_KINDS.values())
    raise DatasetError(f"Unknown dataset spec {spec!r}: it should start with one of {kinds} followed by ':' "
                       f"and a path (e.g. {examples}), or be an existing folder or .csv file.")


def _canonical(kind: str, arg: str) -> str:
    return "demo" if kind == "demo" else f"{kind}:{Path(arg.strip()).expanduser().resolve()}"


def canonical_spec(spec: str) -> str:
    """The name :func:`load_dataset` gives the dataset of ``spec``, found without reading a file:
    ``folder:X/``, ``folder:./X`` and ``X`` (an existing folder) all become ``folder:/abs/X``, so one
    dataset makes one request. A spec that names nothing usable is returned as given (loading says why)."""
    try:
        kind, arg = parse_spec(spec)
    except DatasetError:
        return spec
    if kind != "demo" and not arg.strip():
        return spec
    try:
        return _canonical(kind, arg)
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte: loading says why
        return spec


def load_dataset(spec: str = "demo") -> Dataset:
    """Load, validate and fingerprint a dataset. Raises :class:`DatasetError` when nothing usable is found."""
    kind, arg = parse_spec(spec)
    return DATASET_KINDS[kind].loader(arg)
