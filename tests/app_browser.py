"""What the browser tests share: headless Debian Chromium driven by Playwright, and `streamlit run app.py`.

Importing this module from a test module skips that module when /usr/bin/chromium or Playwright is missing
and $CI is not set; in CI both must be there, so the import fails instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import streamlit_server
from simlab.paths import REPO_ROOT
from simlab.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SERVER_START = 90  # seconds
PAGE_TIMEOUT = 120_000  # ms: a page's first render may load TensorFlow

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is required in CI (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)

try:
    from playwright import sync_api
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)


def simlab_env(cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a simlab process working in ``cache``."""
    return dict(os.environ, SIMLAB_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)


@contextlib.contextmanager
def serve_app(cache: Path, dataset: str = "demo") -> Iterator[str]:
    """`streamlit run app.py` on a free port over ``cache``; yields its URL. On exit the server and any job
    worker it started are stopped (a worker is never left behind); the server's log is ``cache/streamlit.log``."""
    args = ["--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none"]
    try:
        with streamlit_server(args, simlab_env(cache, SIMLAB_DATASET=dataset), Path(cache) / "streamlit.log",
                              REPO_ROOT, SERVER_START) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        if (Path(cache) / "simlab.db").exists():
            for job in Store(Path(cache) / "simlab.db").list_jobs():
                if job.active and job.pid:
                    with contextlib.suppress(OSError):
                        os.killpg(job.pid, signal.SIGKILL)


@contextlib.contextmanager
def chromium() -> Iterator[sync_api.Browser]:
    """Headless Chromium, closed on exit."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def settle(page, quiet_ms: int = 1500, timeout: int = PAGE_TIMEOUT) -> None:
    """Wait until the app's script has finished running (and no spinner is left), then a little more."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " const state = app && app.getAttribute('data-test-script-state');"
        " return state === 'notRunning' && !document.querySelector('[data-testid=\"stSpinner\"]'); }",
        timeout=timeout)
    page.wait_for_timeout(quiet_ms)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def shot(page, path: Path, max_height: int = 8000) -> None:
    """A screenshot of the whole page at ``path``: the viewport grows to the content's height for the shot."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), max_height)})
    page.wait_for_timeout(800)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
