"""What a page shows follows the current dataset, and empty values read as empty: real runs (the weight-free
phash backbone on the demo and on a generated folder), the real SQLite store and Streamlit's AppTest on app.py."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import seed_cache
from streamlit.testing.v1 import AppTest

from helpers import APP, APP_TIMEOUT, open_page, simlab_cache_at, texts, write_group_folder
from simlab.experiment import GridConfig, run_grid
from simlab.store import Store


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, demo_seed):
    """Four runs on the demo (made without a job, as the CLI makes them) and four on a folder, whose grid job is
    the newest job in the store."""
    root = tmp_path_factory.mktemp("state")
    cache = seed_cache(root / "cache", demo_seed)
    data = write_group_folder(root / "scenes", n_groups=8, per_group=3, size=48)
    folder = f"folder:{data.resolve()}"
    with simlab_cache_at(cache):
        demo = [s["run_id"] for s in run_grid(GridConfig(dataset="demo", backbones=["phash"], merges=["dot", "l1"],
                                                          classifiers=["cosine", "logreg"]))]
        store = Store(cache / "simlab.db")
        config = GridConfig(dataset=folder, backbones=["phash"], merges=["dot", "l1"], classifiers=["cosine", "logreg"])
        job_id = store.add_job("grid", {"dataset": folder, "backbones": ["phash"], "merges": ["dot", "l1"],
                                        "classifiers": ["cosine", "logreg"]})
        other = [s["run_id"] for s in run_grid(config, store=store, job_id=job_id)]
        store.update_job(job_id, status="done", started=time.time() - 5, finished=time.time())
    return {"cache": cache, "folder": folder, "demo": demo, "other": other, "job": job_id}


@pytest.fixture
def on_demo(two_datasets, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(two_datasets["cache"], cache)
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", "demo")
    return {**two_datasets, "cache": cache}


def test_two_runs_offers_only_the_current_datasets_runs(on_demo):
    at = open_page("pages/diff.py")
    offered = set(at.selectbox(key="diff_a").options) | set(at.selectbox(key="diff_b").options)
    ids = {o.rsplit(" ", 1)[-1] for o in offered} | {at.selectbox(key="diff_a").value,
                                                      at.selectbox(key="diff_b").value}
    assert at.selectbox(key="diff_a").value in on_demo["demo"]
    assert at.selectbox(key="diff_b").value in on_demo["demo"]
    assert not ids & set(on_demo["other"])


def test_two_runs_opened_by_a_link_shows_the_links_dataset(on_demo):
    at = AppTest.from_file(APP, default_timeout=APP_TIMEOUT)
    at.run()
    at.query_params["a"] = on_demo["other"][0]
    at.switch_page("pages/diff.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="diff_a").value == on_demo["other"][0]
    assert at.selectbox(key="diff_b").value in on_demo["other"]


def test_train_shows_the_current_datasets_runs_not_another_datasets_job(on_demo):
    at = open_page("pages/train.py")
    assert not any(on_demo["job"] in t for t in texts(at.caption))  # the folder's grid job is not shown
    assert not any("No grid yet" in t for t in texts(at.info))
    assert any("4 runs" in t and "Compare" in t for t in texts(at.info)), texts(at.info)


def test_train_shows_the_current_datasets_grid_job(on_demo, monkeypatch):
    monkeypatch.setenv("SIMLAB_DATASET", on_demo["folder"])
    at = open_page("pages/train.py")
    assert any(f"Grid job {on_demo['job']}" in t for t in texts(at.caption))
    table = at.dataframe[0].value
    assert set(table["id"]) == set(on_demo["other"])


def test_runs_table_shows_an_empty_threshold_for_runs_not_done(on_demo):
    store = Store(on_demo["cache"] / "simlab.db")
    for _ in range(2):
        run_id = store.add_run(dataset="demo", backbone="phash", merge="dot", classifier="cosine", config={})
        store.update_run(run_id, status="failed", error="stopped", finished=time.time())
    at = open_page("pages/runs.py")
    at.multiselect(key="runs_status").set_value(["failed"]).run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert len(table) == 2
    assert table["threshold"].dtype.kind == "f" and table["threshold"].isna().all()
    assert table["accuracy"].dtype.kind == "f"
