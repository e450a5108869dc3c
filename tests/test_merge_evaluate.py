import numpy as np
import pytest

from simlab.evaluate import average_precision, bootstrap_interval, pair_metrics, retrieval_map
from simlab.merge import MERGES, fuse, merge_pairs

A = np.array([[3.0, 4.0, 0.0]])
B = np.array([[0.0, 4.0, 3.0]])


def test_dot_is_the_product_of_normalised_vectors():
    out = MERGES["dot"].fn(A, B)
    np.testing.assert_allclose(out, [[0.0, 16 / 25, 0.0]])
    assert out.sum() == pytest.approx(0.64)  # the cosine


def test_l1_l2_concat_by_hand():
    np.testing.assert_allclose(MERGES["l1"].fn(A, B), [[3, 0, 3]])
    np.testing.assert_allclose(MERGES["l2"].fn(A, B), [[9, 0, 9]])
    np.testing.assert_allclose(MERGES["concat"].fn(A, B), [[0, 0.64, 0, 3, 0, 3, 9, 0, 9]])


def test_merge_pairs_indexes_and_is_float32():
    vectors = np.vstack([A, B, A * 2])
    out = merge_pairs(vectors, np.array([0, 0]), np.array([1, 2]), "l1")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[3, 0, 3], [3, 4, 0]])


def test_fusion_concatenates_normalised_sets():
    out = fuse([np.array([[3.0, 4.0]]), np.array([[2.0]])])
    np.testing.assert_allclose(out, [[0.6, 0.8, 1.0]])


def test_pair_metrics_by_hand():
    y = [1, 1, 0, 0]
    p = [0.9, 0.4, 0.6, 0.1]
    m = pair_metrics(y, p)
    assert m["accuracy"] == 0.5
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["auc"] == 0.75
    assert m["accuracy_lo"] <= 0.5 <= m["accuracy_hi"]
    assert pair_metrics(y, p, threshold=0.65)["accuracy"] == 0.75


def test_bootstrap_interval_narrows_with_more_pairs():
    rng = np.random.default_rng(0)
    small = bootstrap_interval(rng.random(100) < 0.9)
    large = bootstrap_interval(rng.random(2000) < 0.9)
    assert small[1] - small[0] > large[1] - large[0]
    assert 0.85 < large[0] < 0.9 < large[1] < 0.92


def test_average_precision_and_map_by_hand():
    assert average_precision(np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], float)
    groups = ["a", "a", "b", "b"]
    assert retrieval_map(vectors, groups) == 1.0
    swapped = np.array([[1, 0], [0, 1], [0.1, 0.9], [0.9, 0.1]], float)
    # query 0 finds its match at rank 3, query 2 at rank 2
    assert retrieval_map(swapped, groups) == pytest.approx((1 / 3 + 1 / 2) / 2)
