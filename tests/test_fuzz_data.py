"""Property-based fuzzing of the dataset loaders: random folder trees, names, file contents and CSVs.

Every case either loads (each listed file is in the dataset or among its problems, once) or raises
DatasetError with a message; no other exception ever escapes."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
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


_plain = st.text(alphabet="abcdefg_-", min_size=1, max_size=4)
_nested = st.recursive(_contents, lambda inner: st.dictionaries(_plain, inner, max_size=3), max_leaves=14)


def _write_nested(folder: Path, node: dict, depth: int, files: dict[Path, int]) -> None:
    """Write a tree; ``files`` gets each file with the number of folders between it and its group folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, child in node.items():
        if isinstance(child, dict):
            _write_nested(folder / name, child, depth + 1, files)
        else:
            (folder / name).write_bytes(child)
            files[folder / name] = depth


@_SETTINGS
@given(groups=st.dictionaries(_plain, st.dictionaries(_plain, _nested, max_size=3), min_size=1, max_size=3),
       max_depth=st.integers(0, 3))
def test_nested_folder_trees_list_each_file_once_down_to_the_depth_cap(groups, max_depth, tmp_cache):
    """Every file as deep as the cap is listed once; a deeper one is behind one "nested more than" problem."""
    from simlab.data.sources import list_folder

    root = Path(tempfile.mkdtemp(dir=tmp_cache))
    try:
        files: dict[Path, int] = {}
        for group, node in groups.items():
            _write_nested(root / group, node, 0, files)
        listing = list_folder(str(root), max_depth=max_depth)
        listed = [Path(p) for p, _, _ in listing.entries]
        assert len(listed) == len(set(listed))
        deep = [p for p in listing.problems if "nested more than" in p.reason]
        assert len(deep) == len(listing.problems)  # plain names, no links: nothing else can go wrong
        for path, depth in files.items():
            if depth <= max_depth:
                assert path in listed
            else:
                assert path not in listed
                assert sum(str(path).startswith(p.path + os.sep) for p in deep) == 1
        assert len(listed) == sum(d <= max_depth for d in files.values())
    finally:
        shutil.rmtree(root, ignore_errors=True)


@_SETTINGS
@given(rows=st.lists(st.tuples(st.sampled_from(["a.png", "b.png", "./a.png", "missing.png", "sub", ""]),
                               st.sampled_from(["g1", "g2", " ", ""])), max_size=30),
       max_rows=st.integers(1, 20))
def test_random_csvs_give_each_row_one_outcome_up_to_the_row_cap(rows, max_rows, tmp_cache):
    """Each row under the cap is an image or a problem, once; above the cap, one line and no listing."""
    import csv

    from simlab.data import DatasetError
    from simlab.data.sources import list_csv

    root = Path(tempfile.mkdtemp(dir=tmp_cache))
    try:
        (root / "a.png").write_bytes(_png(10))
        (root / "b.png").write_bytes(_png(99))
        (root / "sub").mkdir()
        with open(root / "list.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("path", "group"), *rows])
        n = sum(1 for p, g in rows if p.strip() or g.strip())
        if n > max_rows:
            with pytest.raises(DatasetError, match=f"lists more than {max_rows} images"):
                list_csv(str(root / "list.csv"), max_rows=max_rows)
            return
        listing = list_csv(str(root / "list.csv"), max_rows=max_rows)
        assert len(listing.entries) + len(listing.problems) == n
        assert len(listing.entries) <= 2
    finally:
        shutil.rmtree(root, ignore_errors=True)
