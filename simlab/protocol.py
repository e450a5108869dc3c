"""The evaluation protocol of a run: how images are split, which negatives, which seed, which weights.

It is the one place train/test pairs are built, hard negatives included:

>>> protocol = Protocol.from_config(run_config)           # a grid cell's or a fine-tune run's config
>>> pairs, train, test = protocol.pairs(groups, vectors)   # vectors only needed for hard negatives

Defaults and bounds come from :mod:`simlab.options`, so a protocol read back from an old run, one
built by the CLI and one built by a page agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from simlab import options
from simlab.pairs import (
    Pairs,
    build_pairs,
    group_codes,
    hard_negative_pairs,
    split_groups,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitPairs:
    """Pairs with boolean train/test masks over them; unpacks as ``pairs, train, test`` like ``build_pairs``."""

    pairs: Pairs
    train: np.ndarray
    test: np.ndarray

    def __iter__(self) -> Iterator:
        return iter((self.pairs, self.train, self.test))

    @property
    def train_pairs(self) -> Pairs:
        return self.pairs.subset(self.train)

    @property
    def test_pairs(self) -> Pairs:
        return self.pairs.subset(self.test)


@dataclass(frozen=True)
class Protocol:
    """Split, test size, negatives, negative ratio, seed and backbone weights of a run.

    ``negatives="hard"`` mines each image's nearest neighbours of other scenes (``hard_k`` of them,
    None: as many as the ratio needs) and tops them up with random negatives.
    """

    split: str = options.default("split")
    test_size: float = options.default("test_size")
    negatives: str = options.default("negatives")
    negative_ratio: float = options.default("negative_ratio")
    seed: int = options.default("seed")
    weights: str = options.default("weights")
    hard_k: int | None = options.default("hard_k")

    def __post_init__(self):
        for f in fields(self):  # validated, and ints widened to floats where floats are wanted
            object.__setattr__(self, f.name, options.validate(f.name, getattr(self, f.name)))

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(cls, config: Mapping | None, **fallback) -> Protocol:
        """The protocol in a config dict (GridConfig, FinetuneConfig, a stored run's config); other keys are
        ignored. A key missing or None takes ``fallback[key]`` (e.g. a run's split and seed columns), then
        the declared default."""
        config = config or {}
        values = {}
        for name in cls.names():
            for source in (config, fallback):
                if source.get(name) is not None:
                    values[name] = source[name]
                    break
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for people, e.g. 'group split · 30% test · random negatives x1 · seed 0 · imagenet weights'."""
        hard = f" (k={self.hard_k})" if self.negatives == "hard" and self.hard_k else ""
        return (f"{self.split} split · {self.test_size:.0%} test · {self.negatives}{hard} negatives "
                f"x{self.negative_ratio:g} · seed {self.seed} · {self.weights} weights")

    # ------------------------------------------------------------------ building pairs

    @property
    def needs_vectors(self) -> bool:
        """Whether pairs depend on the vectors (mined hard negatives), so differ between backbones."""
        return self.negatives == "hard"

    def pairs(self, groups, vectors=None, index=None) -> SplitPairs:
        """All positives and ``negative_ratio`` negatives per positive, split into train and test.

        ``vectors`` (one row per image) are needed for hard negatives; ``index`` optionally searches
        them (anything with ``search(queries, k)``; default an exact FAISS flat index).
        """
        groups = np.asarray(groups)
        options.check_groups(self.test_size, len(np.unique(group_codes(groups))) if len(groups) else 0, self.split)
        scheme, hard = self.negatives, None
        if self.needs_vectors:
            if vectors is None:
                raise ValueError("Hard negatives are mined on image vectors: pass the vectors to Protocol.pairs.")
            if len(vectors) != len(groups):
                raise ValueError(f"{len(vectors)} vectors for {len(groups)} images: one vector per image needed.")
            scheme, hard = "random", hard_negative_pairs(vectors, groups, self.negative_ratio, self.hard_k, index)
        pairs, train, test = build_pairs(groups, self.split, self.test_size, self.negative_ratio, scheme, self.seed,
                                         hard_negatives=hard)
        log.debug("%s: %d train and %d test pairs", self.describe(), int(train.sum()), int(test.sum()))
        return SplitPairs(pairs, train, test)

    def held_out(self, groups) -> np.ndarray:
        """Boolean mask over images: those of held-out scenes (group split); none for the pair split."""
        groups = np.asarray(groups)
        if self.split == "group":
            return split_groups(groups, self.test_size, self.seed)
        return np.zeros(len(groups), bool)

    def test_images(self, groups) -> np.ndarray:
        """Indices of the images a test-side metric (retrieval mAP) ranks: the held-out scenes on a group
        split; every image on the pair split, whose test pairs reuse training images."""
        if self.split == "group":
            return np.flatnonzero(self.held_out(groups))
        return np.arange(len(groups))


def unchecked(**values) -> Protocol:
    """A protocol as stored, without validation: for showing an old run whose settings are now out of
    bounds (never for building pairs)."""
    protocol = object.__new__(Protocol)
    for name in Protocol.names():
        default = options.default(name)
        value = values.get(name)
        object.__setattr__(protocol, name, default if value is None else value)
    return protocol


# --------------------------------------------------------------------------- the operating threshold

#: Share of a run's training scenes held out as validation scenes to choose its threshold.
VALIDATION_SIZE = 0.25


def validation_pairs(protocol: Protocol, split_pairs: SplitPairs, groups, vectors=None) -> SplitPairs | None:
    """Pairs to choose a run's threshold on, never touching its test pairs: ``train`` and ``test`` masks over
    them are the validation split's training side and its validation pairs.

    The run's training scenes (all scenes on the pair split) are split again by scene, seeded by the run's
    seed: :data:`VALIDATION_SIZE` of them held out as validation scenes, pairs built inside each side by the
    run's own protocol (same negatives and ratio, hard negatives mined among the training images), so
    validation pairs look like test pairs and no image is on both sides. A pair that is one of the run's test
    pairs (pair split) is left out, and each side is brought back to the training pairs' share of positives
    by dropping a seeded random few of the other label. None when the training scenes are too few.
    """
    groups = np.asarray(groups)
    images = np.flatnonzero(~protocol.held_out(groups))
    inner = replace(protocol, split="group", test_size=VALIDATION_SIZE)
    try:
        sub = inner.pairs(groups[images], None if vectors is None or not protocol.needs_vectors
                          else np.asarray(vectors)[images])
    except ValueError as exc:
        log.info("no validation scenes (%s): threshold 0.5", exc)
        return None
    left, right, label = images[sub.pairs.left], images[sub.pairs.right], sub.pairs.label
    keep = np.ones(len(label), bool)
    if protocol.split == "pair":
        test = split_pairs.test_pairs
        tested = set(zip(np.minimum(test.left, test.right).tolist(), np.maximum(test.left, test.right).tolist()))
        keep = np.array([pair not in tested for pair in zip(np.minimum(left, right).tolist(),
                                                             np.maximum(left, right).tolist())], bool)
    target = float(np.mean(split_pairs.pairs.label[split_pairs.train]))
    rng = np.random.default_rng(protocol.seed)
    for side in (sub.train, sub.test):
        keep &= ~side | _balanced(label, keep & side, target, rng)
    train, val = sub.train & keep, sub.test & keep
    if any(set(np.unique(label[mask]).tolist()) != {0, 1} for mask in (train, val)):
        log.info("validation scenes lack positive or negative pairs: threshold 0.5")
        return None
    return SplitPairs(Pairs(left, right, label), train, val)


def _balanced(label: np.ndarray, mask: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``mask`` less a seeded random few pairs of one label, so that ``share`` of what is left is positive."""
    pos, neg = np.flatnonzero(mask & (label == 1)), np.flatnonzero(mask & (label == 0))
    if not len(pos) or not len(neg) or not 0 < share < 1:
        return mask
    want_neg = round(len(pos) * (1 - share) / share)
    out = mask.copy()
    if want_neg < len(neg):
        out[rng.choice(neg, len(neg) - want_neg, replace=False)] = False
    else:
        want_pos = round(len(neg) * share / (1 - share))
        if want_pos < len(pos):
            out[rng.choice(pos, len(pos) - want_pos, replace=False)] = False
    return out
