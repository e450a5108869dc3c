"""Images open from where they are shown, in a real browser (streamlit run + headless Chromium, Playwright):
the embedding map's hover panel and click, and a Data page thumbnail opening large.

The vectors are seeded with the CLI (random weights: seconds) into a cache of the test's own.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
from app_browser import chromium, no_exception, serve_app, settle, simlab_env, sync_api

from helpers import write_group_folder
from simlab.paths import REPO_ROOT

PAGE_TIMEOUT = 180_000  # ms: the Vectorize page's first render loads the backbone registry


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A folder dataset with its (random-weight) vectors, and `streamlit run app.py` on it."""
    root = tmp_path_factory.mktemp("images")
    cache, data = root / "cache", write_group_folder(root / "scenes", n_groups=6, per_group=3, size=64, seed=4)
    cache.mkdir()
    subprocess.run([sys.executable, "-m", "simlab", "vectorize", "--dataset", f"folder:{data}", "--backbone",
                    "efficientnet_lite0", "--weights", "random", "--out", str(root / "vectors.npz")],
                   cwd=REPO_ROOT, env=simlab_env(cache), check=True, capture_output=True, timeout=600)
    with serve_app(cache, dataset=f"folder:{data}") as url:
        yield url


@pytest.fixture(scope="module")
def page(app):
    with chromium() as browser:
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_default_timeout(PAGE_TIMEOUT)
        yield pg


def test_the_map_shows_the_image_under_the_pointer_and_the_clicked_one_beside_it(app, page):
    page.goto(f"{app}/vectorize")
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for()
    settle(page, 1000, PAGE_TIMEOUT)
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
    settle(page, 1000, PAGE_TIMEOUT)
    no_exception(page)
    beside = page.locator('[data-testid="stImage"] img')
    assert beside.count() >= 1 and beside.first.bounding_box()["width"] > 150  # the clicked image, large


def test_a_data_page_thumbnail_opens_the_image_large(app, page):
    page.goto(f"{app}/data")
    tiles = page.locator("[data-simlab-open]")
    tiles.first.wait_for()
    settle(page, 1000, PAGE_TIMEOUT)
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
    settle(page, 1000, PAGE_TIMEOUT)
    no_exception(page)
    assert "(5 of 18)" in dialog.inner_text()
    assert dialog.locator("img").first.bounding_box()["width"] > 2 * small
    dialog.get_by_role("button", name="Next").click()
    page.wait_for_function("() => document.querySelector('[role=\"dialog\"]').innerText.includes('(6 of 18)')",
                           timeout=60_000)
