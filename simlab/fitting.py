"""Fitting one run: the single place a pair classifier is trained, its threshold chosen and its P(same)
calibrated. The grid, re-ranking in Search and "run again" all call :func:`fit_cell`, so a re-rank uses
exactly the model that was scored.

>>> cell = fit_cell(spec, vectors, split_pairs, validation)
>>> cell.predict(vectors, left, right)    # calibrated P(same) of any pairs of these vectors
>>> cell.threshold, cell.test_prob        # the operating threshold, P(same) of the run's test pairs

With validation pairs (scenes carved from the training scenes, :func:`simlab.experiment.validation_pairs`)
a first classifier is fitted on the validation split's training side; its scores on the validation pairs
fit a sigmoid calibration (Platt scaling: a monotone map, so ranking and ROC AUC are unchanged) and the
threshold that classifies the most validation pairs right. The classifier is then fitted again on all
training pairs and its scores go through that calibration. Runs with the 2017 study's settings keep the
study's rule: raw P(same) >= 0.5.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from simlab.classifiers import make_classifier
from simlab.distributed import ray_address, ray_fit_xgboost
from simlab.evaluate import best_threshold
from simlab.merge import merge_pairs
from simlab.protocol import SplitPairs
from simlab.runspec import RunSpec

#: Scores are clipped this far inside (0, 1) before the logit, so 0 and 1 (trees) stay finite.
_EPS = 1e-6


def fit_classifier(clf_name: str, X, y, seed: int, ray: str | None = None, library_defaults: bool = False):
    """A fitted classifier; XGBoost trains through Ray Train when Ray is on."""
    if clf_name == "xgboost" and (address := ray_address(ray)):
        return ray_fit_xgboost(X, y, {"random_state": seed} | ({"max_bin": 256} if library_defaults else {}), address)
    return make_classifier(clf_name, random_state=seed, library_defaults=library_defaults).fit(X, y)


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling fitted on validation pairs: P = 1 / (1 + exp(-(a * logit(score) + b))). The identity
    (a=1, b=0) where there were no validation pairs."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, labels, scores) -> Calibration:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels).astype(int)
        if len(np.unique(y)) < 2:
            return cls()
        model = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(scores).reshape(-1, 1), y)
        a = float(model.coef_[0, 0])
        if not a > 0:  # a score that does not rise with "same" cannot be calibrated monotonically: keep it
            return cls()
        return cls(a, float(model.intercept_[0]))

    @property
    def identity(self) -> bool:
        return self.a == 1.0 and self.b == 0.0

    def __call__(self, scores) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        if self.identity:
            return scores
        return 1.0 / (1.0 + np.exp(-(self.a * _logit(scores) + self.b)))

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b}


@dataclass
class FittedCell:
    """A fitted run: the classifier, its calibration and threshold, P(same) of the test pairs, and what the
    validation positives looked like (the floor below which a match is "no close match")."""

    spec: RunSpec
    model: object
    calibration: Calibration
    threshold: float
    test_prob: np.ndarray
    n_val: int | None
    positive_floor: float | None = None  # 5th percentile of the validation positives' calibrated P(same)
    timings: dict = field(default_factory=dict)

    def predict(self, vectors, left, right) -> np.ndarray:
        """Calibrated P(same) of the pairs (``left[i]``, ``right[i]``) of rows of ``vectors``."""
        X = merge_pairs(vectors, np.asarray(left), np.asarray(right), self.spec.merge)
        return self.calibration(self.model.predict_proba(X)[:, 1])

    def summary(self) -> dict:
        """What the store keeps of the fit besides the metrics: threshold, calibration, positive floor."""
        return {"calibration": self.calibration.to_dict(), "positive_floor": self.positive_floor}


def fit_cell(spec: RunSpec, vectors, pairs: SplitPairs, validation: SplitPairs | None = None,
             ray: str | None = None) -> FittedCell:
    """Fit the run ``spec`` on ``vectors`` (one row per image) and the training side of ``pairs``; score its
    test side. ``validation`` (None under the study's rule, or when the scenes are too few) chooses the
    threshold and the calibration, never the test pairs."""
    seed, merge, name = spec.protocol.seed, spec.merge, spec.classifier
    t0 = time.perf_counter()
    train, test = pairs.train_pairs, pairs.test_pairs
    X_train = merge_pairs(vectors, train.left, train.right, merge)
    X_test = merge_pairs(vectors, test.left, test.right, merge)
    t1 = time.perf_counter()
    calibration, threshold, n_val, floor = Calibration(), 0.5, None, None
    if validation is not None and not spec.uses_study_rule:
        inner, val = validation.train_pairs, validation.test_pairs
        chooser = fit_classifier(name, merge_pairs(vectors, inner.left, inner.right, merge), inner.label, seed, ray,
                                 spec.library_defaults)
        scores = chooser.predict_proba(merge_pairs(vectors, val.left, val.right, merge))[:, 1]
        calibration = Calibration.fit(val.label, scores)
        val_prob = calibration(scores)
        threshold = best_threshold(val.label, val_prob)
        floor = float(np.quantile(val_prob[val.label == 1], 0.05))
        n_val = len(val)
    elif not spec.uses_study_rule:
        n_val = 0  # too few training scenes to carve validation scenes from
    t_val = time.perf_counter()
    model = fit_classifier(name, X_train, train.label, seed, ray, spec.library_defaults)
    t2 = time.perf_counter()
    prob = calibration(model.predict_proba(X_test)[:, 1])
    t3 = time.perf_counter()
    return FittedCell(spec, model, calibration, float(threshold), prob, n_val, floor,
                      {"merge": t1 - t0, "threshold": t_val - t1, "fit": t2 - t_val, "predict": t3 - t2,
                       "total": t3 - t0})
