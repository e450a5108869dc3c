"""Search in a real browser: an upload of a scene that is not in the dataset, re-ranked by a trained run, is
answered "no close match" instead of P(same) near 1. Real Chromium, real `streamlit run`, real grid run on
the bundled backbone's ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_browser import chromium, serve_app, settle, shot

from helpers import simlab_cache_at, stranger_image, write_group_folder
from simlab.data import load_dataset
from simlab.experiment import GridConfig, run_grid
from simlab.store import Store
from simlab.vectors import vectorize

SHOTS = Path(__file__).resolve().parent.parent / "cache" / "screenshots"
SEARCH_TIMEOUT = 600_000  # ms: the re-rank runs in a worker that loads TensorFlow and refits the run


@pytest.fixture(scope="module")
def searchable(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_browser")
    cache, data = root / "cache", write_group_folder(root / "scenes", n_groups=16, per_group=4, size=128)
    spec = f"folder:{data.resolve()}"
    with simlab_cache_at(cache):
        vectorize(load_dataset(spec), "efficientnet_lite0", "imagenet")
        (summary,) = list(run_grid(GridConfig(dataset=spec, merges=["dot"], classifiers=["logreg"]), Store()))
    stranger = root / "street.png"
    stranger_image(3, 320).save(stranger)
    return {"cache": cache, "spec": spec, "run": summary["run_id"], "stranger": stranger}


def test_an_unrelated_upload_re_ranked_by_a_run_says_no_close_match(searchable):
    with serve_app(searchable["cache"], searchable["spec"]) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/search")
        settle(page)
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Re-rank by run").click()
        page.get_by_role("option").filter(has_text=searchable["run"]).first.click()
        settle(page)
        page.get_by_text("Upload an image", exact=True).click()
        settle(page)
        page.locator('input[type="file"]').set_input_files(str(searchable["stranger"]))
        page.get_by_text("nearest images").first.wait_for(timeout=SEARCH_TIMEOUT)  # the re-ranked results
        settle(page, timeout=SEARCH_TIMEOUT)
        shot(page, SHOTS / "search_no_close_match.png")
        warning = page.get_by_text("No close match.")
        assert warning.count() == 1, page.inner_text("body")[:3000]
        assert "re-ranked by run" in page.inner_text("body")
