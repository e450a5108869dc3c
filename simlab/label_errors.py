"""Likely label errors: test pairs the models confidently disagree with, and re-scoring against corrected labels.

- :func:`suspect_labels`: per test pair of a run, a "suspect label" score: how confidently the runs scored on the
  same test pairs (the run itself and every other stored run with the same test pairs) contradict the pair's
  label, averaged over them (the spirit of FiftyOne's mistakenness). 1 - P(same) for a pair labelled same,
  P(same) for one labelled different; a pair every run gets confidently wrong scores near 1.
- :func:`rescore`: a run's test pairs scored again at its own threshold against the labels a person corrected
  (:mod:`simlab.store.corrections`), beside the original numbers; no retraining, nothing stored is changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pandas as pd

from simlab.data import file_digest
from simlab.evaluate import pair_metrics
from simlab.store import Store
from simlab.store.corrections import Corrections, pair_key

DigestOf = Callable[[str], str]


def against_label(labels, probs) -> np.ndarray:
    """How confidently a run contradicts each label: P(same) where the label is 'different', else 1 - P(same)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, np.float64)
    return np.where(y == 1, 1.0 - p, p)


def runs_on_same_pairs(store: Store, run_id: str) -> list[str]:
    """The run and every other stored run scored on exactly its test pairs (same paths and labels)."""
    keys = store.test_pairs_keys()
    mine = keys.get(run_id)
    return [run_id] + sorted(r for r, k in keys.items() if k == mine and r != run_id) if mine else [run_id]


def suspect_labels(store: Store, run_id: str) -> pd.DataFrame:
    """The run's predictions plus ``suspect`` (the mean over :func:`runs_on_same_pairs` of
    :func:`against_label`), ``runs`` (how many runs it is averaged over) and ``runs_against`` (how many of them
    put P(same) on the wrong side of 0.5), in the stored order."""
    preds = store.predictions(run_id)
    runs = runs_on_same_pairs(store, run_id)
    key = ["left_path", "right_path", "label"]
    total = np.zeros(len(preds))
    against_count = np.zeros(len(preds), int)
    for other in runs:
        theirs = preds[key] if other == run_id else preds[key].merge(store.predictions(other)[[*key, "prob"]],
                                                                     on=key, how="left")
        probs = (preds["prob"] if other == run_id else theirs["prob"]).to_numpy(np.float64)
        a = against_label(preds["label"], probs)
        total += a
        against_count += (a > 0.5).astype(int)
    return preds.assign(suspect=total / len(runs), runs=len(runs), runs_against=against_count)


def memo_digest() -> DigestOf:
    """:func:`simlab.data.file_digest`, remembered per path for one re-scoring."""
    return functools.lru_cache(maxsize=None)(file_digest)


def corrected_labels(preds: pd.DataFrame, corrections: dict[tuple[str, str], int],
                     digest_of: DigestOf | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, corrected): each pair's label as corrected by a person where they did, else as stored; and
    which pairs a correction changed. A file that cannot be read keeps its stored label."""
    digest_of = digest_of or memo_digest()
    labels = preds["label"].to_numpy().astype(int).copy()
    changed = np.zeros(len(labels), bool)
    if not corrections:
        return labels, changed
    for i, (left, right) in enumerate(zip(preds["left_path"], preds["right_path"])):
        try:
            k = pair_key(digest_of(left), digest_of(right))
        except OSError:
            continue
        if k in corrections and corrections[k] != labels[i]:
            labels[i], changed[i] = corrections[k], True
    return labels, changed


def rescore(store: Store, run_id: str, threshold: float, digest_of: DigestOf | None = None,
            n_boot: int = 1000) -> dict:
    """A run's metrics at ``threshold`` against its stored labels (``original``) and against the corrected labels
    (``corrected``), with ``changed``: how many of its test pairs a correction relabelled."""
    preds = store.predictions(run_id)
    labels, changed = corrected_labels(preds, Corrections(store.path).labels(), digest_of)
    probs = preds["prob"].to_numpy(np.float64)
    original = pair_metrics(preds["label"].to_numpy(), probs, threshold=threshold, n_boot=n_boot)
    corrected = pair_metrics(labels, probs, threshold=threshold, n_boot=n_boot) if changed.any() else original
    return {"original": original, "corrected": corrected, "changed": int(changed.sum()), "n_test": len(preds)}
