"""Pairs of images (same scene or not) and train/test splits that keep images apart."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from simlab.neighbours import build_index
from simlab.options import NEGATIVE_SCHEMES, SPLITS

log = logging.getLogger(__name__)

__all__ = [
    "NEGATIVE_SCHEMES",
    "SPLITS",
    "Pairs",
    "build_pairs",
    "group_codes",
    "group_folds",
    "hard_negative_pairs",
    "make_pairs",
    "mine_hard_negatives",
    "positive_pairs",
    "split_groups",
]


@dataclass
class Pairs:
    """Index pairs into a dataset: ``left[i]``, ``right[i]`` and ``label[i]`` (1 = same group)."""

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.left[mask], self.right[mask], self.label[mask])


def group_codes(groups) -> np.ndarray:
    """Groups as small integers, in order of first appearance."""
    _, first, codes = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[codes]


def positive_pairs(groups) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair inside a group: a group of n gives n(n-1)/2."""
    codes = group_codes(groups)
    left, right = [], []
    for g in np.unique(codes):
        members = np.flatnonzero(codes == g)
        i, j = np.triu_indices(len(members), k=1)
        left.append(members[i])
        right.append(members[j])
    if not left:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(left), np.concatenate(right)


def make_pairs(groups, negative_ratio: float = 1.0, scheme: str = "random", seed: int = 0,
               hard_negatives: np.ndarray | None = None) -> Pairs:
    """All positives plus ``negative_ratio`` negatives per positive, sampled across groups.

    ``scheme="random"`` draws both images of a negative at random (distinct pairs);
    ``scheme="same_left"`` pairs each positive's left image with a random image of another group,
    as the 2017 study did. ``hard_negatives`` (an (M, 2) array of index pairs from different
    groups, e.g. mined near neighbours) are used first, then topped up at random.
    """
    if scheme not in NEGATIVE_SCHEMES:
        raise ValueError(f"scheme must be one of {NEGATIVE_SCHEMES}, not {scheme!r}")
    if negative_ratio < 0:
        raise ValueError("negative_ratio must be >= 0")
    codes = group_codes(groups)
    n = len(codes)
    if len(np.unique(codes)) < 2:
        raise ValueError("Need at least two groups to build negative pairs.")
    rng = np.random.default_rng(seed)
    pl, pr = positive_pairs(groups)
    n_neg = round(negative_ratio * len(pl))
    seen: set[tuple[int, int]] = set()
    nl, nr = [], []

    def add(a: int, b: int) -> None:
        key = (min(a, b), max(a, b))
        if codes[a] != codes[b] and key not in seen:
            seen.add(key)
            nl.append(key[0])
            nr.append(key[1])

    if hard_negatives is not None:
        for a, b in np.asarray(hard_negatives, int)[: n_neg]:
            add(int(a), int(b))
    max_negatives = n * (n - 1) // 2 - len(pl)
    n_neg = min(n_neg, max_negatives)
    attempts = 0
    while len(nl) < n_neg and attempts < 50 * max(n_neg, 1):
        attempts += 1
        a = int(pl[attempts % len(pl)]) if scheme == "same_left" and len(pl) else int(rng.integers(n))
        add(a, int(rng.integers(n)))
    left = np.concatenate([pl, np.asarray(nl, int)])
    right = np.concatenate([pr, np.asarray(nr, int)])
    label = np.concatenate([np.ones(len(pl), np.int8), np.zeros(len(nl), np.int8)])
    return Pairs(left.astype(np.int64), right.astype(np.int64), label)


def split_groups(groups, test_size: float = 0.3, seed: int = 0) -> np.ndarray:
    """Boolean mask over images: True for images whose whole group is held out for test."""
    if not 0 < test_size < 1:
        raise ValueError("test_size must be between 0 and 1")
    codes = group_codes(groups)
    n_groups = codes.max() + 1
    held = np.zeros(n_groups, bool)
    held[np.random.default_rng(seed).permutation(n_groups)[: round(test_size * n_groups)]] = True
    return held[codes]


def build_pairs(groups, split: str = "group", test_size: float = 0.3, negative_ratio: float = 1.0,
                scheme: str = "random", seed: int = 0,
                hard_negatives: np.ndarray | None = None) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """Pairs with boolean (train, test) masks over them.

    ``group`` (default): whole groups go to test and pairs are built inside each side, so no image
    is in both train and test and both sides keep the negative ratio.
    ``pair``: the 2017 study's split of the pairs themselves; leaky (the same images sit in train
    and test), offered only to reproduce its numbers.
    """
    groups = np.asarray(groups)
    if split == "pair":
        if not 0 < test_size < 1:
            raise ValueError("test_size must be between 0 and 1")
        pairs = make_pairs(groups, negative_ratio, scheme, seed, hard_negatives)
        test = np.zeros(len(pairs), bool)
        test[np.random.default_rng(seed).permutation(len(pairs))[: round(test_size * len(pairs))]] = True
        return pairs, ~test, test
    if split != "group":
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    held = split_groups(groups, test_size, seed)
    parts, sides = [], []
    for side, members in enumerate((np.flatnonzero(~held), np.flatnonzero(held))):
        hard = None
        if hard_negatives is not None:
            local = {int(g): i for i, g in enumerate(members)}
            hard = np.array([(local[a], local[b]) for a, b in np.asarray(hard_negatives, int)
                             if a in local and b in local], int).reshape(-1, 2)
        p = make_pairs(groups[members], negative_ratio, scheme, seed + side, hard)
        parts.append(Pairs(members[p.left], members[p.right], p.label))
        sides.append(np.full(len(p), side == 1))
    pairs = Pairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("left", "right", "label")))
    test = np.concatenate(sides)
    return pairs, ~test, test


def group_folds(groups, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """k boolean image masks, each holding out a disjoint set of whole groups (k-fold over groups)."""
    codes = group_codes(groups)
    order = np.random.default_rng(seed).permutation(codes.max() + 1)
    return [np.isin(codes, fold) for fold in np.array_split(order, k)]


# --------------------------------------------------------------------------- hard negatives


def mine_hard_negatives(vectors, groups, k: int = 5, index=None) -> np.ndarray:
    """(M, 2) index pairs of images from *different* groups that sit close together: for each image,
    its ``k`` nearest neighbours outside its own group. Hardest first in rounds (every image's
    nearest wrong neighbour, then every image's second...), each unordered pair once.

    ``index``: anything with ``search(queries, k) -> (scores, ids)`` over ``vectors``; default an exact
    flat index of :mod:`simlab.neighbours`, the one every search goes through. :func:`make_pairs`/
    :func:`build_pairs` (``hard_negatives=``) use them first.
    """
    codes = group_codes(groups)
    n = len(codes)
    if n < 2 or k <= 0:
        return np.zeros((0, 2), np.int64)
    index = build_index(vectors, "flat") if index is None else index
    depth = min(n, k + int(np.bincount(codes).max()))
    scores, ids = index.search(vectors, depth)
    rounds: list[list[tuple[float, int, int]]] = [[] for _ in range(k)]
    for i in range(n):
        found = 0
        for s, j in zip(scores[i], ids[i]):
            if j < 0 or codes[j] == codes[i]:
                continue
            rounds[found].append((-float(s), min(i, int(j)), max(i, int(j))))
            found += 1
            if found == k:
                break
    seen, out = set(), []
    for r in rounds:
        for _, a, b in sorted(r):
            if (a, b) not in seen:
                seen.add((a, b))
                out.append((a, b))
    return np.asarray(out, np.int64).reshape(-1, 2)


def hard_negative_pairs(vectors, groups, negative_ratio: float = 1.0, k: int | None = None,
                        index=None) -> np.ndarray:
    """Enough mined hard negatives for ``build_pairs(..., hard_negatives=...)`` at this negative ratio:
    k neighbours per image, k sized so that they cover the negatives asked for (at most 50)."""
    n = len(groups)
    wanted = round(negative_ratio * len(positive_pairs(groups)[0]))
    k = k or int(max(1, min(50, np.ceil(2 * wanted / max(n, 1)))))
    log.debug("mining %d hard negatives per image among %d", k, n)
    return mine_hard_negatives(vectors, groups, k, index=index)
