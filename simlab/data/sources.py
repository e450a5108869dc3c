"""Where a dataset's files come from: one lister per layout.

A lister turns a spec argument into a :class:`Listing` (candidate files with their groups, plus
files refused for their name or place). Validation of the files themselves happens later, in
:func:`simlab.data.load_dataset`, for every layout alike.

Work is bounded for any input: folders are walked with a stack, never by recursion, down to
:data:`MAX_DEPTH` levels below a group folder (deeper folders are listed as problems); a CSV is read
row by row, at most :data:`MAX_CSV_ROWS` rows and :data:`MAX_CSV_LINE` characters a line, and its
errors never quote its contents (``csv:/etc/passwd`` must not show a line of that file).
"""

from __future__ import annotations

import csv
import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """A file left out of a dataset, and why."""

    path: str
    reason: str


class DatasetError(ValueError):
    """A dataset that cannot be loaded at all; the message says what was looked for and what to do."""


@dataclass
class Listing:
    root: Path
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (abs path, group, sort name)
    problems: list[Problem] = field(default_factory=list)
    holidays_queries: bool = False  # each group's first image is its query
    looked_for: str = ""  # for the "empty dataset" message
    hint: str = ""


HOLIDAYS_NAME = re.compile(r"^(\d{4})(\d{2})\.jpe?g$", re.IGNORECASE)

#: Folder levels walked below a group folder; a folder deeper than this is listed as a problem.
MAX_DEPTH = 32
#: Rows (images) one CSV may list; above it the CSV is refused with one line saying so.
MAX_CSV_ROWS = 1_000_000
#: Characters in one line of a CSV (a path and a group); a longer line means it is not such a CSV.
MAX_CSV_LINE = 16_384


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def display_path(path: str | os.PathLike) -> str:
    """A path as text that can always be printed and stored: bytes that are not UTF-8 are shown escaped (\\xff)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problem(path: str | os.PathLike, reason: str) -> Problem:
    return Problem(display_path(path), reason)


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "unreadable (permission denied)"
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    return f"unreadable ({e.strerror or e})"


def _existing_dir(arg: str, kind: str, example: str) -> Path:
    if not arg or not arg.strip():
        raise DatasetError(f"No folder given for '{kind}'. Write it after the colon, e.g. {example}.")
    d = Path(arg.strip()).expanduser()
    if not d.exists():
        raise DatasetError(f"Folder not found: {d}. Check the path (it is read on this machine), e.g. {example}.")
    if not d.is_dir():
        raise DatasetError(f"Not a folder: {d}. '{kind}' expects a folder, e.g. {example}.")
    return d.resolve()


def _scan(d: Path) -> list[os.DirEntry]:
    try:
        return sorted((e for e in os.scandir(d) if not _hidden(e.name)), key=lambda e: e.name)
    except PermissionError:
        raise DatasetError(f"Cannot read folder {d} (permission denied).") from None


def _entry_kind(e: os.DirEntry, problems: list[Problem]) -> str:
    """'dir', 'file' or '' (a problem was recorded: a symlink loop, a dangling link, an unreadable entry)."""
    try:
        if e.is_dir():
            return "dir"
        if e.is_file():
            return "file"
        if e.is_symlink():
            problems.append(_problem(e.path, "broken symbolic link"))
            return ""
        problems.append(_problem(e.path, "not a regular file"))
    except OSError as err:
        problems.append(_problem(e.path, _os_reason(err)))
    return ""


class _Files:
    """Adds files to a listing once each: a file reached twice (by links) is read under its first name."""

    def __init__(self, out: Listing):
        self.out = out
        self.seen: dict[str, str] = {}  # real path -> listed path

    def add(self, path: str, group: str, name: str) -> None:
        if not _utf8_name(path):
            self.out.problems.append(_problem(path, "file name is not valid UTF-8: rename the file"))
            return
        try:
            real = os.path.realpath(path, strict=True)
        except OSError as e:
            self.out.problems.append(_problem(path, _os_reason(e)))
            return
        if real in self.seen:
            self.out.problems.append(_problem(path, f"same file as {display_path(self.seen[real])}: read once"))
            return
        self.seen[real] = path
        self.out.entries.append((path, group, name))


def list_holidays(arg: str) -> Listing:
    """INRIA Holidays: ``NNNNNN.jpg`` in DIR or DIR/jpg; group = first 4 digits; first image is the query."""
    d = _existing_dir(arg, "holidays", "holidays:/data/holidays")
    img_dir = d
    entries = _scan(d)
    has_match = any(HOLIDAYS_NAME.match(e.name) for e in entries)
    if not has_match and (d / "jpg").is_dir():
        img_dir = d / "jpg"
        entries = _scan(img_dir)
    out = Listing(root=img_dir, holidays_queries=True,
                  looked_for=f"files named NNNNNN.jpg in {d} or {d / 'jpg'}",
                  hint="Point 'holidays:' at the folder holding 100000.jpg, 100001.jpg ... "
                       "or use 'folder:' for one subfolder per group.")
    files = _Files(out)
    for e in entries:
        kind = _entry_kind(e, out.problems)
        if kind != "file":
            continue
        m = HOLIDAYS_NAME.match(e.name)
        path = str(img_dir / e.name)
        if m:
            files.add(path, m.group(1), e.name)
        else:
            out.problems.append(_problem(path, "name does not match NNNNNN.jpg"))
    return out


def _group_folder_problem(root: Path, gdir: Path, groups: dict[str, str]) -> str:
    """Why a group folder must be left out ('' when it is fine): it links back to the dataset or to another group."""
    real = os.path.realpath(gdir)
    if real == str(root) or str(root).startswith(real.rstrip(os.sep) + os.sep):
        return "group folder links back to the dataset folder: left out"
    if real in groups:
        return f"group folder is the same folder as group {groups[real]!r}: left out"
    groups[real] = gdir.name
    return ""


def _walk_group(gdir: Path, group: str, files: _Files, out: Listing, max_depth: int) -> None:
    """Every file under one group folder, walked with a stack (no recursion, so no depth can overflow it)
    down to ``max_depth`` levels; a deeper folder, an unreadable one and a link to a folder are problems."""
    prefix = len(str(gdir)) + 1
    stack = [(str(gdir), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted((x for x in it if not _hidden(x.name)), key=lambda x: x.name)
        except OSError as err:
            out.problems.append(_problem(folder, f"folder {_os_reason(err)}"))
            continue
        below = []
        for x in entries:
            try:
                is_dir = x.is_dir()
            except OSError:
                is_dir = False  # a link loop or an unreadable entry: files.add says which
            if not is_dir:
                files.add(x.path, group, x.path[prefix:])
            elif x.is_symlink():
                out.problems.append(_problem(x.path, "link to a folder inside a group: not followed"))
            elif depth >= max_depth:
                out.problems.append(_problem(x.path, f"folder nested more than {max_depth} levels below its "
                                                     "group folder: left out"))
            else:
                below.append((x.path, depth + 1))
        stack.extend(reversed(below))


def list_folder(arg: str, max_depth: int | None = None) -> Listing:
    """One subfolder per group (searched to ``max_depth`` levels, default :data:`MAX_DEPTH`); any format
    Pillow reads.

    Problems are listed, never raised: unreadable folders, symbolic link loops, names that are not
    UTF-8, a group folder that links back to the dataset or to another group, a file reached twice,
    a folder nested too deep."""
    d = _existing_dir(arg, "folder", "folder:/data/scenes")
    out = Listing(root=d, looked_for=f"images inside the subfolders of {d} (one subfolder per group)",
                  hint="Put each group's images in its own subfolder, e.g. scenes/eiffel/a.jpg, scenes/eiffel/b.jpg.")
    files, group_dirs = _Files(out), {}
    for e in _scan(d):
        kind = _entry_kind(e, out.problems)
        if kind == "file":
            out.problems.append(_problem(d / e.name, "not in a group subfolder"))
        if kind != "dir":
            continue
        gdir = d / e.name
        if not _utf8_name(e.name):
            out.problems.append(_problem(gdir, "folder name is not valid UTF-8: rename the folder"))
            continue
        if reason := _group_folder_problem(d, gdir, group_dirs):
            out.problems.append(_problem(gdir, reason))
            continue
        _walk_group(gdir, e.name, files, out, MAX_DEPTH if max_depth is None else max_depth)
    return out


def _csv_lines(fh, f: Path, limit: int):
    """The lines of an open text file, each read with a bound (a file without newlines is not read whole)."""
    n = 0
    while line := fh.readline(limit + 1):
        n += 1
        if len(line) > limit and not line.endswith("\n"):
            raise DatasetError(f"Line {n} of {f} is longer than {limit:,} characters: not a CSV file with "
                               "columns path,group.")
        yield line


def list_csv(arg: str, max_rows: int | None = None) -> Listing:
    """A CSV with columns ``path,group``; relative paths resolve against the CSV's folder.

    Read as a stream, at most ``max_rows`` rows (default :data:`MAX_CSV_ROWS`): a first pass only counts
    the rows, so a longer CSV is refused in one line as soon as its row ``max_rows + 1`` is read, before a
    single file is looked at. Messages never quote the file's contents."""
    max_rows = MAX_CSV_ROWS if max_rows is None else max_rows
    example = "csv:/data/pairs/list.csv"
    if not arg or not arg.strip():
        raise DatasetError(f"No CSV file given. Write it after the colon, e.g. {example}.")
    f = Path(arg.strip()).expanduser()
    if not f.exists():
        raise DatasetError(f"CSV file not found: {f}. Check the path, e.g. {example}.")
    if not f.is_file():
        raise DatasetError(f"Not a file: {f}. 'csv:' expects a CSV file with columns path,group.")
    f = f.resolve()
    out = Listing(root=f.parent, looked_for=f"rows of {f}",
                  hint="Each row needs a path (absolute, or relative to the CSV's folder) and a group.")
    reader = None
    try:
        with open(f, newline="", encoding="utf-8-sig") as fh:
            for listing in (None, out):  # count the rows (cheap: no file is looked at), then list them
                fh.seek(0)
                reader = csv.reader(_csv_lines(fh, f, MAX_CSV_LINE))
                _read_csv_rows(reader, f, listing, max_rows)
    except UnicodeDecodeError:
        where = f" (line {reader.line_num + 1})" if reader is not None and reader.line_num else ""
        raise DatasetError(f"{f} is not a UTF-8 text CSV file{where}.") from None
    except csv.Error as e:  # csv's messages name the fault, never the text
        raise DatasetError(f"{f} is not a readable CSV file (line {reader.line_num}: {e}).") from None
    except OSError as e:
        raise DatasetError(f"Cannot read {f} ({_os_reason(e)}).") from None
    return out


def _read_csv_rows(reader, f: Path, out: Listing | None, max_rows: int) -> None:
    """Check the header and the number of rows; with a listing, add each row to it (an image or a problem)."""
    header = None
    rows, seen = 0, set()
    for row in reader:
        if not any(c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            if "path" not in header or "group" not in header:
                missing = " and ".join(repr(c) for c in ("path", "group") if c not in header)
                raise DatasetError(
                    f"CSV file {f} needs columns 'path' and 'group' in its header row; its first row "
                    f"({len(row)} column(s)) has no {missing}. Add a first line 'path,group'.")
            ip, ig = header.index("path"), header.index("group")
            continue
        rows += 1
        if rows > max_rows:
            raise DatasetError(f"CSV file {f} lists more than {max_rows:,} images, the most one CSV may list: "
                               "split it into several datasets.")
        if out is not None:
            _csv_row(row, ip, ig, reader.line_num, f, out, seen)
    if header is None:
        raise DatasetError(f"CSV file {f} is empty. It needs a header row 'path,group' and one row per image.")


def _csv_row(row: list[str], ip: int, ig: int, lineno: int, f: Path, out: Listing, seen: set[str]) -> None:
    raw = row[ip].strip() if ip < len(row) else ""
    group = row[ig].strip() if ig < len(row) else ""
    if not raw:
        out.problems.append(Problem(f"{f}:{lineno}", "empty path"))
        return
    p = Path(raw).expanduser()
    if not p.is_absolute():
        p = f.parent / p
    p = Path(os.path.normpath(p))
    path = str(p)
    if not group:
        out.problems.append(Problem(path, f"empty group (line {lineno})"))
        return
    if path in seen:
        out.problems.append(Problem(path, f"listed twice (line {lineno})"))
        return
    seen.add(path)
    try:
        if not p.exists():
            out.problems.append(Problem(path, "file not found"))
            return
        if not p.is_file():
            out.problems.append(Problem(path, "not a file"))
            return
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        out.problems.append(Problem(display_path(path), f"unusable path ({getattr(e, 'strerror', None) or e})"))
        return
    out.entries.append((path, group, path))


def list_demo(arg: str = "") -> Listing:
    """The built-in demo: generated once into the cache, then read as a Holidays folder (its manifest.csv,
    where each view was cut from, is not an image)."""
    from simlab.data.demo import MANIFEST, ensure_demo

    out = list_holidays(str(ensure_demo()))
    out.problems = [p for p in out.problems if Path(p.path).name != MANIFEST]
    return out
