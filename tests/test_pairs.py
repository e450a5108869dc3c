import numpy as np
import pytest

from simlab.pairs import build_pairs, group_folds, make_pairs, positive_pairs


def test_groups_of_three_two_one_give_four_positives():
    groups = ["a", "a", "a", "b", "b", "c"]
    left, right = positive_pairs(groups)
    assert len(left) == 4
    assert {(int(a), int(b)) for a, b in zip(left, right)} == {(0, 1), (0, 2), (1, 2), (3, 4)}


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_negatives_follow_ratio_and_cross_groups(ratio):
    groups = np.repeat(np.arange(20), 3)
    pairs = make_pairs(groups, negative_ratio=ratio, seed=1)
    pos = pairs.label == 1
    assert pos.sum() == 60
    assert (~pos).sum() == int(round(ratio * 60))
    assert np.all(groups[pairs.left[~pos]] != groups[pairs.right[~pos]])
    assert np.all(groups[pairs.left[pos]] == groups[pairs.right[pos]])
    keys = {(min(a, b), max(a, b)) for a, b in zip(pairs.left, pairs.right)}
    assert len(keys) == len(pairs)  # no duplicate pair


def test_same_left_scheme_reuses_positive_left_images():
    groups = np.repeat(np.arange(10), 3)
    pairs = make_pairs(groups, scheme="same_left", seed=0)
    pos_images = set(pairs.left[pairs.label == 1]) | set(pairs.right[pairs.label == 1])
    neg = pairs.label == 0
    assert all(a in pos_images or b in pos_images for a, b in zip(pairs.left[neg], pairs.right[neg]))


def test_seeded_pairs_are_repeatable_and_seed_matters():
    groups = np.repeat(np.arange(30), 3)
    a, b, c = (make_pairs(groups, seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)
    assert not (np.array_equal(a.left, c.left) and np.array_equal(a.right, c.right))


def test_group_split_shares_no_image_between_train_and_test():
    groups = np.repeat(np.arange(50), 3)
    pairs, train, test = build_pairs(groups, split="group", test_size=0.3, seed=0)
    train_images = set(pairs.left[train]) | set(pairs.right[train])
    test_images = set(pairs.left[test]) | set(pairs.right[test])
    assert train_images.isdisjoint(test_images)
    assert not (train & test).any() and (train | test).all()
    # both sides keep the 1:1 ratio
    assert pairs.label[train].mean() == pytest.approx(0.5)
    assert pairs.label[test].mean() == pytest.approx(0.5)
    assert 0.2 < test.sum() / len(pairs) < 0.4


def test_pair_split_is_the_leaky_one():
    groups = np.repeat(np.arange(50), 3)
    pairs, train, test = build_pairs(groups, split="pair", test_size=0.3, seed=0)
    assert test.sum() == round(0.3 * len(pairs))
    shared = (set(pairs.left[train]) | set(pairs.right[train])) & (set(pairs.left[test]) | set(pairs.right[test]))
    assert shared  # the same images in train and test: why it is not the default


def test_group_folds_partition_images():
    groups = np.repeat(np.arange(10), 2)
    folds = group_folds(groups, k=5)
    assert np.array_equal(np.sum(folds, axis=0), np.ones(20))
    for f in folds:
        assert len(set(groups[f])) == 2


def test_bad_parameters_say_what_is_wrong():
    with pytest.raises(ValueError, match="scheme"):
        make_pairs([0, 0, 1, 1], scheme="bogus")
    with pytest.raises(ValueError, match="two groups"):
        make_pairs([0, 0, 0])
    with pytest.raises(ValueError, match="split"):
        build_pairs([0, 0, 1, 1], split="bogus")
