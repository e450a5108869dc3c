"""Likely label errors and label corrections: a real SQLite store with two runs on the same test pairs of real
image files; the corrected accuracy is checked against a count by hand, and the stored numbers never change."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from simlab.label_errors import against_label, corrected_labels, rescore, runs_on_same_pairs, suspect_labels
from simlab.store import Store
from simlab.store.corrections import Corrections


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Six small distinct image files."""
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def store(tmp_path, images) -> tuple[Store, list[str], pd.DataFrame]:
    """Two finished runs scored on the same five test pairs, and a third on other pairs."""
    s = Store(tmp_path / "simlab.db")
    im = images
    pairs = pd.DataFrame({"left_path": [im[0], im[0], im[2], im[3], im[4]],
                          "right_path": [im[1], im[2], im[3], im[4], im[5]],
                          "left_group": ["a", "a", "b", "b", "c"], "right_group": ["a", "b", "b", "c", "c"],
                          "label": [1, 0, 1, 0, 1]})
    probs = ([0.05, 0.10, 0.80, 0.70, 0.90], [0.15, 0.30, 0.60, 0.20, 0.95])
    ids = []
    for p in probs:
        run_id = s.add_run(dataset="folder:x", backbone="efficientnet_lite0", merge="dot", classifier="cosine")
        s.finish_run(run_id, {"accuracy": 0.0}, pairs.assign(prob=p))
        ids.append(run_id)
    other = s.add_run(dataset="folder:x", backbone="efficientnet_lite0", merge="l1", classifier="cosine")
    s.finish_run(other, {"accuracy": 0.0}, pairs.iloc[:3].assign(prob=[0.5, 0.5, 0.5]))
    return s, ids, pairs


def test_suspect_label_is_agreed_across_runs_on_the_same_pairs(store):
    s, (r1, r2), pairs = store
    assert runs_on_same_pairs(s, r1) == [r1, r2]
    got = suspect_labels(s, r1)
    # by hand: mean over the two runs of 1 - p (label same) or p (label different)
    expected = [(0.95 + 0.85) / 2, (0.10 + 0.30) / 2, (0.20 + 0.40) / 2, (0.70 + 0.20) / 2, (0.10 + 0.05) / 2]
    np.testing.assert_allclose(got["suspect"], expected)
    assert got["runs"].tolist() == [2] * 5
    assert got["runs_against"].tolist() == [2, 0, 0, 1, 0]
    assert got.sort_values("suspect", ascending=False).index[0] == 0  # both runs call pair 0 different
    np.testing.assert_allclose(against_label([1, 0], [0.2, 0.2]), [0.8, 0.2])


def test_a_corrected_label_rescored_without_retraining(store, tmp_path):
    s, (r1, _), pairs = store
    before_preds = s.predictions(r1)
    corrections = Corrections(s.path)
    from simlab.data import file_digest

    d = {p: file_digest(p) for p in set(pairs["left_path"]) | set(pairs["right_path"])}
    # pair 0 (labelled same) is marked wrong, from the other side (B, A): the same pair
    c = corrections.mark(pairs["right_path"][0], pairs["left_path"][0], d[pairs["right_path"][0]],
                         d[pairs["left_path"][0]], stored_label=1, wrong=True)
    assert c.label == 0 and c.verdict == "wrong"
    # pair 1's label (different) is confirmed: no change
    corrections.mark(pairs["left_path"][1], pairs["right_path"][1], d[pairs["left_path"][1]],
                     d[pairs["right_path"][1]], stored_label=0, wrong=False)

    result = rescore(s, r1, threshold=0.5, n_boot=10)
    # by hand, run 1 at 0.5: probs .05 .10 .80 .70 .90 -> predicted 0 0 1 1 1
    # stored labels 1 0 1 0 1: right on pairs 1, 2, 4 -> 3 / 5
    # corrected    0 0 1 0 1: right on pairs 0, 1, 2, 4 -> 4 / 5
    assert result["changed"] == 1 and result["n_test"] == 5
    assert result["original"]["accuracy"] == pytest.approx(3 / 5)
    assert result["corrected"]["accuracy"] == pytest.approx(4 / 5)
    labels, changed = corrected_labels(pairs, corrections.labels())
    assert labels.tolist() == [0, 0, 1, 0, 1] and changed.tolist() == [True, False, False, False, False]

    # nothing stored changed: the run's predictions, its labels
    pd.testing.assert_frame_equal(s.predictions(r1), before_preds)

    out = tmp_path / "corrections.csv"
    assert corrections.export_csv(out) == 2
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["verdict"], r["stored_label"], r["label"]) for r in rows] == [("wrong", "1", "0"), ("right", "0", "0")]
    assert {rows[0]["path_a"], rows[0]["path_b"]} == {pairs["left_path"][0], pairs["right_path"][0]}

    corrections.forget(d[pairs["left_path"][0]], d[pairs["right_path"][0]])
    assert rescore(s, r1, threshold=0.5, n_boot=10)["changed"] == 0
