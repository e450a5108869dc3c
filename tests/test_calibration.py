"""Probabilities that mean something: the reliability numbers against a by-hand count, and calibration on
validation scenes making a grid run's P(same) closer to the truth on its test pairs than the raw scores."""

from __future__ import annotations

import numpy as np

from simlab.evaluate import reliability
from simlab.report.reliability import reliability_figure


def test_reliability_bins_counts_ece_and_brier_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.55, 0.65, 0.95, 0.95, 1.0])
    rel = reliability(y, p, n_bins=10)
    assert list(rel.bins["count"]) == [1, 2, 1, 1, 3]  # bins [0,.1) [.1,.2) [.5,.6) [.6,.7) [.9,1]
    np.testing.assert_allclose(rel.bins["frac_same"], [0, 0.5, 1, 1, 2 / 3])
    np.testing.assert_allclose(rel.bins["mean_prob"], [0.05, 0.15, 0.55, 0.65, (0.95 + 0.95 + 1.0) / 3])
    gaps = [0.05, 0.35, 0.45, 0.35, abs((0.95 + 0.95 + 1.0) / 3 - 2 / 3)]
    assert abs(rel.ece - np.dot([1, 2, 1, 1, 3], gaps) / 8) < 1e-12
    assert abs(rel.brier - np.mean((p - y) ** 2)) < 1e-12
    fig = reliability_figure(rel)
    assert len(fig.data) == 2 and list(fig.data[1].x) == list(rel.bins["mean_prob"])
    assert "ECE" in fig.layout.title.text


def test_a_perfectly_calibrated_predictor_has_a_small_error():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    assert reliability(y, p).ece < 0.02
    assert reliability(y, np.clip(p * 3, 0, 1)).ece > 0.1  # overconfident
