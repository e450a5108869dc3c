"""A run's operating threshold: chosen on validation scenes carved from its training scenes, stored with it.

The 2017 study's settings keep P(same) >= 0.5; the stored accuracy is the one at the stored threshold; a
store written before thresholds were kept reads 0.5.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from helpers import write_group_folder
from simlab.data import load_dataset
from simlab.evaluate import best_threshold, metric_scope, pair_metrics
from simlab.experiment import VALIDATION_SIZE, GridConfig, run_grid, validation_pairs
from simlab.protocol import Protocol
from simlab.store import MIGRATIONS, Store


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return f"folder:{write_group_folder(tmp_path_factory.mktemp('thr') / 'ds', n_groups=24, per_group=3)}"


def test_best_threshold_maximises_accuracy_and_prefers_the_cut_nearest_half():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.75, 0.8, 0.9])
    t = best_threshold(y, p)
    assert 0.7 < t <= 0.75 and t == pytest.approx(0.725)
    assert pair_metrics(y, p, t)["accuracy"] == 1.0
    # every cut between 0.2 and 0.8 is equally good here: the one nearest 0.5 is kept
    y2, p2 = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert best_threshold(y2, p2) == pytest.approx(0.5)
    assert best_threshold([1, 1], [0.3, 0.4]) == 0.5  # one label: nothing to choose on


def test_validation_pairs_never_touch_the_test_scenes(spec, tmp_cache):
    groups = np.asarray(load_dataset(spec).groups)
    protocol = Protocol(split="group", test_size=0.3, seed=3)
    split = protocol.pairs(groups)
    val = validation_pairs(protocol, split, groups)
    assert val is not None
    held = np.flatnonzero(protocol.held_out(groups))
    images = np.concatenate([val.pairs.left, val.pairs.right])
    assert not np.isin(images, held).any()  # no validation or inner-training image is a test image
    inner, check = val.train_pairs, val.test_pairs
    inner_groups = set(groups[np.concatenate([inner.left, inner.right])])
    val_groups = set(groups[np.concatenate([check.left, check.right])])
    assert inner_groups.isdisjoint(val_groups)  # validation scenes are held out from the inner fit
    n_train_groups = len(set(groups)) - len(set(groups[held]))
    assert len(val_groups) == round(VALIDATION_SIZE * n_train_groups)
    share = split.pairs.label[split.train].mean()
    for side in (inner, check):
        assert set(side.label.tolist()) == {0, 1}
        assert side.label.mean() == pytest.approx(share, abs=0.05)  # the training pairs' balance


def test_on_the_pair_split_no_validation_pair_is_a_test_pair(spec, tmp_cache):
    groups = np.asarray(load_dataset(spec).groups)
    protocol = Protocol(split="pair", test_size=0.3, negatives="same_left", seed=1)
    split = protocol.pairs(groups)
    val = validation_pairs(protocol, split, groups)
    assert val is not None
    key = lambda left, right: set(zip(np.minimum(left, right).tolist(), np.maximum(left, right).tolist()))  # noqa: E731
    tests = key(split.test_pairs.left, split.test_pairs.right)
    both = key(val.pairs.left[val.train | val.test], val.pairs.right[val.train | val.test])
    assert both and not both & tests


def test_runs_store_the_threshold_they_are_scored_at(spec, tmp_cache):
    store = Store()
    config = GridConfig(dataset=spec, merges=["dot", "l1"], classifiers=["cosine", "logreg", "xgboost"],
                        weights="random", seed=2)
    results = list(run_grid(config, store))
    assert len(results) == 6
    thresholds = []
    for summary in results:
        run = store.get(summary["run_id"])
        assert run.threshold == run.metrics["threshold"]
        assert run.metrics["n_val"] > 0 and "chosen on" in run.threshold_rule
        preds = store.predictions(run.id)
        again = pair_metrics(preds["label"], preds["prob"], run.threshold, seed=config.seed)
        for name in ("accuracy", "f1", "tp", "fp", "accuracy_lo"):
            assert run.metrics[name] == pytest.approx(again[name]), name
        thresholds.append(run.threshold)
    assert any(t != 0.5 for t in thresholds)  # chosen, not the default

    study = GridConfig(dataset=spec, merges=["dot"], classifiers=["logreg"], weights="random", seed=2,
                       library_defaults=True)
    [summary] = list(run_grid(study, store))
    run = store.get(summary["run_id"])
    assert run.threshold == 0.5 and "n_val" not in run.metrics and "2017" in run.threshold_rule


def test_a_store_from_before_thresholds_reads_half(tmp_path):
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:
        for version, migration in enumerate(MIGRATIONS[:3]):
            migration(db)
            db.execute(f"PRAGMA user_version = {version + 1}")
        db.execute("INSERT INTO runs (id, created, status, kind, metrics, config) VALUES ('r_old', 1700000000, "
                   "'done', 'pair', '{\"accuracy\": 0.8}', '{}')")  # every stored run has its creation time
    run = Store(path).get("r_old")
    assert run.threshold == 0.5
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT threshold FROM runs WHERE id = 'r_old'").fetchone()[0] == 0.5


def test_the_accuracy_scope_names_the_stored_threshold():
    scope = metric_scope("accuracy")
    assert "stored threshold" in scope and "validation scenes" in scope and "never on the test pairs" in scope
