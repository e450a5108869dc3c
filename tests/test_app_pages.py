"""The app shell and the Home, Data, Vectorize and Runs pages, run by Streamlit's AppTest."""

from __future__ import annotations

import contextlib
import html
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from helpers import simlab_cache_at
from pages._ui import legacy_pages
from simlab.experiment import GridConfig, run_grid
from simlab.paths import REPO_ROOT
from simlab.store import Store
from simlab.store.known_datasets import KnownDatasets

APP = str(REPO_ROOT / "app.py")
TIMEOUT = 180  # the Vectorize page loads the backbone registry (TensorFlow) on first use
XSS_NAME = "<img src=x onerror=alert(1)>.jpg"


def make_dataset(root: Path, n_groups: int = 12, per_group: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for g in range(n_groups):
        base = rng.integers(0, 255, (3, 3, 3)).astype(np.uint8)
        folder = root / f"scene{g:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_group):
            img = np.kron(base, np.ones((16, 16, 1), np.uint8))
            img = np.clip(img.astype(int) + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"view{k}.jpg")
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(root / "scene00" / XSS_NAME)
    (root / "scene01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


@pytest.fixture(scope="module")
def dataset_spec(tmp_path_factory) -> str:
    return "folder:" + str(make_dataset(tmp_path_factory.mktemp("scenes")))


@pytest.fixture(scope="module")
def cache_with_runs(tmp_path_factory, dataset_spec) -> Path:
    """A cache whose store holds a small grid of finished runs (random weights: seconds)."""
    cache = tmp_path_factory.mktemp("cache_with_runs")
    with simlab_cache_at(cache):
        config = GridConfig(dataset=dataset_spec, merges=["dot", "l1"], classifiers=["cosine", "logreg"],
                            weights="random")
        assert len(list(run_grid(config, Store()))) == 4
    return cache


def _kill_workers(cache: Path) -> None:
    for job in Store(cache / "simlab.db").list_jobs():
        if job.active and job.pid:
            with contextlib.suppress(OSError):
                os.killpg(job.pid, signal.SIGKILL)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, dataset_spec) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", dataset_spec)
    yield cache
    _kill_workers(cache)


@pytest.fixture
def full_cache(cache_with_runs, monkeypatch, dataset_spec) -> Path:
    monkeypatch.setenv("SIMLAB_CACHE", str(cache_with_runs))
    monkeypatch.setenv("SIMLAB_DATASET", dataset_spec)
    yield cache_with_runs
    _kill_workers(cache_with_runs)


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "text", "info", "success", "warning", "error", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button] + [b.label for b in at.get("form_submit_button")]


# --------------------------------------------------------------------------- the shell


def test_the_shell_has_the_dataset_picker_and_device_badge(empty_cache, dataset_spec):
    at = open_page()
    picker = at.sidebar.selectbox[0]
    assert picker.label == "Dataset" and picker.value == dataset_spec
    assert "demo" in picker.options


def test_picking_a_dataset_in_the_sidebar_changes_the_current_one(empty_cache):
    at = open_page()
    at.sidebar.selectbox[0].set_value("demo").run()
    assert not at.exception
    assert at.session_state["dataset_spec"] == "demo"


LEGACY_ENTRY = """
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from pages._ui.legacy_pages import leave_legacy_multipage_mode

st.session_state.setdefault("modes", []).append(PagesManager.uses_pages_directory)
leave_legacy_multipage_mode()
st.write("ran")
"""


def test_the_legacy_pages_folder_mode_is_left_through_streamlits_private_flag(tmp_path):
    """pages/_ui/legacy_pages.py sets Streamlit's private ``PagesManager.uses_pages_directory``: an entry
    script beside a pages/ folder starts in the legacy mode (True), and one rerun later it is off (False).
    When Streamlit renames or stops setting the flag, this fails: look for its replacement there."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "other.py").write_text("import streamlit as st\nst.write('other')\n")
    (tmp_path / "entry.py").write_text(LEGACY_ENTRY)
    assert legacy_pages.PagesManager is not None
    at = AppTest.from_file(str(tmp_path / "entry.py"), default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["modes"] == [True, False]
    assert [m.value for m in at.markdown] == ["ran"]


# --------------------------------------------------------------------------- home


def test_home_on_an_empty_store(empty_cache, dataset_spec):
    at = open_page()
    assert at.title[0].value == "simlab"
    assert "Run the demo experiment" in labels(at)
    body = texts(at)
    assert "No results yet" in body and "How it works" in body
    assert dataset_spec.split("/")[-1] in body


def test_home_with_runs_summarises_the_latest_results(full_cache):
    at = open_page()
    assert "Best held-out accuracy" in [m.label for m in at.metric]
    assert len(at.dataframe) >= 1 and len(at.dataframe[0].value) == 4


def test_the_demo_button_starts_the_demo_job(empty_cache):
    at = open_page()
    next(b for b in at.button if b.label == "Run the demo experiment").click().run()
    assert not at.exception, [e.value for e in at.exception]
    demo = [j for j in Store(empty_cache / "simlab.db").list_jobs() if j.kind == "demo"]
    assert len(demo) == 1 and demo[0].pid
    assert at.session_state["jobs"]["demo"] == demo[0].id
    # The page now shows the live job (a progress bar and a Cancel button) and no second start.
    assert len(at.get("progress")) == 1
    assert "Cancel" in labels(at)
    assert next(b for b in at.button if b.label == "Run the demo experiment").disabled
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert Store(empty_cache / "simlab.db").job(demo[0].id).cancel


# --------------------------------------------------------------------------- data


def test_data_page_counts_groups_problems_and_escapes_file_names(empty_cache):
    at = open_page("pages/data.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "37" and metrics["Groups"] == "12" and metrics["Skipped files"] == "1"
    assert metrics["Positive pairs"] == str(11 * 3 + 6)
    assert len(at.get("plotly_chart")) == 1  # the group-size histogram
    tiles = "\n".join(h.value for h in at.html)
    assert tiles.count("data:image/jpeg;base64,") >= 9  # thumbnails as small data URIs
    assert html.escape(XSS_NAME) in tiles and XSS_NAME not in tiles  # the file name shown as text, escaped
    assert not any(XSS_NAME in str(m.value) for m in at.markdown)
    problems = at.dataframe[-1].value
    assert list(problems["file"]) == ["scene01/broken.jpg"]
    assert problems["reason"].iloc[0]  # e.g. "truncated"


def test_data_page_paginates_the_groups(empty_cache):
    at = open_page("pages/data.py")
    at.selectbox(key="group_page_size").set_value(8).run()
    assert "page 1 of 2" in texts(at)
    at.number_input(key="group_page").set_value(2).run()
    assert not at.exception
    cards = re.sub("<[^>]+>|\u200b|\xad", "", "\n".join(h.value for h in at.html))  # the cards' text
    assert "scene08 · 3 images" in cards and "scene00 · " not in cards


def test_data_page_refuses_a_missing_folder_with_a_clear_message(empty_cache, tmp_path):
    at = open_page("pages/data.py")
    at.segmented_control(key="data_kind").set_value("folder").run()
    at.text_input[0].input(str(tmp_path / "nowhere"))
    next(b for b in at.button if b.label == "Use this dataset").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Folder not found" in e for e in errors), errors


def test_data_page_switches_to_a_valid_folder(empty_cache, tmp_path):
    other = make_dataset(tmp_path / "other", n_groups=3, per_group=2)
    at = open_page("pages/data.py")
    at.segmented_control(key="data_kind").set_value("folder").run()
    at.text_input[0].input(str(other))
    next(b for b in at.button if b.label == "Use this dataset").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset_spec"] == f"folder:{other.resolve()}"
    assert {m.label: m.value for m in at.metric}["Groups"] == "3"


@pytest.mark.parametrize("page", ["pages/vectorize.py", "pages/search.py", "pages/finetune.py"])
def test_pages_that_need_images_point_to_the_data_page_when_the_dataset_does_not_load(
        empty_cache, tmp_path, monkeypatch, page):
    monkeypatch.setenv("SIMLAB_DATASET", f"folder:{tmp_path / 'nowhere'}")
    at = open_page(page)
    assert not at.exception
    assert "Choose a dataset that loads on the Data page first." in [i.value for i in at.info]
    assert any("Folder not found" in e.value for e in at.error)


# --------------------------------------------------------------------------- vectorize


def test_vectorize_page_on_an_empty_cache(empty_cache):
    at = open_page("pages/vectorize.py")
    backbones = at.dataframe[0].value
    assert "efficientnet_lite0" in list(backbones["name"])
    status = dict(zip(backbones["name"], backbones["weights"]))
    assert "bundled" in status["efficientnet_lite0"]
    assert at.multiselect[0].value == ["efficientnet_lite0"]
    assert "Random: untrained, for tests only" in at.radio[0].options
    assert "No vectors yet" in texts(at)


def test_vectorize_page_starts_a_job(empty_cache):
    at = open_page("pages/vectorize.py")
    at.radio[0].set_value("random")
    next(b for b in at.button if b.label == "Vectorize").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = Store(empty_cache / "simlab.db").list_jobs()
    assert job.kind == "vectorize" and job.params["weights"] == "random"
    assert job.params["backbones"] == ["efficientnet_lite0"]
    assert len(at.get("progress")) == 1


def test_vectorize_page_with_vectors_shows_the_sets_and_the_map(full_cache):
    at = open_page("pages/vectorize.py")
    sets = at.dataframe[1].value
    assert len(sets) == 1 and bool(sets["this dataset"].iloc[0])
    assert "Random: untrained, for tests only" in sets["weights"].iloc[0]
    assert len(at.get("plotly_chart")) == 1
    at.segmented_control(key="map_method").set_value("t-SNE").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1


# --------------------------------------------------------------------------- runs


def test_runs_page_on_an_empty_store(empty_cache):
    at = open_page("pages/runs.py")
    body = texts(at)
    assert "No jobs yet" in body and "No runs yet" in body


def test_runs_page_lists_runs_and_jobs_with_errors(full_cache):
    store = Store(full_cache / "simlab.db")
    failed = store.add_job("grid", {"dataset": "x"})
    store.update_job(failed, status="failed", message="Unknown classifier 'nope'",
                     error="Traceback (most recent call last):\n  ...\nValueError: Unknown classifier 'nope'",
                     finished=time.time())
    try:
        at = open_page("pages/runs.py")
        jobs_table, runs_table = at.dataframe[0].value, at.dataframe[1].value
        assert failed in list(jobs_table["id"])
        assert len(runs_table) == 4 and runs_table["accuracy"].notna().all()
        assert {"backbone", "merge", "classifier", "status", "duration"} <= set(runs_table.columns)
        assert not any("Traceback" in str(e.value) for e in at.error)
    finally:
        store.delete_job(failed)


# --------------------------------------------------------------------------- state in the URL, names, Compare, Inspect


def test_the_dataset_comes_from_the_url_and_goes_back_to_it(empty_cache, tmp_path):
    """A reload or a shared link (a new session with ?dataset=) opens that dataset, not the default one."""
    other = make_dataset(tmp_path / "linked", n_groups=3, per_group=2)
    spec = f"folder:{other}"
    KnownDatasets(empty_cache / "simlab.db").add(spec)  # opened in this app before (else the link asks first)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = spec
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["dataset_spec"] == spec
    assert at.sidebar.selectbox[0].value == spec
    at.sidebar.selectbox[0].set_value("demo").run()  # picking another one writes it to the URL
    assert at.query_params["dataset"] == "demo"


def test_a_malformed_dataset_in_the_url_is_ignored(empty_cache, dataset_spec):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = "nonsense:/x"
    at.run()
    assert not at.exception
    assert at.session_state["dataset_spec"] == dataset_spec  # the default: $SIMLAB_DATASET
    assert at.query_params["dataset"] == dataset_spec


def test_home_names_classifiers_as_the_registry_does(full_cache):
    at = open_page()
    table = at.dataframe[0].value
    assert set(table["classifier"]) == {"Similarity threshold", "Logistic regression"}
    assert "cosine" not in set(table["classifier"])
    assert any("Similarity threshold" in str(m.value) for m in at.markdown)  # the best configuration
    demo_text = " ".join(str(m.value) for m in at.markdown)
    assert "**threshold," not in demo_text and "Similarity threshold" in demo_text


@pytest.fixture
def cache_with_finetune(cache_with_runs, tmp_path, monkeypatch, dataset_spec) -> dict:
    """The grid runs plus one fine-tune run stopped by hand and scored (its best checkpoint's test pairs)."""
    import shutil
    cache = tmp_path / "cache"
    shutil.copytree(cache_with_runs, cache)
    store = Store(cache / "simlab.db")
    grid = store.list_runs()[0]
    preds = store.predictions(grid.id)
    run_id = store.add_run(kind="finetune", dataset=grid.dataset, fingerprint=grid.fingerprint, backbone="small-cnn",
                           merge="siamese", classifier="contrastive", split=grid.split, seed=grid.seed,
                           config={**grid.config, "mode": "siamese", "loss": "contrastive"})
    store.finish_run(run_id, {**grid.metrics, "accuracy": 0.75, "epochs_run": 2, "best_epoch": 1, "stopped": True},
                     preds, status="cancelled")
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", dataset_spec)
    yield {"cache": cache, "finetune": run_id, "grid": grid.id}
    _kill_workers(cache)


def test_compare_shows_fine_tune_runs_in_their_own_panel_a_stopped_one_marked(cache_with_finetune):
    at = open_page("pages/compare.py")
    assert "Fine-tuned models" in texts(at)
    heatmap = at.get("plotly_chart")[0].proto.spec
    assert "siamese" not in heatmap and "contrastive" not in heatmap  # no empty column, no grey chart
    assert "Similarity threshold" in heatmap
    tables = [d.value for d in at.dataframe]
    leaderboard, panel = tables[0], tables[1]
    assert cache_with_finetune["finetune"] not in set(leaderboard["id"])
    assert set(leaderboard["classifier"]) == {"Similarity threshold", "Logistic regression"}
    assert list(panel["id"]) == [cache_with_finetune["finetune"]]
    row = panel[panel["id"] == cache_with_finetune["finetune"]].iloc[0]
    assert row["status"].endswith("stopped") and row["accuracy"] == 0.75
    assert "stopped by hand" in texts(at)
    at.radio(key="compare_metric").set_value("auc").run()
    assert at.query_params["metric"] == "auc"  # the page's options live in the URL


def test_inspect_opens_the_run_of_the_url_and_caveats_a_moved_threshold(cache_with_finetune):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/inspect.py")
    at.query_params["run"] = cache_with_finetune["finetune"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="inspect_select").value == cache_with_finetune["finetune"]  # a stopped run: inspectable
    assert "stopped by hand" in texts(at)
    slider = at.slider(key="inspect_threshold")
    first_id = slider.id
    assert slider.value == 0.5 and "The run's own threshold" in [c.value for c in at.caption]
    assert not at.warning and not at.metric[0].delta
    slider.set_value(0.8).run()
    assert "Tuned on the test pairs: optimistic" in [c.value for c in at.caption]
    assert at.slider(key="inspect_threshold").id == first_id  # one widget whatever its value
    assert any("optimistic" in w.value for w in at.warning)
    assert at.metric[0].delta.endswith("vs the run's 0.500")
    assert at.query_params["threshold"] == "0.8"
    at.button(key="inspect_threshold_reset").click().run()
    assert at.slider(key="inspect_threshold").value == 0.5 and "threshold" not in at.query_params
