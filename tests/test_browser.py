"""The app in a real browser: streamlit run + headless Debian Chromium driven by Playwright.

Runs the demo experiment from the Home page, then checks Compare (a heatmap) and Inspect (pair
thumbnails), and saves a screenshot of every page under tests/screenshots/ (git-ignored).
Skipped only when /usr/bin/chromium is missing and $CI is not set; in CI it must run.
"""

from __future__ import annotations

import re
import time

import pytest
from app_browser import PAGE_TIMEOUT, chromium, no_exception, serve_app, settle
from app_browser import shot as page_shot

from simlab.paths import REPO_ROOT

SHOTS = REPO_ROOT / "tests" / "screenshots"
DEMO_TIMEOUT = 20 * 60  # generating, vectorising and training the demo on a 2-core machine


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """`streamlit run app.py` on a free port with an empty cache; the demo dataset is the current one."""
    with serve_app(tmp_path_factory.mktemp("browser_cache")) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(PAGE_TIMEOUT)
        # A deep link as the server's very first visit still goes through app.py's navigation
        # (not Streamlit's legacy pages/ folder mode, which would list the files app, compare, ... as pages).
        pg.goto(f"{app_url}/runs")
        pg.wait_for_selector('h1:has-text("Runs")', timeout=PAGE_TIMEOUT)
        nav = [line.strip() for line in pg.locator('[data-testid="stSidebarNav"]').inner_text().splitlines()]
        assert "Home" in nav and "Vectorize" in nav, nav
        assert not {"app", "compare", "common", "_ui"} & set(nav), nav  # file names: legacy pages/ mode
        pg.goto(app_url)
        yield pg
        context.close()


def main(page):
    return page.locator('[data-testid="stMain"]')


def go_to(page, title: str, heading: str | None = None) -> None:
    # the link whose label ends with the title ("Runs", not "Two runs"; the label follows its icon's name)
    page.locator('[data-testid="stSidebarNav"] a', has_text=re.compile(rf"{re.escape(title)}$")).first.click()
    page.wait_for_selector(f'h1:has-text("{heading or title}")', timeout=PAGE_TIMEOUT)
    settle(page)


def shot(page, name: str) -> None:
    """A screenshot of the whole page: the viewport grows to the content's height for the shot."""
    page_shot(page, SHOTS / f"{name}.png")


def test_home_data_and_empty_pages(page):
    page.wait_for_selector("text=Run the demo experiment")
    settle(page)
    no_exception(page)
    shot(page, "home_empty")
    go_to(page, "Data")  # generates the demo images on first use
    page.wait_for_selector('[data-testid="stMetric"]', timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    assert main(page).locator("img").count() > 0
    shot(page, "data")
    for title in ("Vectorize", "Runs"):
        go_to(page, title)
        no_exception(page)
        shot(page, f"{title.lower()}_empty")


def test_the_demo_experiment_runs_to_the_end(page):
    go_to(page, "Home", heading="simlab")
    page.get_by_role("button", name="Run the demo experiment").click()
    page.wait_for_selector('[data-testid="stProgress"]', timeout=60_000)
    page.mouse.move(5, 5)  # no tooltip in the screenshot
    page.wait_for_timeout(3000)
    shot(page, "home_running")
    finished = page.locator("text=Demo experiment finished")
    failed = page.locator("text=Demo experiment failed")
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not finished.count():
        assert not failed.count(), main(page).inner_text()
        assert time.monotonic() < deadline, "the demo did not finish in time"
        page.wait_for_timeout(2000)
    settle(page)
    no_exception(page)
    assert page.locator("text=Best run").count() == 1
    shot(page, "home_done")


def test_compare_shows_a_heatmap(page):
    go_to(page, "Compare")
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot, .js-plotly-plot', timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    assert main(page).locator(".js-plotly-plot").count() >= 1
    shot(page, "compare")


def test_inspect_shows_pair_thumbnails(page):
    go_to(page, "Inspect")
    main(page).locator("img").first.wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    assert main(page).locator("img").count() >= 2
    shot(page, "inspect")


def lasso(page, plot, box=(0.02, 0.02, 0.98, 0.98)) -> None:
    """Draw a lasso (a rectangle path) over a plotly chart's drag layer."""
    drag = plot.locator(".nsewdrag").first
    drag.scroll_into_view_if_needed()
    bb = drag.bounding_box()
    x0, y0, x1, y1 = (bb["x"] + bb["width"] * box[0], bb["y"] + bb["height"] * box[1],
                      bb["x"] + bb["width"] * box[2], bb["y"] + bb["height"] * box[3])
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)):
        page.mouse.move(x, y, steps=15)
    page.mouse.up()


def test_vectorize_map_shows_the_selected_images(page):
    go_to(page, "Vectorize")
    plot = main(page).locator(".js-plotly-plot").first  # the embedding map
    plot.wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    shot(page, "vectorize_done")
    lasso(page, plot)
    page.wait_for_selector("text=selected image", timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    assert main(page).locator("figure img").count() >= 10  # the selected images' tiles
    shot(page, "vectorize_selection")


def test_runs_with_results(page):
    go_to(page, "Runs")
    no_exception(page)
    tables = page.locator('[data-testid="stDataFrame"]')
    assert tables.count() >= 2
    runs = tables.nth(1).bounding_box()
    page.mouse.click(runs["x"] + 14, runs["y"] + 52)  # the first run's selection box
    page.get_by_role("button", name="Run again").wait_for(timeout=PAGE_TIMEOUT)
    settle(page)
    no_exception(page)
    assert page.locator("text=1 run(s) selected").count() == 1
    shot(page, "runs_done")
