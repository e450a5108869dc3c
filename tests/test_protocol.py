"""Protocol builds the same pairs as build_pairs (plus the hard negatives search mines), and reads old configs."""

import hashlib

import numpy as np
import pytest

from simlab import search
from simlab.pairs import build_pairs, mine_hard_negatives
from simlab.protocol import Protocol, SplitPairs, unchecked


def scenes(n_groups: int = 40, dim: int = 16, seed: int = 7):
    """Groups of 1 to 5 images whose vectors sit around one centre per group."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=n_groups)
    groups = np.repeat([f"g{i:02d}" for i in range(n_groups)], sizes)
    centres = rng.normal(size=(n_groups, dim))
    vectors = (np.repeat(centres, sizes, axis=0) + 0.8 * rng.normal(size=(len(groups), dim))).astype(np.float32)
    return groups, vectors


def digest(pairs, train, test) -> str:
    h = hashlib.sha256()
    for a in (pairs.left, pairs.right, pairs.label, train, test):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# Pairs of scenes() built by simlab before Protocol existed (build_pairs, and search.hard_negative_pairs
# for "hard"): (split, negatives, ratio, seed) -> digest of left, right, label, train and test.
BEFORE = {
    ("group", "random", 1.0, 0): "97bb6461e2fddef3", ("group", "random", 2.0, 3): "f49f94f9e1bf1bfb",
    ("group", "same_left", 1.0, 0): "b6e7a9b8d2b0a272", ("group", "same_left", 2.0, 3): "d9008b41da4ba881",
    ("group", "hard", 1.0, 0): "327e4dad3ecacb59", ("group", "hard", 2.0, 3): "c2fddaf20aa200f3",
    ("pair", "random", 1.0, 0): "a46b78401ad0fef2", ("pair", "random", 2.0, 3): "a3f30b5105652fee",
    ("pair", "same_left", 1.0, 0): "6afa2211d99dc43f", ("pair", "same_left", 2.0, 3): "1645d6960f5cc1c3",
    ("pair", "hard", 1.0, 0): "5241372ed34ec323", ("pair", "hard", 2.0, 3): "e6efa6a61fb7dd60",
}


@pytest.mark.parametrize("key", sorted(BEFORE))
def test_pairs_are_the_ones_simlab_built_before(key):
    split, negatives, ratio, seed = key
    groups, vectors = scenes()
    built = Protocol(split=split, negatives=negatives, negative_ratio=ratio, seed=seed).pairs(groups, vectors)
    assert isinstance(built, SplitPairs)
    assert digest(*built) == BEFORE[key]


@pytest.mark.parametrize("split", ["group", "pair"])
def test_hard_negatives_are_the_same_with_the_search_index_or_the_exact_default(split):
    groups, vectors = scenes(seed=11)
    index = search.build_index(vectors, kind="flat")
    hard = mine_hard_negatives(vectors, groups, k=2, index=index)
    expected = build_pairs(groups, split, 0.3, 1.5, "random", 5, hard_negatives=hard)
    protocol = Protocol(split=split, negatives="hard", negative_ratio=1.5, seed=5, hard_k=2)
    assert digest(*protocol.pairs(groups, vectors)) == digest(*expected)
    assert digest(*protocol.pairs(groups, vectors, index=index)) == digest(*expected)


def test_split_pairs_unpack_like_build_pairs_and_keep_images_apart():
    groups, _ = scenes()
    pairs, train, test = Protocol(seed=2).pairs(groups)
    left_test = set(pairs.left[test]) | set(pairs.right[test])
    left_train = set(pairs.left[train]) | set(pairs.right[train])
    assert not left_test & left_train
    built = Protocol(seed=2).pairs(groups)
    assert len(built.train_pairs) == train.sum() and len(built.test_pairs) == test.sum()


def test_test_images_are_the_held_out_scenes_on_a_group_split_and_all_on_a_pair_split():
    groups, _ = scenes()
    protocol = Protocol(seed=1)
    pairs, train, test = protocol.pairs(groups)
    images = protocol.test_images(groups)
    assert set(pairs.left[test]) | set(pairs.right[test]) <= set(images)
    assert not set(groups[images]) & set(groups[pairs.left[train]])
    assert set(groups[images]) | set(groups[pairs.left[train]]) | set(groups[pairs.right[train]]) >= {
        g for g in groups if (groups == g).sum() > 1}  # every scene with a pair is on one side
    assert len(Protocol(split="pair").test_images(groups)) == len(groups)


def test_hard_negatives_need_vectors():
    groups, vectors = scenes()
    with pytest.raises(ValueError, match="pass the vectors"):
        Protocol(negatives="hard").pairs(groups)
    with pytest.raises(ValueError, match="one vector per image"):
        Protocol(negatives="hard").pairs(groups, vectors[:-1])


def test_too_few_groups_says_why():
    with pytest.raises(ValueError, match="at least 2 groups"):
        Protocol(test_size=0.3).pairs(["a", "a", "b", "b", "c", "c"])


def test_from_config_reads_grid_and_finetune_configs_and_fills_defaults_once():
    grid = {"dataset": "demo", "backbones": ["b"], "split": "pair", "test_size": 0.3, "negative_ratio": 1,
            "negatives": "same_left", "seed": 0, "weights": "imagenet", "fusion": False, "ray": None}
    protocol = Protocol.from_config(grid)
    assert protocol == Protocol(split="pair", negatives="same_left")
    assert isinstance(protocol.negative_ratio, float)
    assert Protocol.from_config({}) == Protocol()
    assert Protocol.from_config({"seed": None}, split="pair", seed=9) == Protocol(split="pair", seed=9)
    assert Protocol.from_config(protocol.to_dict()) == protocol
    assert "pair split · 30% test · same_left negatives x1 · seed 0" in protocol.describe()


@pytest.mark.parametrize("bad", [{"split": "rows"}, {"test_size": 1.0}, {"negative_ratio": 0},
                                 {"negative_ratio": float("nan")}, {"seed": -1}, {"negatives": "easy"},
                                 {"weights": "noisy"}, {"hard_k": 0}])
def test_bad_settings_are_refused_naming_the_option(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"^{name} must be"):
        Protocol(**bad)


def test_unchecked_keeps_what_was_stored_for_display():
    assert unchecked(negative_ratio=0, seed=None).negative_ratio == 0
    assert unchecked(seed=None).seed == 0


def test_retrieval_map_on_the_test_images_is_the_map_of_that_subset():
    from simlab.evaluate import retrieval_map, retrieval_map_on

    groups, vectors = scenes()
    images = Protocol(seed=4).test_images(groups)
    assert retrieval_map_on(vectors, groups, images) == retrieval_map(vectors[images], groups[images])


def test_the_study_grid_is_the_study_protocol():
    from simlab.reference import STUDY, STUDY_PROTOCOL

    assert Protocol.from_config(STUDY_PROTOCOL) == STUDY
    assert STUDY_PROTOCOL == {"backbones": ["vgg16_fc2", "vgg19_fc2", "inceptionv3", "resnet50", "xception"],
                              "merges": ["dot", "l1", "l2"], "classifiers": ["gnb", "linsvc", "xgboost", "rf"],
                              "split": "pair", "test_size": 0.3, "negative_ratio": 1.0, "negatives": "same_left",
                              "weights": "imagenet", "library_defaults": True}
