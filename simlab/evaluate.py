"""Metrics of pair predictions, with bootstrap intervals, and retrieval mAP; one definition each.

:data:`METRICS` says what every stored number measures and on what (its scope), so pages and reports
label a number the same way everywhere: a grid run's ``map`` is the retrieval mAP of its backbone's
vectors on all of the dataset's images, a fine-tune run's is its embeddings' on the test scenes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
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


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "Accuracy", "share of the test pairs classified right (threshold 0.5)"),
    Metric("accuracy_lo", "Accuracy, 95% CI low", "bootstrap interval of the test accuracy"),
    Metric("accuracy_hi", "Accuracy, 95% CI high", "bootstrap interval of the test accuracy"),
    Metric("precision", "Precision", "of 'same scene' on the test pairs"),
    Metric("recall", "Recall", "of 'same scene' on the test pairs"),
    Metric("f1", "F1", "of 'same scene' on the test pairs"),
    Metric("auc", "ROC AUC", "of P(same scene) on the test pairs"),
    Metric("map", "Retrieval mAP", "retrieval mAP of {backbone} vectors on all images of the dataset "
           "(every scene's query ranks every other image)", kind="grid"),
    Metric("map", "Retrieval mAP", "retrieval mAP of the fine-tuned embeddings on {images}", kind="finetune"),
    Metric("map_frozen", "Retrieval mAP, frozen", "retrieval mAP of the frozen {backbone} vectors on {images}",
           kind="finetune"),
    Metric("n_test", "Test pairs", "number of test pairs scored"),
    Metric("n_train", "Training pairs", "number of pairs the classifier was trained on"),
    Metric("seconds", "Seconds", "wall time of the run", higher_is_better=False),
)


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
