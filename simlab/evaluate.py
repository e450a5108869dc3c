"""Metrics of pair predictions, with bootstrap intervals, and retrieval mAP; one definition each.

:data:`METRICS` says what every stored number measures and on what (its scope), so pages and reports
label a number the same way everywhere: a grid run's ``map`` is the retrieval mAP of its backbone's
vectors on all of the dataset's images, a fine-tune run's is its embeddings' on the test scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from simlab.merge import l2_normalise
from simlab.pairs import group_codes

log = logging.getLogger(__name__)


def bootstrap_interval(correct: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 0/1 array."""
    correct = np.asarray(correct, np.float64)
    if len(correct) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 100):  # chunks keep memory flat for large test sets
        idx = rng.integers(0, len(correct), size=(min(100, n_boot - start), len(correct)))
        means[start:start + len(idx)] = correct[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def pair_metrics(y_true, prob, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy (with a 95% bootstrap interval), precision/recall/F1 of "same", ROC AUC, confusion."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, np.float64)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    lo, hi = bootstrap_interval(pred == y, n_boot=n_boot, seed=seed)
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "accuracy_lo": lo, "accuracy_hi": hi,
        "precision": precision, "recall": recall, "f1": f1, "auc": auc,
        "tn": tn, "fp": fp, "fn": fn, "tp": tp, "n_test": len(y), "threshold": threshold,
    }


def best_threshold(y_true, prob, prefer: float = 0.5) -> float:
    """The operating threshold that classifies the most of these pairs right (a pair is "same" when its
    probability is at least the threshold): a midpoint between two neighbouring probabilities, or just
    outside their range. Among equally accurate cuts, the one nearest ``prefer`` (the classifier's own rule).

    Meant for validation pairs, never the test pairs a run is scored on."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return float(prefer)
    values = np.unique(p)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    below = np.searchsorted(ps, cuts, side="left")  # pairs under each cut: predicted "different"
    neg_below = np.concatenate([[0], np.cumsum(ys == 0)])[below]
    pos_above = int((ys == 1).sum()) - np.concatenate([[0], np.cumsum(ys == 1)])[below]
    correct = neg_below + pos_above
    best = np.flatnonzero(correct == correct.max())
    return float(np.clip(cuts[best[np.argmin(np.abs(cuts[best] - prefer))]], 0.0, 1.0))


def average_precision(relevant_sorted: np.ndarray) -> float:
    """AP of one ranked list given as booleans (True = relevant), over all relevant items in it."""
    hits = np.flatnonzero(relevant_sorted)
    if len(hits) == 0:
        return float("nan")
    return float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))


def retrieval_map(vectors: np.ndarray, groups, queries=None, similarity: np.ndarray | None = None) -> float:
    """Holidays protocol: each group's query ranks every other image by cosine similarity; mean AP.

    Groups with a single image have nothing to find and are left out.
    """
    codes = group_codes(groups)
    if queries is None:
        _, queries = np.unique(codes, return_index=True)
    v = l2_normalise(np.asarray(vectors, np.float32))
    queries = np.asarray(queries, int)
    aps = []
    for start in range(0, len(queries), 256):  # one matrix product per chunk of queries, bounded memory
        chunk = queries[start:start + 256]
        block = similarity[chunk] if similarity is not None else v[chunk] @ v.T
        for q, sims in zip(chunk, block):
            others = np.flatnonzero(np.arange(len(v)) != q)
            ranked = others[np.argsort(-sims[others], kind="stable")]
            ap = average_precision(codes[ranked] == codes[q])
            if not np.isnan(ap):
                aps.append(ap)
    return float(np.mean(aps)) if aps else float("nan")


def retrieval_map_on(vectors: np.ndarray, groups, images) -> float:
    """Retrieval mAP among ``images`` only (indices, e.g. ``Protocol.test_images(groups)``): each of their
    scenes' query ranks the other images of that subset."""
    images = np.asarray(images, int)
    return retrieval_map(np.asarray(vectors)[images], np.asarray(groups)[images])


# --------------------------------------------------------------------------- two runs, pair by pair

#: Outcomes of a pair under two runs A and B, in the order pages list them.
DIFF_OUTCOMES = ("fixed", "broken", "both_wrong", "both_right")
PAIR_KEY = ("left_path", "right_path")


class DifferentTestPairs(ValueError):
    """Two runs were not scored on the same test pairs, so they cannot be compared pair by pair."""


@dataclass(frozen=True)
class PairDiff:
    """Two runs' predictions on the same test pairs. ``pairs`` has one row per test pair (A's order):
    paths, groups, ``label``, ``prob_a``/``prob_b``, ``correct_a``/``correct_b`` at each run's threshold, and
    ``outcome``: "fixed" (A wrong, B right), "broken" (A right, B wrong), "both_wrong" or "both_right"."""

    pairs: pd.DataFrame
    threshold_a: float
    threshold_b: float

    @property
    def counts(self) -> dict[str, int]:
        found = self.pairs["outcome"].value_counts()
        return {k: int(found.get(k, 0)) for k in DIFF_OUTCOMES}

    @property
    def disagreeing(self) -> pd.DataFrame:
        """The pairs one run gets right and the other wrong (fixed, then broken), largest change in P(same) first."""
        d = self.pairs[self.pairs["outcome"].isin(("fixed", "broken"))]
        change = (d["prob_b"] - d["prob_a"]).abs()
        return d.assign(_change=change).sort_values(["outcome", "_change"], ascending=[False, False],
                                                    kind="stable").drop(columns="_change")


def not_comparable(run_a, run_b, test_pairs_keys: Mapping[str, str]) -> str | None:
    """Why two stored runs cannot be compared pair by pair (one line), or None when they can: both finished
    and scored on the same test pairs (``test_pairs_keys``: run id -> digest, ``Store.test_pairs_keys``)."""
    if not (run_a.done and run_b.done):
        return "Two finished runs can be compared pair by pair."
    key = test_pairs_keys.get(run_a.id)
    if key is None or key != test_pairs_keys.get(run_b.id):
        return "These two runs were scored on different test pairs, so they cannot be compared pair by pair."
    return None


def pair_diff(preds_a: pd.DataFrame, preds_b: pd.DataFrame, threshold_a: float = 0.5,
              threshold_b: float = 0.5) -> PairDiff:
    """Compare two runs pair by pair: which test pairs B fixes (A wrong, B right), breaks, and which both get
    wrong or right, each run at its own threshold. ``preds_*`` are stored predictions (``Store.predictions``:
    left_path, right_path, left_group, right_group, label, prob).

    Raises :class:`DifferentTestPairs` (one line) unless both runs scored the same test pairs with the same labels.
    """
    cols = [*PAIR_KEY, "label", "prob"]
    a, b = preds_a[["left_group", "right_group", *cols]], preds_b[cols]
    for name, frame in (("A", a), ("B", b)):
        if frame.duplicated(list(PAIR_KEY)).any():
            raise DifferentTestPairs(f"Run {name} lists some test pairs twice; it cannot be compared pair by pair.")
    both = a.merge(b, on=list(PAIR_KEY), how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    only_a, only_b = int((both["_merge"] == "left_only").sum()), int((both["_merge"] == "right_only").sum())
    if only_a or only_b or len(a) == 0:
        raise DifferentTestPairs(
            f"The two runs were scored on different test pairs ({len(a)} and {len(b)} pairs; {only_a} only in A, "
            f"{only_b} only in B). Compare runs on the same dataset, split, test size, negatives and seed.")
    if (both["label_a"] != both["label_b"]).any():
        raise DifferentTestPairs("The two runs label some of the same test pairs differently: they come from "
                                 "different datasets. Compare runs on the same dataset.")
    label = both["label_a"].astype(int)
    correct_a = (both["prob_a"] >= threshold_a).astype(int) == label
    correct_b = (both["prob_b"] >= threshold_b).astype(int) == label
    outcome = np.select([~correct_a & correct_b, correct_a & ~correct_b, ~correct_a & ~correct_b],
                        ["fixed", "broken", "both_wrong"], "both_right")
    pairs = pd.DataFrame({k: both[k] for k in (*PAIR_KEY, "left_group", "right_group")}
                         | {"label": label, "prob_a": both["prob_a"].astype(float),
                            "prob_b": both["prob_b"].astype(float), "correct_a": correct_a,
                            "correct_b": correct_b, "outcome": outcome})
    return PairDiff(pairs.reset_index(drop=True), float(threshold_a), float(threshold_b))


# --------------------------------------------------------------------------- what each number means


@dataclass(frozen=True)
class Metric:
    """A stored metric: its key in a run's metrics, a short label, and what it is measured on.

    ``scope`` may name ``{backbone}`` and ``{images}`` (the images retrieval ranked: "the test scenes"
    or "all images", a fine-tune run's ``map_scope``); ``kind`` is "grid", "finetune" or None (both)."""

    name: str
    label: str
    scope: str
    kind: str | None = None
    higher_is_better: bool = True
    headline: bool = False  # one of the numbers runs are compared by: Compare's heatmaps, the Runs table, the report


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "Accuracy", "share of the test pairs classified right at the run's stored threshold "
           "(chosen on validation scenes carved from the training scenes, never on the test pairs; 0.5 for "
           "runs with the 2017 study's settings, for fine-tune runs and for runs stored before thresholds were kept)",
           headline=True),
    Metric("accuracy_lo", "Accuracy, 95% CI low", "bootstrap interval of the test accuracy"),
    Metric("accuracy_hi", "Accuracy, 95% CI high", "bootstrap interval of the test accuracy"),
    Metric("precision", "Precision", "of 'same scene' on the test pairs, at the run's stored threshold"),
    Metric("recall", "Recall", "of 'same scene' on the test pairs, at the run's stored threshold"),
    Metric("f1", "F1", "of 'same scene' on the test pairs, at the run's stored threshold", headline=True),
    Metric("threshold", "Threshold", "the run's operating threshold on P(same): chosen on validation scenes "
           "carved from the training scenes (0.5: the 2017 study's rule)"),
    Metric("n_val", "Validation pairs", "number of validation pairs the threshold was chosen on", kind="grid"),
    Metric("auc", "ROC AUC", "of P(same scene) on the test pairs", headline=True),
    Metric("map", "Retrieval mAP", "retrieval mAP of {backbone} vectors on all images of the dataset "
           "(every scene's query ranks every other image)", kind="grid", headline=True),
    Metric("map", "Retrieval mAP", "retrieval mAP of the fine-tuned embeddings on {images}", kind="finetune",
           headline=True),
    Metric("map_frozen", "Retrieval mAP, frozen", "retrieval mAP of the frozen {backbone} vectors on {images}",
           kind="finetune"),
    Metric("n_test", "Test pairs", "number of test pairs scored"),
    Metric("n_train", "Training pairs", "number of pairs the classifier was trained on"),
    Metric("seconds", "Seconds", "wall time of the run", higher_is_better=False),
)


def headline_metrics(kind: str = "grid") -> dict[str, str]:
    """Name -> label of the numbers runs are compared by (declared ``headline`` in :data:`METRICS`), in order:
    what Compare, the Runs table and the report show. A metric declared there shows everywhere."""
    return {m.name: m.label for m in METRICS if m.headline and m.kind in (None, kind)}


def metric_names() -> list[str]:
    """Every stored metric's name, once each, in :data:`METRICS` order."""
    return list(dict.fromkeys(m.name for m in METRICS))


def metric(name: str, kind: str = "grid") -> Metric | None:
    """The definition of ``name`` for a run of ``kind`` ("grid" or "finetune"), or None if unknown."""
    return next((m for m in METRICS if m.name == name and m.kind in (None, kind)), None)


def metric_scope(name: str, kind: str = "grid", backbone: str | None = None, images: str | None = None) -> str:
    """What a stored number measures, in words, e.g. 'retrieval mAP of the frozen resnet50 vectors on the
    test scenes' (a fine-tune run's ``map_frozen``)."""
    m = metric(name, kind)
    if m is None:
        return name
    images = {"test images": "the test scenes", None: "the test scenes", "": "the test scenes"}.get(images, images)
    return m.scope.format(backbone=backbone or "the backbone's", images=images)


def run_metric_scope(run, name: str) -> str:
    """:func:`metric_scope` of a stored run's metric (a ``simlab.store.Run``: its kind, backbone and,
    for fine-tune runs, the ``map_scope`` it recorded)."""
    return metric_scope(name, run.kind, run.backbone, (run.metrics or {}).get("map_scope"))


def metric_label(name: str, kind: str = "grid") -> str:
    m = metric(name, kind)
    return m.label if m else name


# --------------------------------------------------------------------------- are the probabilities honest?


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's numbers: per bin of predicted P(same), the mean prediction, the share of pairs
    that truly show one scene, and the count; with the expected calibration error (the count-weighted mean
    gap between the two) and the Brier score (mean squared error of P(same))."""

    bins: pd.DataFrame  # lo, hi, mean_prob, frac_same, count
    ece: float
    brier: float
    n: int


def reliability(y_true, prob, n_bins: int = 10) -> Reliability:
    """Equal-width bins of P(same) in [0, 1] (empty bins left out), as scikit-learn's ``calibration_curve``
    with ``strategy="uniform"``, plus counts, ECE and Brier score."""
    y = np.asarray(y_true).astype(float)
    p = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    rows = [{"lo": edges[b], "hi": edges[b + 1], "mean_prob": float(p[which == b].mean()),
             "frac_same": float(y[which == b].mean()), "count": int((which == b).sum())}
            for b in range(n_bins) if (which == b).any()]
    bins = pd.DataFrame(rows, columns=["lo", "hi", "mean_prob", "frac_same", "count"])
    n = len(y)
    ece = float((bins["count"] * (bins["mean_prob"] - bins["frac_same"]).abs()).sum() / n) if n else float("nan")
    brier = float(np.mean((p - y) ** 2)) if n else float("nan")
    return Reliability(bins, ece, brier, n)
