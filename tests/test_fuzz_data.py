"""Property-based fuzzing of the dataset loaders: random folder trees, names, file contents and CSVs.

Every case either loads (each listed file is in the dataset or among its problems, once) or raises
DatasetError with a message; no other exception ever escapes."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from simlab.data import DatasetError, load_dataset


def _png(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 255 - colour, colour // 2)).save(buf, "PNG")
    return buf.getvalue()


_names = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
            max_size=12),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b),
).filter(lambda n: n not in (".", "..", b".", b".."))

_contents = st.one_of(
    st.integers(0, 255).map(_png),  # a real image
    st.binary(max_size=64),  # junk, empty
    st.integers(0, 255).map(lambda c: _png(c)[: 20 + c % 30]),  # a truncated image
)

_trees = st.dictionaries(_names, st.dictionaries(_names, _contents, max_size=4), max_size=4)
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fs(name) -> bytes:
    return name if isinstance(name, bytes) else os.fsencode(name)


def _write(root: Path, tree: dict) -> int:
    files = 0
    for group, members in tree.items():
        gdir = os.path.join(os.fsencode(root), _fs(group))
        try:
            os.makedirs(gdir, exist_ok=True)
        except OSError:  # a name the file system refuses (too long, ...): not part of the case
            continue
        for name, data in members.items():
            try:
                with open(os.path.join(gdir, _fs(name)), "wb") as fh:
                    fh.write(data)
                files += 1
            except OSError:
                pass
    return files


def _check(spec: str) -> None:
    try:
        ds = load_dataset(spec)
    except DatasetError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    assert len(ds.paths) == len(ds.groups) == len(ds.digests)
    assert len(set(ds.paths)) == len(ds.paths)
    for p in ds.problems:
        p.path.encode("utf-8")  # always printable and storable
        assert p.reason


@_SETTINGS
@given(tree=_trees)
def test_random_folder_trees_load_or_say_why(tree, tmp_cache):
    root = Path(tempfile.mkdtemp(dir=tmp_cache))
    try:
        _write(root, tree)
        _check(f"folder:{root}")
        _check(f"holidays:{root}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@_SETTINGS
@given(header=st.lists(_cells, max_size=4), rows=st.lists(st.lists(_cells, max_size=4), max_size=6),
       raw=st.binary(max_size=40), use_raw=st.booleans())
def test_random_csvs_load_or_say_why(header, rows, raw, use_raw, tmp_cache):
    root = Path(tempfile.mkdtemp(dir=tmp_cache))
    try:
        (root / "a.png").write_bytes(_png(10))
        f = root / "list.csv"
        if use_raw:
            f.write_bytes(raw)
        else:
            lines = [",".join(header or ["path", "group"])] + [",".join(r) for r in rows] + ["a.png,g1"]
            f.write_text("\n".join(lines), encoding="utf-8")
        _check(f"csv:{f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
