"""Small real datasets for tests: generated JPEGs on disk, no mocks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
APP_TIMEOUT = 180  # seconds per AppTest run: the first one imports TensorFlow and friends


def open_page(page: str, **state) -> AppTest:
    """app.py (navigation, sidebar) switched to one page, optionally with session state set first; the page
    must run without an exception."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    """The values of AppTest elements (captions, infos, markdown...) as text."""
    return [str(e.value) for e in elements]


@contextlib.contextmanager
def simlab_cache_at(path: Path):
    """``SIMLAB_CACHE`` points at ``path`` for the duration: for module- and session-wide fixtures,
    which cannot take the function-scoped ``monkeypatch`` (conftest's ``tmp_cache`` does that)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMLAB_CACHE", str(path))
        yield path


def write_group_folder(root: Path, n_groups: int = 8, per_group: int = 3, size: int = 96, seed: int = 0) -> Path:
    """A ``folder:`` dataset: one subfolder per group, views of one random pattern per group."""
    rng = np.random.default_rng(seed)
    for g in range(n_groups):
        base = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        scene = np.asarray(Image.fromarray(base).resize((size * 2, size * 2), Image.BILINEAR))
        folder = root / f"g{g:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(per_group):
            x, y = rng.integers(0, size // 2, 2)
            view = scene[y:y + size + size // 2, x:x + size + size // 2]
            Image.fromarray(view).save(folder / f"v{v}.jpg", quality=90)
    return root


def sigint_default() -> None:
    """A child's ``preexec_fn``: it takes Ctrl-C as Python does (KeyboardInterrupt) even when the tests were
    started ignoring SIGINT, as a shell's background job is (``make test &``); an ignored signal is inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """Within: a SIGINT to this process raises KeyboardInterrupt, however the tests were started."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def pid_after(seconds: float) -> int:
    """Sleep, then say which process did (run in pool workers, to see how many are alive)."""
    time.sleep(seconds)
    return os.getpid()


def stranger_image(seed: int, size: int = 160) -> Image.Image:
    """A picture unlike any scene of :func:`write_group_folder`: smooth stripes of two random colours."""
    rng = np.random.default_rng(1000 + seed)
    x = np.linspace(0, rng.uniform(2, 12) * np.pi, size)
    stripes = (np.sin(x)[None, :] * np.cos(x * rng.uniform(0.2, 2))[:, None] + 1) / 2
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return Image.fromarray((stripes[..., None] * a + (1 - stripes[..., None]) * b).astype(np.uint8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(args: list[str], env: dict[str, str], log_path: Path, cwd: Path,
                     start_timeout: float = 90) -> Iterator[int]:
    """`python -m streamlit run app.py` with ``args`` on a free port, started in its own process group; yields the
    port once its health check answers. On exit it is stopped (SIGTERM, then SIGKILL after 20 s)."""
    port = free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                   *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(OSError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
