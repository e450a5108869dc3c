"""The analysis pages (Train, Compare, Inspect) with real parts: a generated image folder, a real grid of
runs (bundled backbone, real classifiers), the real SQLite store and Streamlit's AppTest on app.py.

Every test points SIMLAB_CACHE at a temporary folder, so nothing touches the repository's cache/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from helpers import APP, open_page, simlab_cache_at, texts, write_group_folder
from simlab.backbones import get_backbone
from simlab.experiment import GridConfig, run_grid
from simlab.reference import STUDY_BACKBONES, STUDY_CLASSIFIERS, STUDY_MERGES, published_accuracies
from simlab.store import Run, Store

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A 12-group folder dataset and a 2 x 2 grid run on it, in a cache of its own (built once)."""
    root = tmp_path_factory.mktemp("analysis")
    cache, data = root / "cache", write_group_folder(root / "scenes", n_groups=12, per_group=3, size=64)
    with simlab_cache_at(cache):
        config = GridConfig(dataset=f"folder:{data}", backbones=["efficientnet_lite0"], weights="random",
                            merges=["dot", "l1"], classifiers=["cosine", "logreg"])
        summaries = list(run_grid(config))
    return {"cache": cache, "data": data, "spec": f"folder:{data.resolve()}", "runs": summaries}


@pytest.fixture
def with_runs(lab, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(lab["cache"]))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    return lab


@pytest.fixture
def empty(tmp_path, monkeypatch, lab):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    return tmp_path


def shown_range(at: AppTest) -> tuple[int, int]:
    """(shown on this page, total matching) from Inspect's "Showing pairs a–b of n" caption."""
    for text in texts(at.caption):
        m = re.search(r"Showing pairs (\d+)–(\d+) of (\d+)", text)
        if m:
            return int(m[2]) - int(m[1]) + 1, int(m[3])
    raise AssertionError("no 'Showing pairs' caption")


def study_runs(store: Store, base_run: Run, split: str, shift: float) -> None:
    """Runs of the 2017 grid recorded in the store (test data: the published numbers, shifted)."""
    preds = store.predictions(base_run.id)
    for r in published_accuracies().itertuples():
        acc = r.accuracy + shift
        config = dict(base_run.config, backbones=[r.backbone], merges=[r.merge], classifiers=[r.classifier],
                      split=split, negatives="same_left", weights="imagenet")
        run_id = store.add_run(dataset=base_run.dataset, fingerprint=base_run.fingerprint,
                               backbone=r.backbone, merge=r.merge, classifier=r.classifier, split=split, seed=0,
                               config=config)
        store.finish_run(run_id, {"accuracy": acc, "accuracy_lo": acc - 0.02, "accuracy_hi": acc + 0.02,
                                  "f1": acc, "auc": acc, "map": 0.5, "n_test": 1244}, preds)


# --------------------------------------------------------------------------- empty store


@pytest.mark.parametrize("page", ["pages/compare.py", "pages/inspect.py"])
def test_empty_store_says_what_to_do(empty, page):
    at = open_page(page)
    assert any("No runs yet - run the demo experiment on Home or start a grid on Train" in t for t in texts(at.info))
    assert not at.error


def test_train_renders_on_empty_store(empty):
    at = open_page("pages/train.py")
    assert {m.key for m in at.multiselect} >= {"train_backbones", "train_merges", "train_classifiers"}
    assert any("No grid yet" in t for t in texts(at.info))
    assert any("This grid makes **9 runs**" in t for t in texts(at.markdown))
    assert not at.error


# --------------------------------------------------------------------------- reference table


def test_published_table_is_tidy_and_matches_the_guide():
    table = published_accuracies()
    assert len(table) == len(STUDY_BACKBONES) * len(STUDY_MERGES) * len(STUDY_CLASSIFIERS) == 60
    assert list(table.columns) == ["backbone", "merge", "classifier", "accuracy"]
    cell = table.set_index(["backbone", "merge", "classifier"])["accuracy"]
    assert cell["inceptionv3", "dot", "xgboost"] == pytest.approx(0.937)
    assert cell["resnet50", "l1", "xgboost"] == pytest.approx(0.941)
    assert cell["vgg19_fc2", "dot", "linsvc"] == pytest.approx(0.781)
    assert cell["xception", "l2", "rf"] == pytest.approx(0.816)


# --------------------------------------------------------------------------- Compare


def test_compare_heatmaps_and_leaderboard(with_runs):
    at = open_page("pages/compare.py")
    assert not at.error
    assert at.radio(key="compare_metric").options == ["Accuracy", "F1", "ROC AUC", "Retrieval mAP"]
    board = at.dataframe[0].value
    assert len(board) == len(with_runs["runs"]) == 4  # one row per run
    assert set(board["id"]) == {r["run_id"] for r in with_runs["runs"]}
    assert "Download CSV" in [b.label for b in at.get("download_button")]
    # the heatmap is drawn as square markers carrying the run ids, so that a click selects a run
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    cells = [t for t in spec["data"] if t.get("mode") == "markers+text"]
    assert {t["marker"]["symbol"] for t in cells} == {"square"}
    assert {row[0] for t in cells for row in t["customdata"]} == set(board["id"])
    assert any("random" in t for t in texts(at.warning))  # random weights are labelled

    at.radio(key="compare_metric").set_value("auc").run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "ROC AUC"
    at.radio(key="compare_layout").set_value("merge").run()
    assert not at.exception
    assert at.selectbox(key="compare_merge").options[0].startswith("dot")


def test_compare_sets_runs_beside_the_2017_study(lab, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    store = Store(cache / "simlab.db")
    base = store.get(lab["runs"][0]["run_id"])
    study_runs(store, base, "pair", +0.01)
    study_runs(store, base, "group", -0.05)
    at = open_page("pages/compare.py")
    assert "Beside the 2017 study" in texts(at.subheader)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells reproduced"] == "60 / 60"
    assert metrics["Mean difference"] == "+0.010"
    assert metrics["Group split vs pair split"] == "-0.060"
    table = at.dataframe[-1].value
    assert len(table) == 60 and {"published", "accuracy", "delta", "group"} <= set(table.columns)


# --------------------------------------------------------------------------- Inspect


def test_inspect_threshold_rescores_everything(with_runs):
    run = max(with_runs["runs"], key=lambda r: r["accuracy"] < 1)  # one that makes mistakes
    at = open_page("pages/inspect.py", inspect_run=run["run_id"])
    assert at.selectbox(key="inspect_select").value == run["run_id"]
    stored = Store(with_runs["cache"] / "simlab.db").get(run["run_id"]).threshold
    assert at.slider(key="inspect_threshold").value == pytest.approx(stored)  # starts at the run's own threshold
    assert at.metric[0].label == "Accuracy"
    assert float(at.metric[0].value) == pytest.approx(run["accuracy"], abs=5e-4)
    preds = Store(with_runs["cache"] / "simlab.db").predictions(run["run_id"])
    # a threshold above every probability predicts "different" for all: accuracy = share of negatives
    at.slider(key="inspect_threshold").set_value(1.0).run()
    assert not at.exception
    assert float(at.metric[0].value) == pytest.approx((preds.label == 0).mean(), abs=5e-4)
    assert float(at.metric[0].value) != pytest.approx(run["accuracy"], abs=5e-4)
    assert at.metric[0].delta  # shown against the run's own threshold


def test_inspect_filters_reduce_the_pairs(with_runs):
    run = max(with_runs["runs"], key=lambda r: r["accuracy"] < 1)
    preds = Store(with_runs["cache"] / "simlab.db").predictions(run["run_id"])
    stored = Store(with_runs["cache"] / "simlab.db").get(run["run_id"]).threshold  # the page starts at it
    wrong = int(((preds.prob >= stored).astype(int) != preds.label).sum())
    assert 0 < wrong < len(preds)
    at = open_page("pages/inspect.py", inspect_run=run["run_id"])
    assert shown_range(at)[1] == len(preds)
    at.radio(key="inspect_show").set_value("errors").run()
    assert shown_range(at)[1] == wrong
    at.radio(key="inspect_show").set_value("all").run()
    at.slider(key="inspect_prob").set_value((0.5, 1.0)).run()
    assert shown_range(at)[1] == int((preds.prob >= 0.5).sum())
    at.slider(key="inspect_prob").set_value((0.0, 1.0)).run()
    group = str(preds.left_group.iloc[0])
    at.multiselect(key="inspect_groups").set_value([group]).run()
    expected = int(((preds.left_group == group) | (preds.right_group == group)).sum())
    assert shown_range(at)[1] == expected < len(preds)
    at.radio(key="inspect_view").set_value("Table").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == expected
    assert table["left"].str.startswith("data:image/jpeg;base64,").all()  # small thumbnails, never the files


def test_inspect_sorts_and_opens_a_pair_with_its_neighbours(with_runs):
    run = max(with_runs["runs"], key=lambda r: r["accuracy"] < 1)
    at = open_page("pages/inspect.py", inspect_run=run["run_id"])
    at.selectbox(key="inspect_sort").set_value("hardest").run()
    probs = [float(m) for m in re.findall(r"P\(same\)\s\*\*([0-9.]+)\*\*", " ".join(texts(at.markdown)))]
    stored = Store(with_runs["cache"] / "simlab.db").get(run["run_id"]).threshold
    assert probs and np.all(np.diff(np.abs(np.array(probs) - stored)) >= -1e-3)  # nearest the threshold first
    opens = [b for b in at.button if (b.key or "").startswith("inspect_open_")]
    assert len(opens) == min(24, shown_range(at)[0])
    opens[0].click().run()
    assert not at.exception
    shown = " ".join(texts(at.markdown) + texts(at.caption))
    assert "Other images of group" in shown
    assert "Neighbours of" in shown  # the run's vectors are a cache hit
    assert not at.error


# --------------------------------------------------------------------------- Train


def test_train_preset_fills_the_form_with_the_2017_protocol(empty):
    at = open_page("pages/train.py")
    at.button(key="train_preset_2017").click().run()
    assert not at.exception
    assert at.multiselect(key="train_backbones").value == list(STUDY_BACKBONES)
    assert at.multiselect(key="train_merges").value == ["dot", "l1", "l2"]
    assert at.multiselect(key="train_classifiers").value == ["gnb", "linsvc", "xgboost", "rf"]
    assert at.radio(key="train_split").value == "pair"
    assert at.radio(key="train_negatives").value == "same_left"
    assert at.slider(key="train_test_size").value == pytest.approx(0.3)
    assert at.toggle(key="train_library_defaults").value is True
    assert any("This grid makes **60 runs**" in t for t in texts(at.markdown))
    mb = sum(get_backbone(b).options["download_mb"] for b in STUDY_BACKBONES)  # sizes from the registry
    assert any(f"download their pretrained weights on first use (about {mb:,} MB in all)" in t
               for t in texts(at.warning))
    at.button(key="train_preset_group").click().run()
    assert at.radio(key="train_split").value == "group"
    assert at.multiselect(key="train_backbones").value == list(STUDY_BACKBONES)
    at.button(key="train_reset").click().run()
    assert at.multiselect(key="train_backbones").value == ["efficientnet_lite0"]
    assert at.toggle(key="train_library_defaults").value is False


def test_train_counts_runs_and_refuses_an_empty_grid(empty):
    at = open_page("pages/train.py")
    at.multiselect(key="train_merges").set_value(["dot", "l1"]).run()
    at.multiselect(key="train_classifiers").set_value(["cosine", "logreg"]).run()
    assert any("This grid makes **4 runs**" in t for t in texts(at.markdown))
    assert at.button(key="train_start").label == "Start 4 runs"
    at.multiselect(key="train_classifiers").set_value([]).run()
    assert not at.exception
    assert at.button(key="train_start").disabled
    assert any("at least one" in t for t in texts(at.warning))


def test_train_runs_a_grid_in_the_background_and_fills_the_table(lab, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)  # vectors cached: the worker only trains
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    at = open_page("pages/train.py")
    at.selectbox(key="train_weights").set_value("random").run()
    at.multiselect(key="train_merges").set_value(["dot"]).run()
    at.multiselect(key="train_classifiers").set_value(["cosine", "logreg"]).run()
    at.button(key="train_start").click().run()
    assert not at.exception
    # The lab's grid stored these two cells already: the page offers them instead of storing them twice.
    assert "train_job" not in at.session_state
    assert any("2 of these 2 runs are already stored" in m.value for m in at.markdown)
    at.button(key="train_again").click().run()
    assert not at.exception
    job_id = at.session_state["train_job"]
    store = Store(cache / "simlab.db")
    deadline = time.time() + 240
    while store.job(job_id).active and time.time() < deadline:
        time.sleep(1)
    job = store.job(job_id)
    assert job.status == "done", job.error
    time.sleep(2.1)  # the pages' run list is cached for 2 s
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["status"]) == ["done", "done"]
    assert table["accuracy"].between(0, 1).all()
    assert set(table["id"]) == {r.id for r in store.list_runs() if r.job_id == job_id}
    assert len(store.list_runs()) == len(lab["runs"]) + 2  # run again anyway: a second set beside the first


# --------------------------------------------------------------------------- a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Chromium at /usr/bin/chromium")
def test_clicking_a_heatmap_square_opens_that_run_on_inspect(with_runs):
    """Streamlit returns no selection for go.Heatmap clicks; our square markers must, in a real browser."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(with_runs["cache"].parent / "streamlit.log", "wb") as log:  # read it when this test fails
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
                                   "--server.port", str(port), "--server.fileWatcherType", "none",
                                   "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run"])
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                for _ in range(60):
                    try:
                        page.goto(f"http://localhost:{port}/")
                        break
                    except Exception:
                        time.sleep(0.5)
                page.get_by_text("Explore", exact=True).wait_for(timeout=90_000)  # app.py's navigation is up
                page.goto(f"http://localhost:{port}/compare")
                plot = page.locator(".js-plotly-plot").first
                plot.wait_for(timeout=90_000)
                point = plot.locator("g.trace.scatter").nth(1).locator("path.point").first
                box = point.bounding_box()
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                page.wait_for_url(re.compile(r".*/inspect\?run=r[0-9a-f]+"), timeout=60_000)
                run_id = re.search(r"[?&]run=(r[0-9a-f]+)", page.url).group(1)
                assert run_id in {r["run_id"] for r in with_runs["runs"]}
                page.get_by_text("Showing pairs").wait_for(timeout=60_000)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


# --------------------------------------------------------------------------- Data, Vectorize, Fine-tune, job panel


def holidays_folder(root: Path, groups: int = 3, per_group: int = 3) -> Path:
    """A small folder in the INRIA Holidays layout (``GGGGVV.jpg``, each group's ``VV=00`` its query)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for g in range(groups):
        for v in range(per_group):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"1{g:03d}{v:02d}.jpg")
    return root


def test_data_page_shows_compact_group_cards_without_holidays_hints_on_a_folder(with_runs):
    at = open_page("pages/data.py")
    assert not at.error
    grid = next(h.value for h in at.html if "data-simlab-open" in h.value).replace("<wbr>", "")
    assert grid.count('data-simlab-open="data:') == 36  # every image of the 12 groups: one page of cards
    assert all(f"g{g:03d} · 3 images" in grid for g in range(12))
    assert "★" not in grid and "query" not in grid  # a folder dataset has no query images
    assert at.text_input(key="group_filter").placeholder == "e.g. g000"
    assert not any("query" in c for c in texts(at.caption))
    at.selectbox(key="group_page_size").set_value(8).run()
    assert "page 1 of 2" in " ".join(texts(at.caption))
    at.number_input(key="group_page").set_value(2).run()
    grid = next(h.value for h in at.html if "data-simlab-open" in h.value).replace("<wbr>", "")
    assert grid.count('data-simlab-open="data:') == 12 and "g008 · 3 images" in grid and "g000 ·" not in grid


def test_data_page_marks_the_queries_of_a_holidays_folder(tmp_path, monkeypatch):
    folder = holidays_folder(tmp_path / "holidays")
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMLAB_DATASET", f"holidays:{folder}")
    at = open_page("pages/data.py")
    grid = next(h.value for h in at.html if "data-simlab-open" in h.value)
    assert grid.count("★ query") == 3  # one per group, outlined
    assert any("(★, outlined)" in c for c in texts(at.caption))


def test_vectorize_keys_tell_two_datasets_apart_and_the_map_has_a_legend(lab, tmp_path, monkeypatch):
    from simlab.data import load_dataset
    from simlab.vectors import vectorize

    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)
    other = write_group_folder(tmp_path / "other", n_groups=4, per_group=2, size=48, seed=9)
    with simlab_cache_at(cache):
        vectorize(load_dataset(f"folder:{other}"), "efficientnet_lite0", "random")
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    at = open_page("pages/vectorize.py")
    assert not at.error
    sets = at.dataframe[1].value
    assert len(sets) == 2 and sets["key"].nunique() == 2  # one backbone, two datasets: two keys
    assert sets["key"].str.split("/").str[0].nunique() == 1  # the same backbone configuration
    assert list(sets["dataset"]) == [lab["spec"], "another dataset"]  # this dataset first
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    groups = [t for t in spec["data"] if t.get("mode") == "markers"]
    assert len(groups) == 12 and {t["name"] for t in groups} == {f"g{g:03d}" for g in range(12)}
    styles = {(t["marker"]["color"], t["marker"]["symbol"]) for t in groups}
    assert len(styles) == 12  # a distinct colour (and symbol) per group
    assert spec["layout"].get("showlegend") is not False
    rows = sorted(row[0] for t in groups for row in values(t["customdata"]))
    assert rows == list(range(36))  # each point carries its row: a click or a lasso finds its image


def values(array) -> list:
    """A plotly JSON array as a list (plotly writes numpy arrays as base64 typed arrays)."""
    if isinstance(array, dict) and "bdata" in array:
        import base64

        flat = np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
        shape = [int(n) for n in str(array.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).tolist()
    return list(array or [])


def test_finetune_curves_fit_their_data_and_smooth_the_batches(lab, tmp_path, monkeypatch):
    from simlab.finetune.config import FinetuneConfig
    from simlab.finetune.train import run_finetune

    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)
    with simlab_cache_at(cache):
        result = run_finetune(FinetuneConfig(dataset=lab["spec"], mode="head", weights="random", epochs=1,
                                             batch_size=4), Store())
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    at = open_page("pages/finetune.py")
    assert not at.exception and at.slider(key="ft_smoothing").value == 0.6
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    layout, data = spec["layout"], spec["data"]
    assert layout["xaxis"]["range"][0] < 0 < 1 < layout["xaxis"]["range"][1] < 1.5  # one epoch: 0..1, epoch 0 whole
    assert layout["xaxis"]["dtick"] == 1
    accuracy = [v for t in data if t.get("xaxis") == "x2" for v in values(t["y"]) if v is not None]
    lo, hi = layout["yaxis2"]["range"]
    assert 0 <= lo <= min(accuracy) and max(accuracy) <= hi <= 1.02  # never an accuracy axis to 1.5
    names = {t.get("name") for t in data}
    assert {"training", "validation", "per batch (smoothed)"} <= names  # one legend for both, same chart
    smoothed = next(t for t in data if t.get("customdata") and "smoothed" in t.get("hovertemplate", ""))
    raw = [row[1] for row in values(smoothed["customdata"])]
    assert len(raw) > 1 and np.std(values(smoothed["y"])) <= np.std(raw)
    at.slider(key="ft_smoothing").set_value(0.0).run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    batch = next(t for t in spec["data"] if t.get("customdata") and "batch" in t.get("hovertemplate", ""))
    assert [row[1] for row in values(batch["customdata"])] == pytest.approx(values(batch["y"]))  # 0: the raw losses
    assert result["run_id"] in " ".join(t.get("name") or "" for t in spec["data"])
    assert not any("retrieval mAP" in t.get("hovertemplate", "") for t in spec["data"])  # a head has none


def test_a_siamese_runs_validation_map_is_drawn_beside_its_accuracy(lab, tmp_path, monkeypatch):
    from simlab.finetune.config import FinetuneConfig
    from simlab.finetune.train import run_finetune

    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)
    with simlab_cache_at(cache):
        store = Store()
        result = run_finetune(FinetuneConfig(dataset=lab["spec"], mode="siamese", weights="random", epochs=1,
                                             batch_size=8), store)
        stored = store.curves(result["run_id"])
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    at = open_page("pages/finetune.py")
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    (curve,) = [t for t in spec["data"] if "validation retrieval mAP" in t.get("hovertemplate", "")]
    expected = stored[stored.name == "val_map"].sort_values("epoch")
    assert curve["xaxis"] == "x2" and values(curve["x"]) == expected.epoch.tolist()  # epoch 0 (the start) and 1
    assert values(curve["y"]) == pytest.approx(expected.value.tolist())
    assert "validation retrieval mAP" in {t.get("name") for t in spec["data"]}  # in the legend
    assert "retrieval mAP" in spec["layout"]["annotations"][1]["text"]


def test_a_cancelled_job_shows_where_it_stopped(empty):
    store = Store(empty / "cache" / "simlab.db")
    job_id = store.add_job("vectorize", {"dataset": "x", "backbones": ["efficientnet_lite0"]})
    store.update_job(job_id, status="cancelled", started=time.time() - 5, finished=time.time(), done=3, total=10,
                     message="Stopped on request.", fields={"stage": "cancelled", "stopped_during": "12/40 images"})
    at = open_page("pages/vectorize.py")
    (bar,) = at.get("progress")
    assert bar.value == 30 and "Cancelled at 30%" in bar.text and "12/40 images" in bar.text
    assert any("was cancelled" in w for w in texts(at.warning))


def test_a_metric_declared_once_shows_on_compare_runs_and_the_report(lab, tmp_path, monkeypatch):
    """A metric added only to simlab.evaluate.METRICS (and stored by runs) is a Compare choice, a Runs column
    and a report heatmap: no page or table lists metric names of its own."""
    from simlab import evaluate
    from simlab.report.document import render_report

    cache = tmp_path / "cache"
    shutil.copytree(lab["cache"], cache)
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    monkeypatch.setenv("SIMLAB_DATASET", lab["spec"])
    monkeypatch.setattr(evaluate, "METRICS", (*evaluate.METRICS, evaluate.Metric(
        "brier", "Brier score", "mean squared error of P(same) on the test pairs", headline=True,
        higher_is_better=False)))
    store = Store()
    for i, summary in enumerate(lab["runs"]):
        run = store.get(summary["run_id"])
        store.update_run(run.id, metrics=run.metrics | {"brier": 0.1 + i / 100})

    at = open_page("pages/compare.py")
    assert "Brier score" in at.radio(key="compare_metric").options
    at.radio(key="compare_metric").set_value("brier").run()
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "Brier score"

    at = open_page("pages/runs.py")
    table = at.dataframe[0].value
    assert "brier" in table.columns and sorted(table["brier"].round(2)) == [0.1, 0.11, 0.12, 0.13]

    html = render_report(lab["spec"], errors=0)  # the heatmaps and leaderboard; no error cards (their maps)
    assert "Brier score" in html


def test_compare_draws_the_reliability_of_the_best_run(with_runs):
    at = open_page("pages/compare.py")
    assert "Are the probabilities honest?" in [h.value for h in at.subheader]
    run_ids = {r["run_id"] for r in with_runs["runs"]}
    picker = at.selectbox(key="compare_reliability_run")
    assert picker.value in run_ids and len(picker.options) == len(run_ids)
    labels = [m.label for m in at.metric]
    assert "Expected calibration error" in labels and "Brier score" in labels
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    reliability = [c for c in charts
                   if c["layout"].get("xaxis", {}).get("title", {}).get("text") == "predicted P(same)"]
    assert len(reliability) == 1 and reliability[0]["data"][0]["name"] == "perfectly calibrated"


def _blocks(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _blocks(child)


def test_finetune_form_takes_its_ranges_from_the_declarations_and_enter_does_not_start_a_run(with_runs):
    """Enter in the Epochs box used to submit the form and start minutes of training; ranges and defaults were
    the page's own (5 epochs on the page, 10 in the config; 0.5-5 negatives per positive, 0.25-10 declared)."""
    from simlab import options
    from simlab.finetune import FinetuneConfig

    at = open_page("pages/finetune.py")
    forms = [b.proto.form for b in _blocks(at._tree) if type(getattr(b, "proto", None)).__name__ == "Block"
             and b.proto.WhichOneof("type") == "form"]
    assert len(forms) == 1 and forms[0].enter_to_submit is False
    epochs = at.number_input(key="ft_epochs")
    assert epochs.value == FinetuneConfig().epochs == options.default("epochs")
    assert (epochs.min, epochs.max) == (options.option("epochs").widget["min_value"],
                                        options.option("epochs").widget["max_value"])
    ratio = at.number_input(key="ft_neg_ratio")
    assert (ratio.min, ratio.max) == (0.25, 10.0)  # simlab.options' negative_ratio widget range
