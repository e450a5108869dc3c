"""Inspect's pair viewer explains a pair, in a real browser: the overlays (images / similarity map / matches) on
both large images, their legend in words, and the chosen overlay kept while stepping with the arrow keys.

A folder dataset of generated images and one CLI run on it (random weights: seconds) in a temporary cache.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.parse

import numpy as np
import pytest
from app_browser import PAGE_TIMEOUT, chromium, no_exception, serve_app, settle, shot, simlab_env, sync_api
from PIL import Image

from simlab.paths import REPO_ROOT
from simlab.store import Store
from simlab.store.known_datasets import KnownDatasets


def make_folder(root) -> str:
    """Five groups of three 160 x 120 images; returns the dataset spec."""
    rng = np.random.default_rng(3)
    for g in range(5):
        base = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        folder = root / f"place{g}"
        folder.mkdir(parents=True)
        for k in range(3):
            img = np.kron(base, np.ones((20, 20, 1), np.uint8)).astype(int) + rng.integers(-25, 25, (120, 160, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"view{k}.jpg", quality=90)
    return f"folder:{root}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    cache = tmp_path_factory.mktemp("explain_cache")
    spec = make_folder(tmp_path_factory.mktemp("explain_photos"))
    subprocess.run([sys.executable, "-m", "simlab", "run", "--dataset", spec, "--backbone", "efficientnet_lite0",
                    "--merge", "dot", "--classifier", "cosine", "--weights", "random", "--json"],
                   cwd=REPO_ROOT, env=simlab_env(cache), check=True, capture_output=True, timeout=600)
    runs = Store(cache / "simlab.db").list_runs()
    assert len(runs) == 1 and runs[0].done
    KnownDatasets(cache / "simlab.db").add(spec)  # opened in the app before: its links open without asking
    return {"cache": cache, "spec": spec, "run": runs[0].id}


@pytest.fixture(scope="module")
def app_url(seeded):
    with serve_app(seeded["cache"]) as url:
        yield url


def header(page) -> str:
    return page.locator('[data-testid="stMarkdown"]', has_text="in the list below").first.inner_text()


def image_sources(page) -> list[str]:
    """The two large images' sources, shortened (Playwright's locators see into the HTML element's shadow root)."""
    return page.locator(".pv .pv-box img").evaluate_all("els => els.map(e => e.src.slice(0, 80) + e.src.length)")


def sources_changed(page, before: list[str], timeout_s: float = 60.0) -> list[str]:
    """The two large images' sources, once they differ from ``before`` (the viewer's HTML is replaced)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = image_sources(page)
        if len(now) == 2 and now != before:
            return now
        assert time.monotonic() < deadline, f"the large images did not change: {now}"
        page.wait_for_timeout(300)


def overlay_button(page, label: str):
    return page.locator('[data-testid="stDialog"] button', has_text=label).first


def test_overlays_toggle_and_stay_while_stepping(app_url, seeded, tmp_path):
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(PAGE_TIMEOUT)
        page.goto(f"{app_url}/inspect?{urllib.parse.urlencode({'dataset': seeded['spec'], 'run': seeded['run']})}")
        page.wait_for_selector('h1:has-text("Inspect")')
        # the device badge reruns the whole page once it has detected the device: a dialog open then would close
        page.wait_for_function("() => !document.body.innerText.includes('Device: detecting')", timeout=120_000)
        settle(page)
        page.locator('[data-testid="stMain"] button', has_text="Open").first.click()
        page.wait_for_selector(".pv img")
        settle(page)
        no_exception(page)
        plain = image_sources(page)
        assert len(plain) == 2

        overlay_button(page, "Similarity map").click()
        page.wait_for_selector('text="Warm: regions that make these two look alike"')
        settle(page)
        no_exception(page)
        mapped = sources_changed(page, plain)
        assert len(mapped) == 2 and mapped != plain  # both large images carry the map
        legend = page.locator('[data-testid="stDialog"]').inner_text()
        assert "cosine" in legend and "This run's score is this cosine" in legend
        shot(page, tmp_path / "map.png")

        # the toggle keeps the keyboard focus (its arrow keys move between its options): focus the pair's header
        page.locator('[data-testid="stMarkdown"]', has_text="in the list below").first.click()
        page.keyboard.press("ArrowRight")  # the Next button's shortcut: the overlay stays
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMarkdown]')]"
                               ".some(e => e.innerText.startsWith('Pair 2 of '))", timeout=60_000)
        page.wait_for_selector('text="Warm: regions that make these two look alike"')
        settle(page)
        assert header(page).startswith("Pair 2 of ")
        sources_changed(page, mapped)

        overlay_button(page, "Matches").click()
        page.wait_for_selector("text=Numbered rings")
        settle(page)
        text = page.locator('[data-testid="stDialog"]').inner_text()
        assert "matched regions carry" in text and "% of the" in text
        page.locator('[data-testid="stMarkdown"]', has_text="in the list below").first.click()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMarkdown]')]"
                               ".some(e => e.innerText.startsWith('Pair 1 of '))", timeout=60_000)
        page.wait_for_selector("text=Numbered rings")
        settle(page)
        no_exception(page)

        overlay_button(page, "Images").click()
        page.wait_for_function("() => !document.body.innerText.includes('Numbered rings')", timeout=60_000)
        settle(page)
        deadline = time.monotonic() + 60
        while image_sources(page) != plain:  # back to the files themselves
            assert time.monotonic() < deadline
            page.wait_for_timeout(300)

        # a label said to be wrong: stored apart, the run re-scored beside its own numbers
        page.locator('[data-testid="stDialog"] button', has_text="Label is wrong").first.click()
        page.wait_for_selector("text=you said it is")
        assert "wrong" in page.locator('[data-testid="stMarkdown"]', has_text="you said it is").first.inner_text()
        page.keyboard.press("Escape")
        page.wait_for_selector("text=Against the corrected labels")
        settle(page)
        no_exception(page)
        text = page.locator('[data-testid="stMarkdown"]', has_text="Against the corrected labels").first.inner_text()
        assert "1 of " in text and "(original " in text


THRESHOLD_VIEW = """() => {
  const slider = [...document.querySelectorAll('[data-testid="stSlider"]')]
    .find(s => s.innerText.startsWith('Threshold'));
  const metric = [...document.querySelectorAll('[data-testid="stMetric"]')]
    .find(m => m.innerText.startsWith('Accuracy'));
  const line = [...document.querySelectorAll('[data-testid="stPlotlyChart"] text')]
    .map(t => t.textContent).find(t => t.startsWith('threshold '));
  if (!slider || !metric || !line) return null;
  return {shown: slider.querySelector('[data-testid="stSliderThumbValue"]').innerText,
          url: new URLSearchParams(location.search).get('threshold'), line: line,
          accuracy: metric.querySelector('[data-testid="stMetricValue"]').innerText};
}"""

AGREE = f"""(stored) => {{
  const view = ({THRESHOLD_VIEW})();
  return view !== null && view.line === 'threshold ' + view.shown
    && (view.url === null ? view.shown === stored : Number(view.url).toFixed(3) === view.shown);
}}"""


def threshold_view(page) -> dict:
    """What the page says the threshold is: the slider's shown value, the URL's parameter, the histogram's line, and
    the accuracy shown beside them (once all are drawn)."""
    page.wait_for_function(THRESHOLD_VIEW, timeout=60_000)
    return page.evaluate(THRESHOLD_VIEW)


def test_the_threshold_moved_by_the_arrow_keys_moves_the_numbers_and_the_url(app_url, seeded):
    """Key presses on the focused slider, each while the previous one's rerun may still be writing the URL (which
    the browser sends back with the next rerun, late): the value shown, the URL, the histogram's line and the
    accuracy all end at the last press, none lost."""
    run = Store(seeded["cache"] / "simlab.db").list_runs()[0]
    preds = Store(seeded["cache"] / "simlab.db").predictions(seeded["run"])
    stored = 0.5 if run.threshold is None else float(run.threshold)
    presses = 12
    key, back, sign = ("ArrowLeft", "ArrowRight", -1) if stored >= 0.5 else ("ArrowRight", "ArrowLeft", 1)
    # react-aria snaps an off-grid value onto the 0.01 grid on the first step
    expected = round(stored + sign * 0.01 * (presses - presses // 2), 2)
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(PAGE_TIMEOUT)
        query = {"dataset": seeded["spec"], "run": seeded["run"]}
        page.goto(f"{app_url}/inspect?{urllib.parse.urlencode(query)}")
        page.wait_for_selector('h1:has-text("Inspect")')
        settle(page, 500)
        assert float(threshold_view(page)["shown"]) == pytest.approx(stored, abs=5e-4)
        page.locator('[data-testid="stSlider"]', has_text="Threshold").first.get_by_role("slider").focus()
        # faster than a rerun: each press asks for the next one while the browser may not yet have the URL the
        # last one wrote; there and back, so that it is likely to happen at least once
        for step in [key] * presses + [back] * (presses // 2):
            page.keyboard.press(step)
            page.wait_for_timeout(120)
        # the last press's rerun may start late on a busy machine: wait for the page to agree with itself
        with contextlib.suppress(sync_api.TimeoutError):
            page.wait_for_function(AGREE, arg=f"{stored:.3f}", timeout=60_000)
        settle(page)
        no_exception(page)
        view = threshold_view(page)
        shown = float(view["shown"])
        assert shown == pytest.approx(expected, abs=0.011), view  # no press lost
        assert view["url"] is not None and float(view["url"]) == pytest.approx(shown, abs=1e-9), view
        assert view["line"] == f"threshold {shown:.3f}", view
        accuracy = float(np.mean((preds["prob"].to_numpy() >= shown) == preds["label"].to_numpy().astype(bool)))
        assert view["accuracy"] == f"{accuracy:.3f}", view
