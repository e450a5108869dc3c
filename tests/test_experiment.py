"""run_grid: cells trained concurrently give what one at a time gives; a stopped grid leaves no run behind."""

import numpy as np
import pytest

from helpers import write_group_folder
from simlab.experiment import GridConfig, grid_workers, run_grid
from simlab.progress import Cancelled
from simlab.store import Store

CLASSIFIERS = ["cosine", "logreg", "linsvc", "xgboost", "mlp"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return f"folder:{write_group_folder(tmp_path_factory.mktemp('grid') / 'ds', n_groups=16, per_group=3)}"


def grid(spec, store, workers, monkeypatch, **kwargs):
    monkeypatch.setenv("SIMLAB_GRID_WORKERS", str(workers))
    assert grid_workers() == workers
    config = GridConfig(dataset=spec, merges=["dot", "l1"], classifiers=CLASSIFIERS, weights="random")
    return list(run_grid(config, store, **kwargs))


def test_concurrent_cells_match_one_at_a_time(spec, tmp_cache, monkeypatch):
    one_store, two_store = Store(tmp_cache / "one.db"), Store(tmp_cache / "two.db")
    one = grid(spec, one_store, 1, monkeypatch)
    two = grid(spec, two_store, 2, monkeypatch)
    assert len(one) == len(two) == 2 * len(CLASSIFIERS)
    key = lambda r: (r["merge"], r["classifier"])  # noqa: E731
    assert sorted(map(key, one)) == sorted(map(key, two))
    by_cell = {key(r): r for r in one}
    for r in two:
        mine = by_cell[key(r)]
        assert r["accuracy"] == pytest.approx(mine["accuracy"]) and r["auc"] == pytest.approx(mine["auc"]), key(r)
        p1 = one_store.predictions(mine["run_id"])["prob"].to_numpy()
        p2 = two_store.predictions(r["run_id"])["prob"].to_numpy()
        np.testing.assert_allclose(p2, p1, atol=1e-5, err_msg=str(key(r)))
    assert {run.status for run in two_store.list_runs()} == {"done"}


def test_a_stopped_grid_keeps_finished_runs_and_leaves_none_running(spec, tmp_cache, monkeypatch):
    store = Store(tmp_cache / "stop.db")
    seen = []
    monkeypatch.setenv("SIMLAB_GRID_WORKERS", "2")
    config = GridConfig(dataset=spec, merges=["dot", "l1"], classifiers=CLASSIFIERS, weights="random")
    with pytest.raises(Cancelled, match="stopped on request"):
        for summary in run_grid(config, store, should_stop=lambda: bool(seen)):
            seen.append(summary)
    runs = store.list_runs()
    assert seen and len(runs) < 2 * len(CLASSIFIERS)
    assert "running" not in {r.status for r in runs}
    assert {r.id for r in runs if r.status == "done"} >= {r["run_id"] for r in seen}


def test_a_generator_closed_early_marks_its_unfinished_runs_failed(spec, tmp_cache, monkeypatch):
    store = Store(tmp_cache / "closed.db")
    monkeypatch.setenv("SIMLAB_GRID_WORKERS", "2")
    config = GridConfig(dataset=spec, merges=["dot", "l1"], classifiers=CLASSIFIERS, weights="random")
    results = run_grid(config, store)
    first = next(results)
    results.close()
    runs = {r.id: r for r in store.list_runs()}
    assert runs[first["run_id"]].status == "done"
    assert "running" not in {r.status for r in runs.values()}
    assert any(r.status == "failed" and "ended before this run finished" in (r.error or "")
               for r in runs.values())
