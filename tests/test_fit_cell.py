"""One fit per run: the grid, re-ranking and "run again" all fit through simlab.fitting.fit_cell.

Real parts: the bundled EfficientNet-Lite0 (random weights for the re-rank check, its real bundled
weights for the calibration check), real scikit-learn and XGBoost, a real SQLite store.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import simlab.search as search
from helpers import stranger_image, write_group_folder
from simlab.classifiers import make_classifier
from simlab.data import load_dataset
from simlab.experiment import GridConfig, run_grid
from simlab.fitting import Calibration, fit_cell, fit_run
from simlab.merge import merge_pairs
from simlab.protocol import Protocol
from simlab.runspec import RunSpec, fused_name, split_backbone
from simlab.store import Store
from simlab.vectors import compute_vectors, vectorize

BACKBONE = "efficientnet_lite0"


def _keys(paths, pairs) -> list[tuple[str, str]]:
    paths = np.asarray(paths)
    return list(zip(paths[pairs.left], paths[pairs.right]))


@pytest.mark.parametrize("classifier", ["linsvc", "xgboost"])
def test_rerank_refits_exactly_the_stored_library_defaults_run(tmp_cache, tmp_path, classifier):
    root = write_group_folder(tmp_path / "photos", n_groups=10, per_group=3)
    store = Store()
    config = GridConfig(dataset=f"folder:{root}", backbones=[BACKBONE], merges=["l1"], classifiers=[classifier],
                        weights="random", library_defaults=True)
    (summary,) = list(run_grid(config, store))
    run_id = summary["run_id"]
    stored = store.predictions(run_id)

    cell = search.run_classifier(run_id, store)
    assert cell.spec.library_defaults and cell.threshold == 0.5  # the study's rule, as stored
    vs = vectorize(load_dataset(config.dataset), BACKBONE, "random")
    test = Protocol.from_config(store.get(run_id).config).pairs(vs.groups).test_pairs
    refit = pd.DataFrame(_keys(vs.paths, test), columns=["left_path", "right_path"]).assign(refit=cell.test_prob)
    both = stored.merge(refit, on=["left_path", "right_path"])
    assert len(both) == len(stored) == len(test)
    np.testing.assert_allclose(both["refit"], both["prob"], rtol=0, atol=1e-9)

    if classifier != "linsvc":  # XGBoost's bin count makes no difference on so few training pairs
        return
    # The refit the search used before ignored library_defaults: a different model, different numbers.
    train = Protocol.from_config(store.get(run_id).config).pairs(vs.groups).train_pairs
    tuned = make_classifier(classifier, random_state=0).fit(
        merge_pairs(vs.vectors, train.left, train.right, "l1"), train.label)
    other = tuned.predict_proba(merge_pairs(vs.vectors, test.left, test.right, "l1"))[:, 1]
    assert np.abs(other - cell.test_prob).max() > 1e-3


def test_calibration_is_monotone_and_maps_scores_into_probabilities():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(200), np.zeros(200)]
    scores = np.clip(np.r_[rng.normal(0.9, 0.05, 200), rng.normal(0.85, 0.05, 200)], 0, 1)  # overconfident
    cal = Calibration.fit(labels, scores)
    assert cal.a > 0 and not cal.identity
    out = cal(np.sort(scores))
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    # An overconfident score of 0.9 means much less than 90% here: calibration pulls it towards the truth.
    assert cal(np.array([0.9]))[0] < 0.8
    assert Calibration.fit(np.ones(5), np.linspace(0, 1, 5)).identity  # one class: nothing to learn


def test_a_calibrated_run_keeps_unrelated_images_below_its_threshold(tmp_cache, tmp_path):
    root = write_group_folder(tmp_path / "photos", n_groups=16, per_group=4, size=128)
    dataset = load_dataset(f"folder:{root}")
    vs = vectorize(dataset, BACKBONE, "imagenet")
    spec = RunSpec(BACKBONE, "dot", "logreg", dataset=dataset.spec)
    cell = fit_run(spec, vs.vectors, vs.groups)
    assert not cell.calibration.identity and cell.n_val > 0
    strangers = []
    for i in range(20):
        path = tmp_path / "strangers" / f"s{i}.png"
        path.parent.mkdir(exist_ok=True)
        stranger_image(i).save(path)
        strangers.append(str(path))
    vectors, errors = compute_vectors(strangers, BACKBONE, "imagenet")
    assert not any(errors)
    both = np.vstack([vectors, vs.vectors])
    n = len(strangers)
    prob = cell.predict(both, np.arange(n), n + np.arange(n) % len(vs.vectors))  # stranger vs a dataset image
    assert prob.max() < cell.threshold, (prob.max(), cell.threshold)
    assert not any(cell.close_match(p, 0.0) for p in prob)


def test_fit_cell_without_validation_keeps_half_and_no_calibration(tmp_cache):
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(12)], 3)
    vectors = rng.standard_normal((12, 16))[np.repeat(np.arange(12), 3)] + 0.3 * rng.standard_normal((36, 16))
    spec = RunSpec("efficientnet_lite0", "dot", "logreg")
    cell = fit_cell(spec, vectors, spec.protocol.pairs(groups))
    assert cell.threshold == 0.5 and cell.calibration.identity and cell.n_val == 0


def test_run_spec_round_trips_a_stored_grid_config_and_owns_fused_names():
    config = GridConfig(backbones=["efficientnet_lite0"], merges=["l1"], classifiers=["xgboost"], seed=3,
                        library_defaults=True)
    from dataclasses import asdict

    stored = asdict(config)
    spec = RunSpec.from_dict(stored)
    assert (spec.backbone, spec.merge, spec.classifier, spec.protocol.seed) == ("efficientnet_lite0", "l1",
                                                                                "xgboost", 3)
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.key("fp") == spec.key("fp") != spec.replace(merge="dot").key("fp")
    assert spec.title() == "efficientnet_lite0 · l1 · XGBoost"
    fused = fused_name(["efficientnet_lite0", "efficientnet_lite2"])
    assert split_backbone(fused) == ["efficientnet_lite0", "efficientnet_lite2"]
    assert RunSpec(fused, "dot", "cosine").backbones() == ["efficientnet_lite0", "efficientnet_lite2"]
    with pytest.raises(ValueError, match="classifier must be"):
        RunSpec("efficientnet_lite0", "dot", "nope").validate()
