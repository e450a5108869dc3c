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
