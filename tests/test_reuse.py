"""One run per configuration: a grid whose cells are stored already is not stored twice unless asked, and the
demo's button offers the stored results. Real grid (bundled backbone, random weights), real SQLite, AppTest."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from streamlit.testing.v1 import AppTest

from helpers import write_group_folder
from simlab import jobs
from simlab.experiment import GridConfig, run_grid, stored_cells
from simlab.report.tables import one_per_config, runs_table
from simlab.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_a_grid_started_twice_stores_one_set_unless_run_again(tmp_cache, tmp_path):
    root = write_group_folder(tmp_path / "photos", n_groups=8, per_group=3, size=64)
    store = Store()
    config = GridConfig(dataset=f"folder:{root}", weights="random", merges=["dot"], classifiers=["cosine", "logreg"],
                        reuse=True)
    first = list(run_grid(config, store))
    assert len(first) == 2 and not any(r.get("existing") for r in first)
    again = list(run_grid(config, store))
    assert {r["run_id"] for r in again} == {r["run_id"] for r in first} and all(r["existing"] for r in again)
    assert {r["run_id"]: r["accuracy"] for r in again} == {r["run_id"]: r["accuracy"] for r in first}
    assert len(store.list_runs()) == 2

    bigger = list(run_grid(GridConfig(**(asdict(config) | {"merges": ["dot", "l1"]})), store))
    assert sum(bool(r.get("existing")) for r in bigger) == 2 and len(store.list_runs()) == 4  # only the new cells

    anyway = list(run_grid(GridConfig(**(asdict(config) | {"reuse": False})), store))
    assert not any(r.get("existing") for r in anyway) and len(store.list_runs()) == 6
    table = runs_table(store.list_runs())
    assert sorted(table["copies"]) == [1, 1, 2, 2, 2, 2]
    assert len(one_per_config(table)) == 4
    other_seed = GridConfig(**(asdict(config) | {"seed": 1}))
    assert stored_cells(other_seed, store.list_runs(), store.list_runs()[0].fingerprint) == {}


def _store_demo_runs(store: Store) -> None:
    """The demo grid's nine cells as finished runs (as a first click on the button leaves them)."""
    config = GridConfig(dataset="demo")
    for backbone, merge, classifier in config.cells():
        cell = asdict(config) | {"backbones": [backbone], "merges": [merge], "classifiers": [classifier]}
        run_id = store.add_run(dataset="demo", fingerprint="fp-demo", backbone=backbone, merge=merge,
                               classifier=classifier, split=config.split, seed=config.seed, config=cell)
        store.finish_run(run_id, {"accuracy": 0.9, "auc": 0.95})


def test_the_demo_button_offers_the_stored_runs_before_running_them_again(tmp_cache, monkeypatch):
    store = Store()
    _store_demo_runs(store)
    monkeypatch.setenv("SIMLAB_DATASET", "demo")
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    demo = next(b for b in at.button if b.label == "Run the demo experiment")
    demo.click().run()
    assert not at.exception
    assert any("9 of these 9 runs are already stored" in m.value for m in at.markdown)
    assert store.list_jobs() == []  # nothing started: the stored results are offered
    assert [b.label for b in at.button if b.key and b.key.startswith("home_demo_")] == [
        "Open the results", "Run again anyway", "Cancel"]

    at.button(key="home_demo_again").click().run()
    (job,) = store.list_jobs()
    try:
        assert job.kind == "demo" and job.params == {"reuse": False}
    finally:
        jobs.cancel_job(job.id)
    assert len(store.list_runs()) == 9
