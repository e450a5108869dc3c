"""The Runs page in a real browser: the selection follows the run id, not the row position.

Runs are seeded with the CLI on the demo (the weight-free phash backbone: seconds) into a temporary cache;
then `streamlit run app.py` and headless Chromium (Playwright). "Run again" inserts a new run at the top and
the same run stays selected; "Yes, delete" deletes the run the confirmation names, and nothing is selected
after it. Two selected runs open the Two-runs page. Screenshots go to $SIMLAB_SHOTS (default
tests/screenshots/runs/).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_browser import chromium, no_exception, serve_app, settle, simlab_env
from app_browser import shot as page_shot
from conftest import seed_cache

from pages._ui.formatting import classifier_name
from simlab.paths import REPO_ROOT
from simlab.store import Store

SHOTS = Path(os.environ.get("SIMLAB_SHOTS") or REPO_ROOT / "tests" / "screenshots" / "runs")
TIMEOUT = 120_000  # ms
JOB_TIMEOUT = 300  # s: a one-cell grid on cached phash vectors, in a worker process
ROW = 35  # px: the height of a table row (and of its header)


def seed_runs(cache: Path) -> None:
    env = simlab_env(cache)
    out = subprocess.run([sys.executable, "-m", "simlab", "run", "--dataset", "demo", "--backbone", "phash",
                          "--merge", "dot", "l1", "--classifier", "cosine", "logreg"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_seed):
    cache = seed_cache(tmp_path_factory.mktemp("browser_runs"), demo_seed)
    seed_runs(cache)
    with serve_app(cache) as url:
        yield url, cache


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(server, browser):
    """A new browser session on the Runs page for each test: no selection carries over from another test."""
    url, _ = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    pg.goto(f"{url}/runs")
    pg.wait_for_selector('h1:has-text("Runs")')
    settle(pg)
    yield pg
    context.close()


def shot(page, name: str) -> None:
    page_shot(page, SHOTS / f"{name}.png", max_height=6000)


def runs_table(page):
    return page.locator('.st-key-runs_list [data-testid="stDataFrame"]').first


def wait_until(page, done, message: str, timeout: float = 60, every_ms: int = 500) -> None:
    """Poll ``done()`` until it holds (else fail with ``message``): the page redraws after a click or a change
    of the store, later on a busy machine."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, message
        page.wait_for_timeout(every_ms)


def click_row(page, index: int) -> None:
    """Tick the selection box of the table's row ``index`` (0 = the top row), then wait until the page shows
    the changed selection (its rerun can take a while on a busy machine)."""
    before = selected_ids(page)
    table = runs_table(page)
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    page.mouse.click(box["x"] + 14, box["y"] + ROW + ROW // 2 + ROW * index)
    wait_until(page, lambda: selected_ids(page) != before, f"ticking row {index} changed no selection",
               TIMEOUT / 1000, every_ms=250)
    settle(page, 800)


def selected_ids(page) -> list[str]:
    """The runs the page shows as selected: the ids in its details' titles ("Run ... · r0123456789 · done")."""
    titles = page.locator('[data-testid="stExpander"] summary [data-testid="stMarkdownContainer"]').all_inner_texts()
    return [m.group(1) for t in titles if (m := re.fullmatch(r"Run .* · (\w+) · \w+", t.strip()))]


def shown_count(page) -> int:
    text = page.locator("text=/\\d+ of \\d+ runs/").first.inner_text()
    return int(re.search(r"(\d+) of", text).group(1))


def test_the_selection_stays_on_the_run_after_run_again_and_is_cleared_by_its_delete(page, server):
    _, cache = server
    store = Store(cache / "simlab.db")
    ids_before = [r.id for r in store.list_runs()]  # newest first, as the table lists them
    assert shown_count(page) == len(ids_before) == 4
    click_row(page, 1)
    assert selected_ids(page) == [ids_before[1]]
    picked = ids_before[1]

    page.get_by_role("button", name="Run again").click()
    wait_until(page, lambda: shown_count(page) >= 5 and not page.locator('[data-testid="stProgress"]').count(),
               "the re-run did not finish in time", JOB_TIMEOUT, every_ms=1000)
    settle(page)
    no_exception(page)
    newest = store.list_runs()[0]
    assert newest.id not in ids_before and newest.done  # the new run sits at the top, picked one row down
    assert selected_ids(page) == [picked]
    assert page.locator("text=1 run(s) selected").count() == 1
    shot(page, "runs_after_run_again")

    page.get_by_role("button", name="Delete").click()
    settle(page, 800)
    warning = page.locator('[data-testid="stAlertContentWarning"]').first.inner_text()
    run = store.get(picked)
    assert picked in warning and "made " in warning, warning
    assert f"{run.backbone} · {run.merge} · {classifier_name(run.classifier)} · {run.id}" in warning, warning
    shot(page, "runs_delete_confirmation")
    page.get_by_role("button", name="Yes, delete").click()
    settle(page)
    assert store.get(picked) is None
    wait_until(page, lambda: shown_count(page) == 4, "the table did not drop the deleted run")
    no_exception(page)
    assert selected_ids(page) == []  # nothing selected: Delete is not ready on another run
    assert page.get_by_role("button", name="Delete").count() == 0
    assert page.locator("text=run(s) selected").count() == 0
    shot(page, "runs_after_delete")


def test_two_selected_runs_open_the_two_runs_page(page, server):
    _, cache = server
    store = Store(cache / "simlab.db")
    ids = [r.id for r in store.list_runs()]
    click_row(page, 0)
    click_row(page, 2)
    assert sorted(selected_ids(page)) == sorted([ids[0], ids[2]])
    shot(page, "runs_two_selected")
    page.get_by_role("link", name="Compare pair by pair").click()
    page.wait_for_selector('h1:has-text("Two runs")')
    settle(page)
    no_exception(page)
    assert f"a={ids[0]}" in page.url and f"b={ids[2]}" in page.url
    labels = page.locator('[data-testid="stMetricLabel"]').all_inner_texts()
    assert [label.strip() for label in labels] == ["Fixed by B", "Broken by B", "Both wrong", "Both right"]
    shot(page, "two_runs")
