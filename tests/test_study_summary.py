"""The study summary (cells reproduced, mean difference, published inside our interval, group vs pair):
one function, checked against a count made by hand on a small table of runs."""

from __future__ import annotations

import pandas as pd
import pytest

from simlab.reference import published_accuracies
from simlab.report.tables import StudySummary, study_summary, study_table

FP = "fp-demo"


def run(i, cell, split, accuracy, lo, hi, fingerprint=FP, weights="imagenet", kind="grid") -> dict:
    backbone, merge, classifier = cell
    return {"id": f"r{i}", "fingerprint": fingerprint, "weights": weights, "kind": kind, "split": split,
            "backbone": backbone, "merge": merge, "classifier": classifier, "accuracy": accuracy,
            "accuracy_lo": lo, "accuracy_hi": hi, "n_test": 100}


def test_the_summary_matches_a_count_by_hand():
    pub = published_accuracies()
    cells = [tuple(r) for r in pub[["backbone", "merge", "classifier"]].head(3).itertuples(index=False)]
    published = dict(zip(cells, pub["accuracy"].head(3)))  # .847, .805, .917
    frame = pd.DataFrame([  # newest first, as runs_table orders them
        run(1, cells[0], "pair", published[cells[0]] + 0.02, published[cells[0]] - 0.01, published[cells[0]] + 0.05),
        run(2, cells[1], "pair", published[cells[1]] - 0.04, published[cells[1]] - 0.07, published[cells[1]] - 0.01),
        run(3, cells[0], "pair", 0.10, 0.05, 0.15),                              # older run of cell 0: ignored
        run(4, cells[0], "group", published[cells[0]] - 0.03, 0.0, 1.0),        # cell 0 on the group split
        run(5, cells[2], "pair", 0.5, 0.4, 0.6, fingerprint="other"),           # another dataset: ignored
        run(6, cells[2], "pair", 0.5, 0.4, 0.6, weights="random"),              # random weights: ignored
        run(7, ("efficientnet_lite0", "dot", "logreg"), "pair", 0.9, 0.8, 1.0),  # no published cell
    ])
    summary = study_summary(study_table(frame, FP))
    # by hand: cells 0 and 1 reproduced; differences +0.02 and -0.04; cell 0's interval holds the published
    # number, cell 1's does not; cell 0 alone ran on both splits: (p0 - 0.03) - (p0 + 0.02) = -0.05
    assert summary == StudySummary(published=60, reproduced=2, mean_difference=pytest.approx(-0.01, abs=1e-9),
                                   within=1, group_vs_pair=pytest.approx(-0.05, abs=1e-9))
    assert summary.tiles() == [
        ("Cells reproduced", "2 / 60", ""),
        ("Mean difference", "-0.010", "Ours (pair split) minus published"),
        ("Published inside our 95% CI", "1 / 2", ""),
        ("Group split vs pair split", "-0.050",
         "Mean accuracy on held-out scenes minus the leaky pair split: what the leak was worth.")]


def test_no_group_run_no_group_tile_and_no_cell_no_summary():
    pub = published_accuracies()
    cell = tuple(pub[["backbone", "merge", "classifier"]].iloc[5])
    frame = pd.DataFrame([run(1, cell, "pair", 0.9, 0.0, 1.0)])
    summary = study_summary(study_table(frame, FP))
    assert summary.reproduced == 1 and summary.within == 1 and summary.group_vs_pair is None
    assert [label for label, _, _ in summary.tiles()] == ["Cells reproduced", "Mean difference",
                                                          "Published inside our 95% CI"]
    assert study_summary(study_table(frame, "another fingerprint")) is None
