"""Faults a careful user or an attacker can cause, each reproduced with real files and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, make_folder
from PIL import Image

from simlab.data import load_dataset


def _reasons(ds) -> dict[str, str]:
    return {p.path: p.reason for p in ds.problems}


def test_a_file_name_that_is_not_utf8_is_listed_and_the_others_go_on(tmp_path, tmp_cache):
    make_folder(tmp_path / "set", [2, 2])
    bad = os.path.join(os.fsencode(tmp_path / "set" / "g0"), b"caf\xff.png")
    Image.new("RGB", (32, 32), "red").save(bad, "PNG")
    ds = load_dataset(f"folder:{tmp_path / 'set'}")
    assert ds.n_images == 4
    reasons = _reasons(ds)
    shown = next(p for p in reasons if p.endswith("caf\\xff.png"))
    assert "not valid UTF-8" in reasons[shown]


def test_a_symlink_loop_is_a_problem_not_a_traceback(tmp_path, tmp_cache):
    make_folder(tmp_path / "set", [2, 2])
    os.symlink("loop", tmp_path / "set" / "g0" / "loop")
    os.symlink("top", tmp_path / "set" / "top")
    ds = load_dataset(f"folder:{tmp_path / 'set'}")
    assert ds.n_images == 4
    reasons = _reasons(ds)
    assert reasons[str(tmp_path / "set" / "top")] == "symbolic link loop"
    assert reasons[str(tmp_path / "set" / "g0" / "loop")] == "symbolic link loop"


def test_a_group_folder_linking_back_to_the_root_is_reported_and_nothing_is_read_twice(tmp_path, tmp_cache):
    make_folder(tmp_path / "set", [3, 2, 2])
    os.symlink(tmp_path / "set", tmp_path / "set" / "zz_again")
    os.symlink(tmp_path / "set" / "g1", tmp_path / "set" / "zz_g1")
    ds = load_dataset(f"folder:{tmp_path / 'set'}")
    assert ds.n_images == 7 and ds.n_groups == 3
    reasons = _reasons(ds)
    assert "links back to the dataset folder" in reasons[str(tmp_path / "set" / "zz_again")]
    assert "same folder as group 'g1'" in reasons[str(tmp_path / "set" / "zz_g1")]


def test_a_file_linked_into_two_groups_is_read_once(tmp_path, tmp_cache):
    make_folder(tmp_path / "set", [2, 2])
    os.symlink(tmp_path / "set" / "g0" / "v0.png", tmp_path / "set" / "g1" / "copy.png")
    ds = load_dataset(f"folder:{tmp_path / 'set'}")
    assert ds.n_images == 4
    assert "same file as" in _reasons(ds)[str(tmp_path / "set" / "g1" / "copy.png")]


LIST_AS_NOBODY = textwrap.dedent("""
    import json, os, sys
    from simlab.data.sources import list_folder  # imported first: the interpreter's files are root's
    os.setgid(65534); os.setuid(65534)
    out = list_folder(sys.argv[1])
    print(json.dumps({"entries": len(out.entries), "problems": [[p.path, p.reason] for p in out.problems]}))
""")


def test_an_unreadable_group_folder_is_listed(tmp_path):
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"simlab-faults-{os.getpid()}"
    make_folder(base / "set", [2, 2])
    os.chmod(base, 0o755)
    locked = base / "set" / "g1"
    os.chmod(locked, 0o000)
    try:
        if os.geteuid() == 0:  # root reads anything: look at it as an unprivileged user
            res = subprocess.run([sys.executable, "-c", LIST_AS_NOBODY, str(base / "set")], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr
            import json

            listing = json.loads(res.stdout)
        else:
            from simlab.data.sources import list_folder

            out = list_folder(str(base / "set"))
            listing = {"entries": len(out.entries), "problems": [[p.path, p.reason] for p in out.problems]}
        assert listing["entries"] == 2
        assert [str(locked), "folder unreadable (permission denied)"] in listing["problems"]
    finally:
        os.chmod(locked, 0o755)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_a_big_non_image_is_hashed_in_chunks_and_refused_from_its_header(tmp_path, tmp_cache):
    """A 300 MB file of zeros must not be read whole: the loader's peak memory stays far below its size."""
    make_folder(tmp_path / "set", [2, 2])
    big = tmp_path / "set" / "g0" / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(300 * 2**20)
        fh.seek(0)
        fh.write(b"not an image at all")
    code = textwrap.dedent(f"""
        import resource
        from simlab.data import load_dataset
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ds = load_dataset({f'folder:{tmp_path / "set"}'!r})
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(ds.n_images, grew // 1024, [p.reason for p in ds.problems])
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SIMLAB_CACHE": str(tmp_cache)})
    assert res.returncode == 0, res.stderr
    n, grew_mb, reasons = res.stdout.split(" ", 2)
    assert n == "4" and "not an image" in reasons
    assert int(grew_mb) < 100, f"loading grew by {grew_mb} MB"


def test_a_zero_stride_tensor_in_a_tiny_checkpoint_is_refused(tmp_path):
    """A 200-byte legacy checkpoint whose tensor has stride 0 and a huge size must not become a huge array."""
    from collections import OrderedDict

    import numpy as np
    from test_efficientnet_lite0 import _FakeStorage, _FakeTensor, write_legacy

    from simlab.torch_legacy import LegacyFormatError, load_legacy_state_dict

    s = _FakeStorage("1", "FloatStorage", np.arange(1, dtype=np.float32))
    path = tmp_path / "stride0.pth"
    write_legacy(path, OrderedDict(bomb=_FakeTensor(s, 0, (30_000, 30_000), (0, 0))), [s])
    assert path.stat().st_size < 2048
    with pytest.raises(LegacyFormatError, match="larger than its storage"):
        load_legacy_state_dict(path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_listens_on_loopback_only_by_default(tmp_cache):
    """The real server, started as `make run` starts it (the repo's .streamlit/config.toml), binds 127.0.0.1."""
    import time

    import psutil

    port = _free_port()
    streamlit = str(Path(sys.executable).parent / "streamlit")
    proc = subprocess.Popen([streamlit, "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "SIMLAB_CACHE": str(tmp_cache)})
    try:
        listening = []
        deadline = time.time() + 120
        while not listening and time.time() < deadline:
            time.sleep(0.5)
            listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening, "the server never listened"
        assert {a.ip for a in listening} == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_exposed_without_a_password_refuses_and_with_one_asks_for_it(monkeypatch, tmp_cache):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("SIMLAB_PASSWORD", raising=False)
    st.config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        assert not at.exception
        assert "no password is set" in at.error[0].value and not at.text_input

        monkeypatch.setenv("SIMLAB_PASSWORD", "s3cret")
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
        assert at.text_input[0].label == "Password"
        at.text_input[0].input("wrong")
        at.button[0].click().run()
        assert "Wrong password." in [e.value for e in at.error]
        at.text_input[0].input("s3cret")
        at.button[0].click().run()
        assert not at.text_input or at.text_input[0].label != "Password"
        assert not at.error
    finally:
        st.config.set_option("server.address", "127.0.0.1")


def test_a_tiny_checkpoint_declaring_terabytes_is_a_format_error(tmp_path):
    """A 300-byte legacy checkpoint whose storage declares 4 TB is refused before anything is allocated."""
    import pickle
    import struct
    from collections import OrderedDict

    from test_efficientnet_lite0 import _FakeStorage, _FakeTensor, _LegacyPickler, _write_header

    from simlab.torch_legacy import LegacyFormatError, load_legacy_state_dict

    class Declared:  # stands in for the data: only its size is pickled
        size = 10**12

    s = _FakeStorage("1", "FloatStorage", Declared())
    path = tmp_path / "huge.pth"
    with open(path, "wb") as f:
        _write_header(f)
        _LegacyPickler(f, protocol=2).dump(OrderedDict(w=_FakeTensor(s, 0, (10**12,), (1,))))
        pickle.dump([s.key], f, protocol=2)
        f.write(struct.pack("<q", 10**12) + bytes(16))
    assert path.stat().st_size < 400
    with pytest.raises(LegacyFormatError, match="declares 1000000000000 elements"):
        load_legacy_state_dict(path)


def test_a_huge_non_image_is_refused_from_its_header_before_any_hashing(tmp_path, tmp_cache):
    """A 4 GB file that is not an image (sparse: it costs no disk) is refused without being read through:
    the bytes the loading process reads (``rchar`` in /proc/self/io) stay far below the file's size."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs /proc/self/io to count the bytes read")
    make_folder(tmp_path / "set", [2, 2])
    big = tmp_path / "set" / "g0" / "huge.jpg"
    with open(big, "wb") as fh:
        fh.write(b"not an image, only its name says so")
        fh.truncate(4 * 2**30)
    code = textwrap.dedent(f"""
        from simlab.data import load_dataset
        def read_bytes():
            return int(next(l for l in open("/proc/self/io") if l.startswith("rchar")).split()[1])
        before = read_bytes()
        ds = load_dataset({f'folder:{tmp_path / "set"}'!r})
        print(ds.n_images, (read_bytes() - before) // 2**20, [p.reason for p in ds.problems])
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SIMLAB_CACHE": str(tmp_cache)})
    assert res.returncode == 0, res.stderr
    n, read_mb, reasons = res.stdout.split(" ", 2)
    assert n == "4" and "not an image" in reasons
    assert int(read_mb) < 64, f"loading read {read_mb} MB"


def _chain(top: Path, levels: int | None) -> None:
    """Make ``levels`` nested folders "d" under ``top`` or (None) remove them, one open folder at a time:
    no path gets long, and nothing recurses (shutil.rmtree would, once per level)."""
    fds = [os.open(top, os.O_RDONLY)]
    try:
        while levels is None or len(fds) <= levels:
            if levels is not None:
                os.mkdir("d", dir_fd=fds[-1])
            try:
                fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
            except FileNotFoundError:
                break
        if levels is None:
            for parent in fds[-2::-1]:
                os.rmdir("d", dir_fd=parent)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_folder_nested_1200_levels_deep_is_one_problem_and_the_rest_loads(tmp_path, tmp_cache):
    make_folder(tmp_path / "set", [2, 2])
    _chain(tmp_path / "set" / "g1", 1200)
    try:
        ds = load_dataset(f"folder:{tmp_path / 'set'}")
    finally:
        _chain(tmp_path / "set" / "g1", None)
    assert ds.n_images == 4 and ds.n_groups == 2
    reasons = list(_reasons(ds).values())
    assert len(reasons) == 1 and "nested more than 32 levels" in reasons[0]


def test_a_csv_error_never_quotes_the_file(tmp_path, tmp_cache):
    """``csv:/etc/passwd`` (or any file with a secret first line) says what is wrong without a line of it."""
    from simlab.data import DatasetError

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:s3cret-first-line:/root:/bin/bash\nhunter2,more,cells\n")
    targets = [secret] + [Path(p) for p in ("/etc/passwd",) if os.access(p, os.R_OK)]
    for target in targets:
        with pytest.raises(DatasetError) as err:
            load_dataset(f"csv:{target}")
        message = str(err.value)
        assert "needs columns 'path' and 'group'" in message
        first = target.read_text(errors="replace").splitlines()[0]
        for cell in {c for c in first.replace(":", ",").split(",") if len(c) > 3} - {str(target)}:
            assert cell not in message.replace(str(target), ""), f"{cell!r} echoed in {message!r}"


def test_a_csv_above_the_row_cap_is_refused_as_soon_as_the_cap_is_passed(tmp_path, tmp_cache):
    """Read as a stream: the rows past the cap, and a bad byte 1 MB further on, are never read."""
    from simlab.data import DatasetError
    from simlab.data.sources import list_csv

    f = tmp_path / "list.csv"
    rows = "".join(f"img{i}.png,g{i % 7}\n" for i in range(200))
    f.write_bytes(b"path,group\n" + rows.encode() + b"\n" * 2**20 + b"\xff\xfe not UTF-8\n")  # blank lines
    with pytest.raises(DatasetError, match="lists more than 50 images, the most one CSV may list"):
        list_csv(str(f), max_rows=50)
    (tmp_path / "ok.csv").write_text("path,group\n" + rows)
    listing = list_csv(str(tmp_path / "ok.csv"), max_rows=200)
    assert len(listing.entries) + len(listing.problems) == 200  # each row one outcome
    with pytest.raises(DatasetError, match="not a UTF-8 text CSV file"):  # read through: the bad byte is seen
        list_csv(str(f), max_rows=10**6)


def test_a_csv_line_without_end_is_refused_without_reading_it_whole(tmp_path, tmp_cache):
    from simlab.data import DatasetError

    f = tmp_path / "one-line.csv"
    f.write_bytes(b"path,group\n" + b"a" * (8 * 2**20))
    with pytest.raises(DatasetError, match="Line 2 of .* is longer than 16,384 characters"):
        load_dataset(f"csv:{f}")


# --------------------------------------------------------------------------- a store that degrades row by row

STORE_PAGES = ["pages/home.py", "pages/runs.py", "pages/compare.py", "pages/inspect.py", "pages/diff.py",
               "pages/search.py", "pages/train.py", "pages/finetune.py"]


@pytest.fixture(scope="module")
def grid_cache(tmp_path_factory) -> tuple[str, Path]:
    """A dataset spec and a cache whose store holds four finished grid runs (random weights: seconds)."""
    from helpers import simlab_cache_at
    from simlab.experiment import GridConfig, run_grid
    from simlab.store import Store
    folder = tmp_path_factory.mktemp("scenes")
    make_folder(folder, [3] * 8)
    spec = f"folder:{folder}"
    cache = tmp_path_factory.mktemp("grid_cache")
    with simlab_cache_at(cache):
        config = GridConfig(dataset=spec, merges=["dot", "l1"], classifiers=["cosine", "logreg"], weights="random")
        assert len(list(run_grid(config, Store()))) == 4
    return spec, cache


def _store_at(cache: Path, monkeypatch, spec: str, tmp_path: Path) -> Path:
    import shutil
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    monkeypatch.setenv("SIMLAB_CACHE", str(copy))
    monkeypatch.setenv("SIMLAB_DATASET", spec)
    return copy / "simlab.db"


@pytest.fixture
def poisoned(grid_cache, monkeypatch, tmp_path) -> dict:
    """The grid's store with a run whose metrics are not JSON, one whose metrics are a JSON list, and one
    with a NULL ``prob``, a text ``prob`` and a text ``label`` among its predictions."""
    import sqlite3

    from simlab.store import Store
    db = _store_at(grid_cache[1], monkeypatch, grid_cache[0], tmp_path)
    bad_json, json_list, bad_preds, fine = [r.id for r in Store(db).list_runs()]
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET metrics = '{\"accuracy\": 0.9,' WHERE id = ?", [bad_json])
        con.execute("UPDATE runs SET metrics = '[0.9, 0.8]' WHERE id = ?", [json_list])
        rows = [r for (r,) in con.execute("SELECT rowid FROM predictions WHERE run_id = ? ORDER BY rowid LIMIT 3",
                                          [bad_preds])]
        con.execute("UPDATE predictions SET prob = NULL WHERE rowid = ?", [rows[0]])
        con.execute("UPDATE predictions SET prob = 'high' WHERE rowid = ?", [rows[1]])
        con.execute("UPDATE predictions SET label = 'same' WHERE rowid = ?", [rows[2]])
    con.close()
    return {"db": db, "bad_json": bad_json, "json_list": json_list, "bad_preds": bad_preds, "fine": fine}


def _open(page: str, query: dict | None = None):
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page(page)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at


def _plain(markdown: str) -> str:
    """Markdown as read: its backslash escapes removed."""
    import re
    return re.sub(r"\\(.)", r"\1", markdown)


def _said(at) -> str:
    return _plain("\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success",
                                                      "title", "subheader") for e in getattr(at, kind)))


@pytest.mark.parametrize("page", STORE_PAGES)
def test_every_page_works_with_corrupt_runs_and_names_them(poisoned, page):
    at = _open(page)
    said = _said(at)
    assert f"corrupt run {poisoned['bad_json']}: metrics is not valid JSON" in said
    assert f"corrupt run {poisoned['json_list']}: metrics is a JSON list, not a JSON object" in said
    assert "Traceback" not in said


def test_inspect_leaves_out_unreadable_predictions_and_names_them(poisoned):
    at = _open("pages/inspect.py", {"run": poisoned["bad_preds"]})
    assert at.selectbox(key="inspect_select").value == poisoned["bad_preds"]
    notes = [_plain(w.value) for w in at.warning if f"corrupt run {poisoned['bad_preds']}" in w.value]
    assert len(notes) == 1 and "3 of" in notes[0] and "prob is NULL" in notes[0]
    assert "label is text 'same', not 0 or 1" in notes[0]
    assert at.metric  # the run's pairs are drawn, the unreadable three left out


def test_a_corrupt_run_is_deleted_from_the_runs_page(poisoned):
    from simlab.store import Store
    at = _open("pages/runs.py")
    at.button(key=f"delete_corrupt_{poisoned['bad_json']}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [c.run_id for c in Store(poisoned["db"]).corrupt_runs()] == [poisoned["json_list"]]
    assert f"corrupt run {poisoned['bad_json']}" not in _said(at)
    assert len(Store(poisoned["db"]).list_runs()) == 2  # the readable runs are all there


@pytest.mark.parametrize("damage, line", [
    ("newer", "has schema version 99; this simlab knows up to"),
    ("damaged", "the store is damaged (file is not a database)"),
])
def test_a_store_this_simlab_cannot_open_is_one_line_on_every_page(grid_cache, monkeypatch, tmp_path, damage, line):
    import sqlite3
    db = _store_at(grid_cache[1], monkeypatch, grid_cache[0], tmp_path)
    if damage == "newer":
        with sqlite3.connect(db) as con:
            con.execute("PRAGMA user_version = 99")
        con.close()
    else:
        for extra in db.parent.glob("simlab.db-*"):
            extra.unlink()
        db.write_bytes(b"not an SQLite file at all " * 400)
    for page in STORE_PAGES:
        at = _open(page)
        errors = [_plain(e.value) for e in at.error]
        assert len(errors) == 1 and line in errors[0] and "\n" not in errors[0], (page, errors)


def test_a_tiny_checkpoint_whose_pickle_declares_terabytes_is_a_format_error(tmp_path):
    """The same lie inside the pickle itself (a 4 TB byte string after the header): refused, not a MemoryError."""
    import struct

    from test_efficientnet_lite0 import _write_header

    from simlab.torch_legacy import LegacyFormatError, load_legacy_state_dict

    path = tmp_path / "bytes8.pth"
    with open(path, "wb") as f:
        _write_header(f)
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", 4 * 2**40) + b"abc")  # protocol 4 BINBYTES8
    assert path.stat().st_size < 300
    with pytest.raises(LegacyFormatError, match="declares 4398046511104 bytes"):
        load_legacy_state_dict(path)
