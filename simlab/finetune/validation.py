"""How far a validation number can be trusted: per-item scores, their noise, and the kept-epoch rule.

A validation metric is a mean over items (each validation image's average precision as a query, or each
validation pair's loss); items of one scene are not independent, so the noise is estimated by a cluster
bootstrap: the validation scenes are drawn with replacement (``N_BOOT`` times, a fixed seed, so every epoch
is resampled the same way) and the standard deviation of the resampled means is the standard error.

An epoch replaces the kept one only when it beats it by more than the kept epoch's own standard error: a step
smaller than the noise of the validation number never moves the kept epoch (however consistent it is, a step
below that noise is too small to matter on new scenes). Light on purpose: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simlab.evaluate import average_precision
from simlab.pairs import group_codes

N_BOOT = 500  # bootstrap draws of the validation scenes
NOISE_SEED = 0


@dataclass(frozen=True)
class Scores:
    """One validation measurement item by item: ``values`` (one per item, in a fixed order every epoch) and the
    scene each item belongs to (``clusters``), which the bootstrap resamples."""

    values: np.ndarray
    clusters: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if len(self.values) else math.nan

    @property
    def se(self) -> float:
        """Bootstrap standard error of the mean over the scenes."""
        return bootstrap_se(self.values, self.clusters)


def query_aps(embeddings: np.ndarray, groups, queries=None) -> Scores:
    """Average precision of each query ranking every other image by cosine similarity; by default every image
    with another image of its scene is a query (more items than one query per scene: finer resolution).
    Clusters are the queries' scenes."""
    codes = group_codes(np.asarray(groups))
    v = np.asarray(embeddings, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    if queries is None:
        sizes = np.bincount(codes)
        queries = np.flatnonzero(sizes[codes] >= 2)
    queries = np.asarray(queries, int)
    aps = np.empty(len(queries))
    for start in range(0, len(queries), 256):  # one matrix product per chunk, bounded memory
        chunk = queries[start:start + 256]
        for k, (q, sims) in enumerate(zip(chunk, v[chunk] @ v.T)):
            others = np.flatnonzero(np.arange(len(v)) != q)
            ranked = others[np.argsort(-sims[others], kind="stable")]
            aps[start + k] = average_precision(codes[ranked] == codes[q])
    keep = ~np.isnan(aps)
    return Scores(aps[keep], codes[queries][keep])


def recall_at_1(embeddings: np.ndarray, groups) -> float:
    """Share of the images (with another image of their scene) whose nearest other image shows their scene."""
    codes = group_codes(np.asarray(groups))
    v = np.asarray(embeddings, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    queries = np.flatnonzero(np.bincount(codes)[codes] >= 2)
    if not len(queries):
        return math.nan
    sims = v[queries] @ v.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return float(np.mean(codes[np.argmax(sims, axis=1)] == codes[queries]))


def _draws(clusters: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights: n_boot x scenes, how often each scene is drawn; inverse: the scene index of each item)."""
    _, inverse = np.unique(clusters, return_inverse=True)
    n = int(inverse.max()) + 1 if len(inverse) else 0
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64), inverse


def bootstrap_se(values, clusters, n_boot: int = N_BOOT, seed: int = NOISE_SEED) -> float:
    """Standard error of ``mean(values)`` by a cluster bootstrap over ``clusters`` (scenes); 0 for one scene."""
    values = np.asarray(values, np.float64)
    if len(values) < 2 or len(np.unique(clusters)) < 2:
        return 0.0
    weights, inverse = _draws(np.asarray(clusters), n_boot, seed)
    sums = np.bincount(inverse, weights=values, minlength=weights.shape[1])
    counts = np.bincount(inverse, minlength=weights.shape[1]).astype(np.float64)
    means = (weights @ sums) / np.maximum(weights @ counts, 1.0)
    return float(np.std(means, ddof=1))


@dataclass(frozen=True)
class Gain:
    """One measurement against a reference on the same items: the mean difference (in the better direction) and
    the noise it is judged against (the reference's bootstrap standard error)."""

    gain: float
    se: float

    @property
    def beyond_noise(self) -> bool:
        return self.gain > self.se and self.gain > 0


def gain_over(new: Scores, old: Scores, higher_is_better: bool = True) -> Gain:
    """How much ``new`` beats ``old`` (positive: better), and the noise of ``old``'s mean (its bootstrap SE)."""
    if len(new.values) != len(old.values):
        raise ValueError("gain_over needs the same items in both measurements")
    diff = (new.values - old.values) * (1.0 if higher_is_better else -1.0)
    return Gain(float(np.mean(diff)) if len(diff) else 0.0, old.se)


class KeptEpoch:
    """The kept epoch under noise: the first measurement is kept; a later one replaces it only when its gain
    over the kept one exceeds the kept one's standard error. ``since`` counts the epochs since the last change
    (early stopping reads it)."""

    def __init__(self, higher_is_better: bool = True):
        self.higher_is_better = higher_is_better
        self.epoch: int | None = None
        self.scores: Scores | None = None
        self.last: Gain | None = None  # the latest epoch against the kept one
        self.since = 0

    def offer(self, epoch: int, scores: Scores) -> bool:
        """Epoch ``epoch`` measured ``scores``: True when it becomes the kept epoch."""
        if not np.isfinite(scores.mean):
            self.since += 1
            return False
        if self.scores is None:
            self.epoch, self.scores, self.since = epoch, scores, 0
            return True
        self.last = gain_over(scores, self.scores, self.higher_is_better)
        if self.last.beyond_noise:
            self.epoch, self.scores, self.since = epoch, scores, 0
            return True
        self.since += 1
        return False


def describe_gain(start: float, kept: float, se: float | None, what: str = "validation mAP",
                  start_name: str = "start", higher_is_better: bool = True) -> str:
    """One line for people: e.g. ``validation mAP: start .741, training +0.004 ± 0.005: within noise``."""
    gain = kept - start
    text = f"{what}: {start_name} {_short(start)}, training {gain:+.3f}"
    if se is None or not np.isfinite(se):
        return text
    better = (gain > 0) == higher_is_better
    verdict = "within noise" if abs(gain) <= se else ("better, beyond noise" if better else "worse, beyond noise")
    return f"{text} ± {se:.3f}: {verdict}"


def _short(value: float) -> str:
    """.741 rather than 0.741, as the page writes scores between 0 and 1."""
    text = f"{value:.3f}"
    return text[1:] if text.startswith("0.") else text


NOISE_HELP = ("Noise: the validation metric is a mean over items (each validation image's average precision as a "
              "query among the validation images, or each validation pair's loss); the validation scenes are drawn "
              f"with replacement {N_BOOT} times and the spread of the resampled means is the standard error (SE). "
              "A later epoch replaces the kept one only when it beats it by more than the kept epoch's SE; "
              "\"training +0.004 ± 0.045: within noise\" compares a gain with that SE.")


def run_story(metrics: dict) -> list[str]:
    """In words, what a finished fine-tuning run owes to its starting point and what to training: one line for
    the validation metric that picks the epoch, one for the test scenes' retrieval mAP (Siamese runs)."""
    m, lines = metrics, []
    what = {"val_map": "Validation mAP", "val_loss": "Validation loss"}.get(m.get("selected_by"), "Validation")
    start, gain = m.get("val_start"), m.get("val_gain")
    if start is not None and gain is not None:
        se = m.get("val_gain_se") if m.get("noise") else None
        text = describe_gain(start, start + gain, se, what, higher_is_better=m.get("selected_by") != "val_loss")
        top, kept = m.get("val_top_epoch"), m.get("best_epoch")
        text += f" (its best epoch, {top})" if top else ""
        text += "; the start is kept (epoch 0)" if kept == 0 else f"; epoch {kept} is kept" if kept else ""
        lines.append(text)
    elif start is not None:
        lines.append(f"{what}: start {_short(start)}; no epoch of training to compare")
    if m.get("train_loss_max") == 0:
        lines.append("Training loss 0 in every epoch: no training batch held a pair the loss could learn from (the "
                     "start already separates every training scene), so training changed nothing")
    if m.get("map_start") is not None and m.get("map") is not None:
        start_name = "whitening start" if m.get("whitening_shrinkage") is not None else "start"
        trained = describe_gain(m["map_start"], m["map"], m.get("map_gain_se"), "Test scenes' mAP", start_name)
        if m.get("map_frozen") is not None and m.get("map_start_gain_se") is not None:
            head, tail = trained.split(", training ", 1)
            trained = (f"{head} ({m['map_start'] - m['map_frozen']:+.3f} ± {m['map_start_gain_se']:.3f} over the "
                       f"frozen vectors' {_short(m['map_frozen'])}), training {tail}")
        lines.append(trained + " (kept epoch against the start)")
    return lines
