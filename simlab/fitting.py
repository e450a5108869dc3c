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
from simlab.protocol import SplitPairs, validation_pairs
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
    """Platt scaling fitted on validation pairs: P = 1 / (1 + exp(-(a * x + b))), ``x`` the logit of a
    classifier's score (``logit``) or a plain number such as a cosine. The identity where there were no
    validation pairs (or the score does not rise with "same")."""

    a: float = 1.0
    b: float = 0.0
    logit: bool = True

    @classmethod
    def fit(cls, labels, scores, logit: bool = True) -> Calibration:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels).astype(int)
        if len(np.unique(y)) < 2:
            return cls(logit=logit)
        x = _logit(scores) if logit else np.asarray(scores, np.float64)
        model = LogisticRegression(C=1e4, max_iter=1000).fit(x.reshape(-1, 1), y)
        a = float(model.coef_[0, 0])
        if not a > 0:  # a score that does not rise with "same" cannot be calibrated monotonically: keep it
            return cls(logit=logit)
        return cls(a, float(model.intercept_[0]), logit)

    @property
    def identity(self) -> bool:
        return self.a == 1.0 and self.b == 0.0

    def __call__(self, scores) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        if self.identity:
            return scores
        x = _logit(scores) if self.logit else scores
        return 1.0 / (1.0 + np.exp(-(self.a * x + self.b)))

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "on": "logit" if self.logit else "value"}


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
    #: What a same-scene pair looks like to this run, from its validation positives (5th percentiles): their
    #: calibrated P(same) and the cosine of their two vectors. A match below both is "no close match".
    positive_floor: float | None = None
    cosine_floor: float | None = None
    #: The least cosine of any same-scene pair the classifier was trained on, and P(same) calibrated from the
    #: cosine alone. Below that floor the classifier extrapolates (a stranger can get P 1.00 from a head that
    #: never saw such a pair): there its P(same) is capped by what the cosine says.
    support_floor: float | None = None
    cosine_calibration: Calibration | None = None
    timings: dict = field(default_factory=dict)

    def predict(self, vectors, left, right) -> np.ndarray:
        """Calibrated P(same) of the pairs (``left[i]``, ``right[i]``) of rows of ``vectors``."""
        left, right = np.asarray(left), np.asarray(right)
        X = merge_pairs(vectors, left, right, self.spec.merge)
        return self.probability(self.model.predict_proba(X)[:, 1], cosines(vectors, left, right))

    def probability(self, scores, cos) -> np.ndarray:
        """P(same) from the classifier's raw ``scores`` and the pairs' vector cosines ``cos``: calibrated, and
        capped by the cosine's own calibration where the pair is less alike than any trained positive."""
        prob = self.calibration(scores)
        if self.support_floor is None or self.cosine_calibration is None:
            return prob
        outside = np.asarray(cos) < self.support_floor
        return np.where(outside, np.minimum(prob, self.cosine_calibration(cos)), prob)

    def summary(self) -> dict:
        """What the store keeps of the fit besides the metrics: the calibrations and the floors."""
        return {"calibration": self.calibration.to_dict(), "positive_floor": self.positive_floor,
                "cosine_floor": self.cosine_floor, "support_floor": self.support_floor,
                "cosine_calibration": self.cosine_calibration.to_dict() if self.cosine_calibration else None}

    def close_match(self, prob: float, cosine: float) -> bool | None:
        """Whether a pair with calibrated ``prob`` and vector ``cosine`` looks like this run's validation
        positives: P(same) at or above both their floor and the threshold, or a cosine at or above theirs.
        None when the run had no validation positives to compare with."""
        if self.positive_floor is None:
            return None
        return bool(prob >= max(self.positive_floor, self.threshold)
                    or (self.cosine_floor is not None and cosine >= self.cosine_floor))


def cosines(vectors, left, right) -> np.ndarray:
    """Cosine similarity of the vector pairs (``left[i]``, ``right[i]``)."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", v[np.asarray(left)], v[np.asarray(right)])


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
    cell = FittedCell(spec, None, Calibration(), 0.5, np.empty(0), None)
    if validation is not None and not spec.uses_study_rule:
        inner, val = validation.train_pairs, validation.test_pairs
        chooser = fit_classifier(name, merge_pairs(vectors, inner.left, inner.right, merge), inner.label, seed, ray,
                                 spec.library_defaults)
        scores = chooser.predict_proba(merge_pairs(vectors, val.left, val.right, merge))[:, 1]
        val_cos = cosines(vectors, val.left, val.right)
        train_cos = cosines(vectors, train.left, train.right)
        cell.calibration = Calibration.fit(val.label, scores)
        cell.cosine_calibration = Calibration.fit(val.label, val_cos, logit=False)
        cell.support_floor = float(train_cos[train.label == 1].min())
        val_prob = cell.probability(scores, val_cos)
        cell.threshold = best_threshold(val.label, val_prob)
        positives = val.label == 1
        cell.positive_floor = float(np.quantile(val_prob[positives], 0.05))
        cell.cosine_floor = float(np.quantile(val_cos[positives], 0.05))
        cell.n_val = len(val)
    elif not spec.uses_study_rule:
        cell.n_val = 0  # too few training scenes to carve validation scenes from
    t_val = time.perf_counter()
    cell.model = fit_classifier(name, X_train, train.label, seed, ray, spec.library_defaults)
    t2 = time.perf_counter()
    cell.test_prob = cell.probability(cell.model.predict_proba(X_test)[:, 1], cosines(vectors, test.left, test.right))
    t3 = time.perf_counter()
    cell.timings = {"merge": t1 - t0, "threshold": t_val - t1, "fit": t2 - t_val, "predict": t3 - t2, "total": t3 - t0}
    cell.threshold = float(cell.threshold)
    return cell


def fit_run(spec: RunSpec, vectors, groups, index=None, ray: str | None = None) -> FittedCell:
    """Fit ``spec`` from scratch on a dataset's ``vectors`` and ``groups``, exactly as the grid fitted it: the
    protocol's pairs (hard negatives mined with ``index`` where the protocol asks for them), the validation
    pairs carved from the training scenes (none under the study's rule), then :func:`fit_cell`."""
    protocol = spec.protocol
    pairs = protocol.pairs(groups, vectors, index=index)
    validation = None if spec.uses_study_rule else validation_pairs(protocol, pairs, groups, vectors)
    return fit_cell(spec, vectors, pairs, validation, ray)
