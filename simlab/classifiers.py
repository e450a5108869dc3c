"""Registry of pair classifiers, all with scikit-learn's manners (fit / predict_proba, seeded).

The two estimators written here pass scikit-learn's own ``check_estimator`` suite
(``tests/test_estimator_checks.py``); both are binary only and say so in their tags.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from simlab import options


def binary_labels(y) -> tuple[np.ndarray, np.ndarray]:
    """``(classes_, index)`` for a two-class target, ``index`` 1 where ``y`` is the second class.

    Anything else (continuous, multiclass, multilabel, one class only) raises a ValueError before
    any model sees the labels."""
    y_type = type_of_target(y, input_name="y", raise_unknown=True)
    if y_type != "binary":
        raise ValueError(f"Only binary classification is supported. The type of the target is {y_type}.")
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"Training needs both classes; y holds one class only ({classes[0]!r}).")
    return classes, index


class _BinaryClassifier(ClassifierMixin, BaseEstimator):
    """Tags shared by simlab's own estimators: two classes, dense finite inputs."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class SimilarityThreshold(_BinaryClassifier):
    """The no-training baseline: one threshold on the pair's similarity, tuned on train.

    The similarity is the sum of the merged vector: the cosine for ``dot``, minus the distance
    for ``l1`` / ``l2`` (the sign is learned from the training pairs).
    """

    def __init__(self, random_state: int | None = None):
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_, y = binary_labels(y)
        s = X.sum(axis=1)
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
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        z = (self.sign_ * X.sum(axis=1) - self.threshold_) / self.scale_
        p = 1 / (1 + np.exp(-np.clip(z, -50, 50)))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        same = self.predict_proba(X)[:, 1] >= 0.5
        return self.classes_[same.astype(int)]


def build_head(input_dim: int, dropout: float = 0.2, hidden: tuple[int, ...] = (512, 128)):
    """The 2017 study's neural head: Dense512-Dropout-ReLU-Dense128-Dropout-ReLU-Dense2(softmax)."""
    import keras
    from keras import layers

    blocks = [(layers.Dense(units), layers.Dropout(dropout), layers.Activation("relu")) for units in hidden]
    return keras.Sequential([keras.Input((input_dim,)), *(layer for block in blocks for layer in block),
                             layers.Dense(2, activation="softmax")], name="pair_head")


# Keras seeds process-wide (Python, NumPy and backend generators), so two heads training at once
# (grid cells run concurrently) would draw from each other's streams; one at a time keeps each
# fit reproducible from its random_state.
_KERAS_FIT = threading.Lock()


class KerasHead(_BinaryClassifier):
    """The study's neural head on merged vectors: Adam, batch 32, 10 epochs, best validation loss kept.

    Inputs are standardised with the training mean and spread first. ``hidden`` sets the widths of
    the hidden layers (the study's 512 and 128 by default).
    """

    def __init__(self, epochs: int = 10, batch_size: int = 32, learning_rate: float = 1e-3,
                 validation_fraction: float = 0.1, hidden: tuple[int, ...] = (512, 128), dropout: float = 0.2,
                 random_state: int | None = 0, verbose: int = 0):
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.hidden = hidden
        self.dropout = dropout
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y, callbacks=None):
        X, y = validate_data(self, X, y, dtype=np.float32)
        self.classes_, y = binary_labels(y)
        with _KERAS_FIT:
            return self._fit(X, y, callbacks)

    def _fit(self, X, y, callbacks):
        import keras

        keras.utils.set_random_seed(self.random_state or 0)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        self.model_ = build_head(X.shape[1], self.dropout, tuple(self.hidden))
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
        """P(class) per row, computed row by row in float64 from the trained weights (dropout is off at
        inference): a row's probabilities do not depend on the other rows of the batch or their order,
        which a float32 batch through oneDNN does not promise (last digits move with the row's position)."""
        check_is_fitted(self)
        h = (validate_data(self, X, dtype=np.float64, reset=False) - self.mean_) / self.scale_
        dense = [layer for layer in self.model_.layers if layer.__class__.__name__ == "Dense"]
        for i, layer in enumerate(dense):
            kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
            h = h @ kernel + bias
            if i < len(dense) - 1:
                h = np.maximum(h, 0.0)
        h = np.exp(h - h.max(axis=1, keepdims=True))
        return h / h.sum(axis=1, keepdims=True)

    def predict(self, X):
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]


def _similarity(random_state):
    return SimilarityThreshold(random_state=random_state)


def _logreg(random_state, C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C, random_state=random_state))


def _gnb(random_state):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def _linsvc(random_state, C: float, standardise: bool, cv: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # Standardised and regularised: with the study's defaults (raw inputs, C=1) liblinear hit its
    # 1,000 iterations without converging on wide l1/l2 merges, 4-7x slower and near chance there;
    # this is also 7-10 points more accurate on the demo's real vectors (benchmarks/README.md).
    svm = CalibratedClassifierCV(LinearSVC(C=C, random_state=random_state), cv=cv)
    return make_pipeline(StandardScaler(), svm) if standardise else svm


def _rf(random_state, n_estimators: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=n_estimators, n_jobs=-1, random_state=random_state)


def _xgboost(random_state, max_bin: int):
    from xgboost import XGBClassifier

    from simlab.device import has_gpu

    # 64 histogram bins instead of 256: split finding scans bins x features at every node, so wide
    # merged vectors (1,280-4,096-d) train 3x faster, with the same accuracy and AUC (benchmarks/README.md).
    return XGBClassifier(tree_method="hist", max_bin=max_bin, device="cuda" if has_gpu() else "cpu", n_jobs=-1,
                         random_state=random_state, eval_metric="logloss")


def _keras_head(random_state, **params):
    return KerasHead(random_state=random_state, **params)


@dataclass(frozen=True)
class Classifier:
    """One registry entry, each fact declared once: the key used in configs and runs, the display
    label, what it is, and how to build it.

    ``make(random_state, **params)`` returns an unfitted estimator. ``params`` are simlab's
    settings; ``library_params`` the library's own where simlab's differ (what the 2017 study ran).
    ``about`` may name params in braces; ``description`` fills them in.
    """

    name: str
    label: str
    make: Callable[..., object]
    about: str
    params: dict = field(default_factory=dict)
    library_params: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        return self.about.format(**self.params)

    def estimator(self, random_state: int = 0, library_defaults: bool = False, **params):
        """A fresh, unfitted estimator: the entry's params, then the library's (when asked), then ``params``."""
        settings = {**self.params, **(self.library_params if library_defaults else {}), **params}
        return self.make(random_state, **settings)


CLASSIFIERS: dict[str, Classifier] = {c.name: c for c in (
    Classifier("cosine", "Similarity threshold", _similarity,
               "No training: one threshold on cosine similarity (dot) or distance (l1, l2), tuned on train."),
    Classifier("logreg", "Logistic regression", _logreg, "Standardised inputs, L2 penalty C={C}.",
               {"C": 0.1, "max_iter": 2000}),
    Classifier("gnb", "Gaussian naive Bayes", _gnb, "scikit-learn defaults, as in the 2017 study."),
    Classifier("linsvc", "Linear SVM", _linsvc,
               "Standardised inputs, LinearSVC with C={C}, probabilities calibrated by {cv}-fold CV.",
               {"C": 0.01, "standardise": True, "cv": 3}, library_params={"C": 1.0, "standardise": False}),
    Classifier("rf", "Random forest", _rf, "{n_estimators} trees, scikit-learn defaults.", {"n_estimators": 100}),
    Classifier("xgboost", "XGBoost", _xgboost,
               "Gradient-boosted trees, hist method ({max_bin} bins); on the GPU when there is one.",
               {"max_bin": 64}, library_params={"max_bin": 256}),
    Classifier("mlp", "Neural head", _keras_head,
               "The study's head: Dense512-Dropout.2-ReLU-Dense128-Dropout.2-ReLU-Dense2, Adam, batch {batch_size}, "
               "{epochs} epochs, best validation loss.", {"epochs": 10, "batch_size": 32}),
)}


def display_name(key) -> str:
    """The one display name of a classifier ("cosine" -> "Similarity threshold"), for every page and the report;
    keys the registry does not know (a fine-tune run's loss, e.g. "contrastive") are shown as they are."""
    entry = CLASSIFIERS.get(key)
    return entry.label if entry else str(key)


def get_classifier(name: str) -> Classifier:
    try:
        return CLASSIFIERS[name]
    except KeyError:
        raise ValueError(f"Unknown classifier {name!r}. Choose one of: {', '.join(CLASSIFIERS)}") from None


def make_classifier(name: str, random_state: int = 0, library_defaults: bool = False, **params):
    """A fresh, unfitted estimator for the named classifier; with ``library_defaults``, the
    library's own settings where simlab tunes them (LinearSVC, XGBoost), as the 2017 study ran them;
    ``params`` override single settings."""
    return get_classifier(name).estimator(random_state, library_defaults, **params)


options.register_choices("classifier", lambda: list(CLASSIFIERS), display_name)
