"""State in the URL, in a real browser: a reload (or a shared link) keeps the dataset, the run and the filters.

A folder dataset of generated images and two CLI runs on it (random weights: seconds) in a temporary cache;
the app starts on the demo dataset, so a reload that lost the folder would show the demo again.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
from app_browser import PAGE_TIMEOUT, chromium, no_exception, serve_app, settle, simlab_env
from PIL import Image

from simlab.paths import REPO_ROOT
from simlab.store import Store
from simlab.store.known_datasets import KnownDatasets


def make_folder(root) -> str:
    """Six groups of three 96 px images; returns the dataset spec."""
    rng = np.random.default_rng(1)
    for g in range(6):
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
        folder = root / f"place{g}"
        folder.mkdir(parents=True)
        for k in range(3):
            img = np.kron(base, np.ones((24, 24, 1), np.uint8)).astype(int) + rng.integers(-20, 20, (96, 96, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"view{k}.png")
    return f"folder:{root}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A cache with two runs on a folder dataset, made by the CLI."""
    cache = tmp_path_factory.mktemp("url_cache")
    spec = make_folder(tmp_path_factory.mktemp("url_photos"))
    env = simlab_env(cache)
    subprocess.run([sys.executable, "-m", "simlab", "run", "--dataset", spec, "--backbone", "efficientnet_lite0",
                    "--merge", "dot", "l1", "--classifier", "cosine", "--weights", "random", "--json"],
                   cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)
    runs = Store(cache / "simlab.db").list_runs()
    assert len(runs) == 2 and all(r.done for r in runs)
    KnownDatasets(cache / "simlab.db").add(spec)  # opened in the app before: its links open without asking
    return {"cache": cache, "spec": spec, "runs": [r.id for r in runs]}


@pytest.fixture(scope="module")
def app_url(seeded):
    with serve_app(seeded["cache"]) as url:
        yield url


@pytest.fixture
def browser(app_url):
    with chromium() as launched:
        yield launched


def new_page(browser):
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(PAGE_TIMEOUT)
    return page


def wait_for_param(page, name: str, value: str) -> None:
    """Until the browser's URL has ``name=value`` (Streamlit writes it at the end of the rerun)."""
    page.wait_for_function("([n, v]) => new URLSearchParams(location.search).getAll(n).includes(v)", arg=[name, value],
                           timeout=30_000)


def params(page) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)


def selectbox(page, label: str, where: str = "stApp"):
    return page.locator(f'[data-testid="{where}"] [data-testid="stSelectbox"]', has_text=label).first


def shown(page, label: str, where: str = "stApp") -> str:
    """The text a selectbox shows (its combobox input's value)."""
    return selectbox(page, label, where).locator('input[role="combobox"]').input_value()


def pick(page, label: str, option: str, where: str = "stApp") -> None:
    """Choose ``option`` (a substring of its text) in the selectbox labelled ``label``."""
    selectbox(page, label, where).locator('input[role="combobox"]').click()
    page.locator('[role="option"]', has_text=option).first.click()
    settle(page)


def sidebar_dataset(page) -> str:
    return shown(page, "Dataset", "stSidebar")


def selected_run(page) -> str:
    return shown(page, "Run", "stMain")


def test_a_reload_keeps_the_dataset_the_run_and_the_filters(browser, app_url, seeded):
    page = new_page(browser)
    page.goto(f"{app_url}/inspect")
    page.wait_for_selector('h1:has-text("Inspect")')
    settle(page)
    assert params(page)["dataset"] == ["demo"]  # the default, in the URL from the first run
    pick(page, "Dataset", seeded["spec"], "stSidebar")  # the sidebar's picker lists datasets that have runs
    older = seeded["runs"][-1]  # the page opens the newest run: pick the other one
    pick(page, "Run", older, "stMain")
    page.locator('[data-testid="stRadio"]', has_text="Show").get_by_text("Errors", exact=True).click()
    settle(page)
    no_exception(page)
    wait_for_param(page, "show", "errors")
    assert params(page)["dataset"] == [seeded["spec"]]
    assert params(page)["run"] == [older] and params(page)["show"] == ["errors"]

    page.reload()
    page.wait_for_selector('h1:has-text("Inspect")')
    settle(page)
    no_exception(page)
    assert seeded["spec"] in sidebar_dataset(page)  # not back to the demo
    assert older in selected_run(page)
    checked = page.locator('[data-testid="stRadio"]', has_text="Show").locator("input:checked")
    assert checked.evaluate("e => e.closest('label').innerText") == "Errors"
    assert params(page)["run"] == [older] and params(page)["dataset"] == [seeded["spec"]]

    # another page keeps the dataset in its URL; its own options go there too, and survive a reload
    page.locator('[data-testid="stSidebarNav"] a', has_text="Compare").first.click()
    page.wait_for_selector('h1:has-text("Compare")')
    settle(page)
    assert params(page)["dataset"] == [seeded["spec"]] and "run" not in params(page)
    page.locator('[data-testid="stRadio"]', has_text="Metric").get_by_text("ROC AUC", exact=True).click()
    settle(page)
    wait_for_param(page, "metric", "auc")
    assert params(page)["metric"] == ["auc"]
    page.reload()
    page.wait_for_selector('h1:has-text("Compare")')
    settle(page)
    no_exception(page)
    assert seeded["spec"] in sidebar_dataset(page)
    checked = page.locator('[data-testid="stRadio"]', has_text="Metric").locator("input:checked")
    assert checked.evaluate("e => e.closest('label').innerText") == "ROC AUC"


def test_a_shared_link_opens_the_same_view_in_a_new_session(browser, app_url, seeded):
    run = seeded["runs"][-1]
    query = urllib.parse.urlencode({"dataset": seeded["spec"], "run": run, "sort": "prob_asc"})
    page = new_page(browser)  # a new browser context: a new session, nothing in its state
    page.goto(f"{app_url}/inspect?{query}")
    page.wait_for_selector('h1:has-text("Inspect")')
    settle(page)
    no_exception(page)
    assert seeded["spec"] in sidebar_dataset(page)
    assert run in selected_run(page)
    assert shown(page, "Sort", "stMain") == "Probability, low to high"
    probs = [float(t.split("P(same)")[1].split()[0]) for t in
             page.locator('[data-testid="stMarkdown"]', has_text="P(same)").all_inner_texts()]
    assert probs and probs == sorted(probs)  # the link's sort order, applied


def viewer_header(page) -> str:
    return page.locator('[data-testid="stMarkdown"]', has_text="in the list below").first.inner_text()


def test_the_pair_viewer_steps_with_the_arrow_keys_zooms_and_survives_a_reload(browser, app_url, seeded):
    run = seeded["runs"][0]
    page = new_page(browser)
    page.goto(f"{app_url}/inspect?{urllib.parse.urlencode({'dataset': seeded['spec'], 'run': run})}")
    page.wait_for_selector('h1:has-text("Inspect")')
    settle(page)
    page.locator('[data-testid="stMain"] button', has_text="Open").first.click()
    page.wait_for_selector(".pv img")
    settle(page)
    no_exception(page)
    assert viewer_header(page).startswith("Pair 1 of ")
    first = params(page)["pair"]
    page.keyboard.press("ArrowRight")  # the Next button's shortcut
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMarkdown]')]"
                           ".some(e => e.innerText.startsWith('Pair 2 of '))", timeout=30_000)
    settle(page)
    second = params(page)["pair"]
    assert second != first
    size = page.locator(".pv-L .pv-box img").evaluate("e => [e.naturalWidth, e.clientWidth]")
    assert size[0] == 96  # the file itself, at full resolution (96 px wide), shown larger than a thumbnail
    assert size[1] > 300
    page.locator(".pv-L .pv-box img").click()  # zoom: that image alone, at its own resolution
    page.wait_for_timeout(300)
    assert page.locator(".pv-R").first.is_hidden() and page.locator(".pv-L .pv-full").first.is_visible()

    page.reload()  # the URL keeps the open pair
    page.wait_for_selector(".pv img")
    settle(page)
    assert viewer_header(page).startswith("Pair 2 of ") and params(page)["pair"] == second
    page.keyboard.press("Escape")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('pair')", timeout=30_000)
    assert page.locator(".pv").count() == 0
