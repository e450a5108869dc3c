"""Registry of pair classifiers, all with scikit-learn's manners (fit / predict_proba, seeded)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class SimilarityThreshold(ClassifierMixin, BaseEstimator):
    """The no-training baseline: one threshold on the pair's similarity, tuned on train.

    The similarity is the sum of the merged vector: the cosine for ``dot``, minus the distance
    for ``l1`` / ``l2`` (the sign is learned from the training pairs).
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def _score(self, X):
        return np.asarray(X, np.float64).sum(axis=1)

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        s = self._score(X)
        best = (-1.0, 1.0, 0.0)
        for sign in (1.0, -1.0):
            order = np.argsort(sign * s)
            ss, yy = (sign * s)[order], y[order]
            # predicting "same" above the cut: accuracy = negatives below + positives above
            neg_below = np.concatenate([[0], np.cumsum(yy == 0)])
            pos_above = np.concatenate([[0], np.cumsum((yy == 1)[::-1])])[::-1]
            acc = (neg_below + pos_above) / len(yy)
            k = int(np.argmax(acc))
            cut = ss[0] - 1 if k == 0 else (ss[k - 1] + ss[k]) / 2 if k < len(ss) else ss[-1] + 1
            if acc[k] > best[0]:
                best = (acc[k], sign, cut)
        _, self.sign_, self.threshold_ = best
        spread = np.std(s) or 1.0
        self.scale_ = spread / 10
        return self

    def predict_proba(self, X):
        z = (self.sign_ * self._score(X) - self.threshold_) / self.scale_
        p = 1 / (1 + np.exp(-np.clip(z, -50, 50)))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def build_head(input_dim: int, dropout: float = 0.2):
    """The 2017 study's neural head: Dense512-Dropout-ReLU-Dense128-Dropout-ReLU-Dense2(softmax)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((input_dim,)),
        layers.Dense(512), layers.Dropout(dropout), layers.Activation("relu"),
        layers.Dense(128), layers.Dropout(dropout), layers.Activation("relu"),
        layers.Dense(2, activation="softmax"),
    ], name="pair_head")


# Keras seeds process-wide (Python, NumPy and backend generators), so two heads training at once
# (grid cells run concurrently) would draw from each other's streams; one at a time keeps each
# fit reproducible from its random_state.
_KERAS_FIT = threading.Lock()


class KerasHead(ClassifierMixin, BaseEstimator):
    """The study's neural head on merged vectors: Adam, batch 32, 10 epochs, best validation loss kept.

    Inputs are standardised with the training mean and spread first.
    """

    def __init__(self, epochs: int = 10, batch_size: int = 32, learning_rate: float = 1e-3,
                 validation_fraction: float = 0.1, random_state: int | None = 0, verbose: int = 0):
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y, callbacks=None):
        with _KERAS_FIT:
            return self._fit(X, y, callbacks)

    def _fit(self, X, y, callbacks):
        import keras

        keras.utils.set_random_seed(self.random_state or 0)
        X = np.asarray(X, np.float32)
        y = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        self.model_ = build_head(X.shape[1])
        # Several steps per call to the compiled train function: the same batches, updates and
        # result, less per-step Python overhead.
        self.model_.compile(keras.optimizers.Adam(self.learning_rate), "sparse_categorical_crossentropy",
                            metrics=["accuracy"], steps_per_execution=16)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.epochs,
                                             restore_best_weights=True)
        self.history_ = self.model_.fit(
            (X - self.mean_) / self.scale_, y, batch_size=self.batch_size, epochs=self.epochs,
            validation_split=self.validation_fraction, shuffle=True, verbose=self.verbose,
            callbacks=[stop, *(callbacks or [])]).history
        return self

    def predict_proba(self, X):
        X = (np.asarray(X, np.float32) - self.mean_) / self.scale_
        return np.asarray(self.model_.predict(X, batch_size=1024, verbose=0), np.float64)

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)


def _logreg(random_state):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=random_state))


def _gnb(random_state):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def _linsvc(random_state, standardise: bool = True, C: float = 0.01):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # Standardised and regularised: with the study's defaults (raw inputs, C=1) liblinear hit its
    # 1,000 iterations without converging on wide l1/l2 merges, 4-7x slower and near chance there;
    # this is also 7-10 points more accurate on the demo's real vectors (benchmarks/README.md).
    svm = CalibratedClassifierCV(LinearSVC(C=C, random_state=random_state), cv=3)
    return make_pipeline(StandardScaler(), svm) if standardise else svm


def _rf(random_state):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=random_state)


def _xgboost(random_state, max_bin: int = 64):
    from xgboost import XGBClassifier

    from simlab.device import has_gpu

    # 64 histogram bins instead of 256: split finding scans bins x features at every node, so wide
    # merged vectors (1,280-4,096-d) train 3x faster, with the same accuracy and AUC (benchmarks/README.md).
    return XGBClassifier(tree_method="hist", max_bin=max_bin, device="cuda" if has_gpu() else "cpu", n_jobs=-1,
                         random_state=random_state, eval_metric="logloss")


@dataclass(frozen=True)
class Classifier:
    name: str
    make: Callable[[int], object]  # make(random_state) -> unfitted estimator
    label: str
    description: str
    params: dict = field(default_factory=dict)
    # the library's defaults, where simlab's own settings differ (what the 2017 study ran)
    make_defaults: Callable[[int], object] | None = None


CLASSIFIERS: dict[str, Classifier] = {c.name: c for c in (
    Classifier("cosine", lambda rs: SimilarityThreshold(random_state=rs), "Similarity threshold",
               "No training: one threshold on cosine similarity (dot) or distance (l1, l2), tuned on train."),
    Classifier("logreg", _logreg, "Logistic regression", "Standardised inputs, L2 penalty C=0.1."),
    Classifier("gnb", _gnb, "Gaussian naive Bayes", "scikit-learn defaults, as in the 2017 study."),
    Classifier("linsvc", _linsvc, "Linear SVM", "Standardised inputs, LinearSVC with C=0.01, probabilities calibrated by "
               "3-fold CV.", make_defaults=lambda rs: _linsvc(rs, standardise=False, C=1.0)),
    Classifier("rf", _rf, "Random forest", "100 trees, scikit-learn defaults."),
    Classifier("xgboost", _xgboost, "XGBoost", "Gradient-boosted trees, hist method (64 bins); on the GPU when there is "
               "one.", make_defaults=lambda rs: _xgboost(rs, max_bin=256)),
    Classifier("mlp", lambda rs: KerasHead(random_state=rs), "Neural head",
               "The study's head: Dense512-Dropout.2-ReLU-Dense128-Dropout.2-ReLU-Dense2, Adam, batch 32, "
               "10 epochs, best validation loss."),
)}


def get_classifier(name: str) -> Classifier:
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"Unknown classifier {name!r}. Choose one of: {', '.join(CLASSIFIERS)}") from None


def make_classifier(name: str, random_state: int = 0, library_defaults: bool = False):
    """A fresh, unfitted estimator for the named classifier; with ``library_defaults``, the
    library's own settings where simlab tunes them (LinearSVC, XGBoost), as the 2017 study ran them."""
    clf = get_classifier(name)
    return (clf.make_defaults if library_defaults and clf.make_defaults else clf.make)(random_state)
