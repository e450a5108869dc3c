"""The report opened from disk in a real browser with the network blocked: it renders its heatmaps and images.

Runs are seeded with the CLI on the demo into a temporary cache; ``python -m simlab report`` writes the file;
headless Debian Chromium (Playwright) opens it as file:// with every request but the file itself aborted.
Skipped only when /usr/bin/chromium or Playwright is missing and $CI is not set; in CI it must run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from app_browser import chromium, serve_app, simlab_env
from conftest import seed_cache

from simlab.paths import REPO_ROOT
from simlab.report.document import DEFAULT_ERRORS, DEFAULT_TOP, confident_errors
from simlab.store import Store

SHOTS = REPO_ROOT / "tests" / "screenshots"


def simlab(*args, cache):
    res = subprocess.run([sys.executable, "-m", "simlab", *map(str, args)], env=simlab_env(cache),
                         capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def report_file(tmp_path_factory, demo_seed) -> tuple[Path, Store]:
    """A report on four demo runs made by the CLI, written to a folder whose name needs URL quoting."""
    cache = seed_cache(tmp_path_factory.mktemp("browser_report_cache"), demo_seed)
    simlab("run", "--dataset", "demo", "--merge", "dot", "l1", "--classifier", "cosine", "logreg", cache=cache)
    out = tmp_path_factory.mktemp("report") / "a report #1.html"
    # Compare's own selection (the best three runs, eight errors each): its Download button then finds every
    # similarity map already made, as a user's second report on the same runs does.
    simlab("report", "--dataset", "demo", "--top", str(DEFAULT_TOP), "--errors", str(DEFAULT_ERRORS), "--out", out,
           cache=cache)
    return out, Store(cache / "simlab.db")


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def opened(report_file, browser):
    """The report in Chromium, offline: every request other than the file itself is aborted (and recorded)."""
    out, store = report_file
    url = out.resolve().as_uri()
    requests: list[str] = []

    def only_the_file(route) -> None:
        requests.append(route.request.url)
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
    page = context.new_page()
    page.route("**/*", only_the_file)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    page.wait_for_selector("#heatmap-0 svg.main-svg")
    yield page, requests, errors, store
    context.close()


def test_nothing_but_the_file_is_requested(opened, report_file):
    page, requests, errors, _ = opened
    assert requests == [report_file[0].resolve().as_uri()]
    assert errors == []
    # what a page fetched, whatever the route saw: the file itself and inline data only
    fetched = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith("data:") for u in fetched), fetched


def test_the_heatmap_renders_its_runs(opened):
    page, _, _, store = opened
    runs = [r for r in store.list_runs() if r.done]
    heatmap = page.locator("#heatmap-0")
    assert heatmap.locator("svg.main-svg").count() >= 1
    texts = heatmap.locator("g.textpoint text").evaluate_all("ts => ts.map(t => t.textContent)")
    assert sorted(texts) == sorted(f"{r.metrics['accuracy']:.3f}" for r in runs)
    box = heatmap.locator("g.scatterlayer").first.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 30


def test_the_metric_buttons_switch_the_heatmap(opened):
    page, _, _, store = opened
    runs = [r for r in store.list_runs() if r.done]
    heatmap = page.locator("#heatmap-0")
    shown = "() => [...document.querySelectorAll('#heatmap-0 g.textpoint text')].map(t => t.textContent).sort()"
    for button, metric in (("ROC AUC", "auc"), ("Accuracy", "accuracy")):
        heatmap.locator("g.updatemenu-button", has_text=button).click()
        expected = sorted(f"{r.metrics[metric]:.3f}" for r in runs)
        page.wait_for_function(f"want => JSON.stringify(({shown})()) === JSON.stringify(want)", arg=expected)
        assert page.evaluate(shown) == expected


def test_every_image_is_decoded(opened):
    page, _, _, store = opened
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    images = page.locator("img")
    runs = sorted((r for r in store.list_runs() if r.done), key=lambda r: (r.metrics["accuracy"], r.created),
                  reverse=True)[:DEFAULT_TOP]  # the runs in detail: the best three
    errors = sum(len(confident_errors(store.predictions(r.id), r.threshold, DEFAULT_ERRORS)) for r in runs)
    assert errors >= 4
    assert images.count() == 4 * errors  # each error pair: both images and both maps
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    widths = images.evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.currentSrc.slice(0, 23)])")
    assert all(w > 0 and src == "data:image/jpeg;base64," for w, src in widths), widths


def test_screenshot(opened):
    page, _, _, _ = opened
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    assert (SHOTS / "report.png").stat().st_size > 50_000


# --------------------------------------------------------------------------- the Compare page's button


@pytest.fixture(scope="module")
def compare_url(report_file):
    """`streamlit run app.py` on the cache the report's runs are in; yields the Compare page's URL."""
    with serve_app(report_file[1].path.parent) as url:
        yield f"{url}/compare"


def test_compare_downloads_the_report_of_its_runs(compare_url, report_file, browser, tmp_path):
    _, store = report_file
    runs = [r for r in store.list_runs() if r.done]
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(compare_url)
    button = page.get_by_role("button", name="Download report", exact=True)
    button.wait_for()
    with page.expect_download(timeout=300_000) as download:  # the report is made on click: maps of 8 errors a run
        button.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "compare_report_button.png"))
    context.close()
    assert path.suffix == ".html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Plotly.newPlot(" in text
    best = sorted(runs, key=lambda r: (r.metrics["accuracy"], r.created), reverse=True)[:3]
    assert re.findall(r'<h3 id="run-(\w+)"', text) == [r.id for r in best]
    assert all(r.id in text for r in runs)
