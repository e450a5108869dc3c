"""Train's results table in a real browser: selecting a row opens that run on Inspect at once.

The table is drawn inside a fragment (it refreshes while the grid runs), so a selection reruns only the fragment;
the page must still switch to Inspect then, not at some later unrelated click. A finished grid job of four runs
(the weight-free phash backbone on the demo) is seeded into a temporary cache, then `streamlit run app.py` and
headless Chromium (Playwright).
"""

from __future__ import annotations

import re
import time

import pytest
from app_browser import chromium, no_exception, serve_app, settle
from conftest import seed_cache
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from helpers import simlab_cache_at
from simlab.experiment import GridConfig, run_grid
from simlab.store import Store

TIMEOUT = 120_000  # ms
ROW = 35  # px: the height of a table row (and of its header)


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_seed):
    cache = seed_cache(tmp_path_factory.mktemp("browser_train"), demo_seed)
    params = {"dataset": "demo", "backbones": ["phash"], "merges": ["dot", "l1"], "classifiers": ["cosine", "logreg"]}
    with simlab_cache_at(cache):
        store = Store(cache / "simlab.db")
        job_id = store.add_job("grid", params)
        runs = [s["run_id"] for s in run_grid(GridConfig(**params), store=store, job_id=job_id)]
        store.update_job(job_id, status="done", started=time.time() - 5, finished=time.time())
    with serve_app(cache) as url:
        yield url, runs


def test_selecting_a_result_row_opens_the_run_on_inspect(server):
    url, runs = server
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1200}).new_page()
        page.set_default_timeout(TIMEOUT)
        page.goto(f"{url}/train")
        page.wait_for_selector("text=Select a row to inspect its pairs")
        settle(page)
        table = page.locator('[data-testid="stDataFrame"]').first
        table.scroll_into_view_if_needed()
        box = table.bounding_box()
        page.mouse.click(box["x"] + 14, box["y"] + ROW + ROW // 2)  # the first row's selection box
        page.wait_for_url(re.compile(r".*/inspect\?run=r[0-9a-f]+"), timeout=30_000)
        run_id = re.search(r"[?&]run=(r[0-9a-f]+)", page.url).group(1)
        assert run_id in runs
        try:
            page.get_by_text("Showing pairs").wait_for()
        except PlaywrightTimeout:
            main = page.locator('[data-testid="stMain"]').inner_text()
            pytest.fail(f"Inspect did not draw the run's pairs; its main area shows {main[:400]!r}")
        no_exception(page)
