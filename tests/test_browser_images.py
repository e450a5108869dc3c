"""Images open from where they are shown, in a real browser (streamlit run + headless Chromium, Playwright):
the embedding map's hover panel and click, and a Data page thumbnail opening large.

The vectors are seeded with the CLI (random weights: seconds) into a cache of the test's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import write_group_folder
from simlab.paths import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SERVER_START = 90  # seconds
PAGE_TIMEOUT = 180_000  # ms: the Vectorize page's first render loads the backbone registry

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A folder dataset with its (random-weight) vectors, and `streamlit run app.py` on it."""
    root = tmp_path_factory.mktemp("images")
    cache, data = root / "cache", write_group_folder(root / "scenes", n_groups=6, per_group=3, size=64, seed=4)
    env = dict(os.environ, SIMLAB_CACHE=str(cache), SIMLAB_DATASET=f"folder:{data}", PYTHONPATH=str(REPO_ROOT),
               TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", "simlab", "vectorize", "--dataset", f"folder:{data}", "--backbone",
                    "efficientnet_lite0", "--weights", "random", "--out", str(root / "vectors.npz")],
                   cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)
    port = free_port()
    with open(root / "streamlit.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START
        try:
            while True:
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start:\n{(root / 'streamlit.log').read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            with contextlib.suppress(OSError):
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_default_timeout(PAGE_TIMEOUT)
        yield pg
        browser.close()


def settle(page) -> None:
    """Until the app's script run has ended and no spinner is left."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " const state = app && app.getAttribute('data-test-script-state');"
        " return state === 'notRunning' && !document.querySelector('[data-testid=\"stSpinner\"]'); }",
        timeout=PAGE_TIMEOUT)
    page.wait_for_timeout(1000)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


def test_the_map_shows_the_image_under_the_pointer_and_the_clicked_one_beside_it(app, page):
    page.goto(f"{app}/vectorize")
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for()
    settle(page)
    no_exception(page)
    point = plot.locator("g.trace.scatter path.point").nth(4)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    panel = page.locator("#simlab-map-hover")
    panel.wait_for(state="visible", timeout=30_000)
    assert panel.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert " · group g00" in panel.inner_text()
    page.mouse.click(x, y)
    page.get_by_text("The other 2 image(s) of its group:").wait_for(timeout=60_000)
    settle(page)
    no_exception(page)
    beside = page.locator('[data-testid="stImage"] img')
    assert beside.count() >= 1 and beside.first.bounding_box()["width"] > 150  # the clicked image, large


def test_a_data_page_thumbnail_opens_the_image_large(app, page):
    page.goto(f"{app}/data")
    tiles = page.locator("[data-simlab-open]")
    tiles.first.wait_for()
    settle(page)
    assert tiles.count() == 18
    page.locator(".st-key-tile_clicks_data").wait_for(state="attached")  # the click listener's element
    small = tiles.nth(4).bounding_box()["width"]
    dialog = page.locator('[role="dialog"]')
    for _ in range(12):  # the listener's script may still be loading right after the page is drawn
        tiles.nth(4).click()
        with contextlib.suppress(sync_api.TimeoutError):
            dialog.wait_for(timeout=5_000)
            break
    dialog.wait_for(timeout=60_000)
    settle(page)
    no_exception(page)
    assert "(5 of 18)" in dialog.inner_text()
    assert dialog.locator("img").first.bounding_box()["width"] > 2 * small
    dialog.get_by_role("button", name="Next").click()
    page.wait_for_function("() => document.querySelector('[role=\"dialog\"]').innerText.includes('(6 of 18)')",
                           timeout=60_000)
