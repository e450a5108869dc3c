"""Ray: vectorising with Ray Data and XGBoost through Ray Train, on one local Ray instance.

Real parts: a local Ray cluster (2 CPUs), the bundled Keras backbone with random weights, real
JPEG files, a real worker process killed with os._exit mid-run. One Ray instance for the module.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from helpers import simlab_cache_at, write_group_folder
from simlab.paths import REPO_ROOT

ray = pytest.importorskip("ray")

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SIMLAB_CACHE in a temp folder, a small dataset with one corrupt file, and a local Ray instance."""
    cache = tmp_path_factory.mktemp("cache")
    root = write_group_folder(tmp_path_factory.mktemp("ds"), n_groups=4, per_group=3, size=64, seed=1)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    broken = root / "g000" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(5, str(broken))
    with simlab_cache_at(cache):
        from simlab.distributed import connect
        from simlab.vectors import compute_vectors

        connect("local", num_cpus=2)
        reference, ref_errors = compute_vectors(paths, BACKBONE, "random", batch_size=4)
        yield {"paths": paths, "reference": reference, "errors": ref_errors, "cache": cache}
        ray.shutdown()


def test_plain_simlab_does_not_import_ray():
    code = ("import sys, simlab.vectors, simlab.experiment, simlab.search, simlab.distributed, simlab.cli; "
            "print('ray' in sys.modules, 'faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_ray_vectors_equal_the_in_process_ones(cluster, tmp_path):
    from simlab.vectors.ray import ray_vectorize

    seen = []
    vectors, errors = ray_vectorize(cluster["paths"], BACKBONE, "random", address="local", batch_size=4,
                                    shard_dir=str(tmp_path / "shards"), progress=lambda *a, **fields: seen.append(a))
    assert vectors.shape == cluster["reference"].shape and vectors.dtype == np.float32
    ok = [i for i, e in enumerate(cluster["errors"]) if not e]
    np.testing.assert_allclose(vectors[ok], cluster["reference"][ok], rtol=1e-4, atol=1e-5)
    assert [bool(e) for e in errors] == [bool(e) for e in cluster["errors"]]
    assert "not an image" in errors[5] or "corrupt" in errors[5] or "truncated" in errors[5]
    assert seen and seen[-1][:2] == (len(cluster["paths"]), len(cluster["paths"]))
    assert list((tmp_path / "shards").glob("*.parquet"))  # an explicit shard folder is kept


def test_a_killed_worker_is_retried_and_the_result_is_complete(cluster, tmp_path):
    from simlab.vectors.ray import ray_vectorize

    decode_marker, embed_marker = tmp_path / "decode.crashed", tmp_path / "embed.crashed"
    vectors, errors = ray_vectorize(cluster["paths"], BACKBONE, "random", address="local", batch_size=4,
                                    crash_once=f"decode:{decode_marker},embed:{embed_marker}")
    # both a decode task's worker and an embedding actor really died (another process, os._exit)
    for marker in (decode_marker, embed_marker):
        text = marker.read_text()
        assert "crashed in pid" in text and int(text.split()[-1]) != os.getpid()
    ok = [i for i, e in enumerate(cluster["errors"]) if not e]
    np.testing.assert_allclose(vectors[ok], cluster["reference"][ok], rtol=1e-4, atol=1e-5)
    assert len(errors) == len(cluster["paths"])
    assert not list((cluster["cache"] / "shards").rglob("*.parquet"))  # default shard folders are cleaned up


def test_xgboost_through_ray_train_matches_the_local_fit(cluster):
    from simlab.classifiers import make_classifier
    from simlab.distributed import RayXGBClassifier, ray_fit_xgboost
    from simlab.evaluate import pair_metrics
    from simlab.merge import merge_pairs
    from simlab.pairs import build_pairs

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)
    vectors = (rng.standard_normal((60, 24))[groups] + 0.8 * rng.standard_normal((240, 24))).astype(np.float32)
    pairs, train, test = build_pairs(groups, seed=0)
    X_train = merge_pairs(vectors, pairs.left[train], pairs.right[train], "l1")
    X_test = merge_pairs(vectors, pairs.left[test], pairs.right[test], "l1")
    y_train, y_test = pairs.label[train], pairs.label[test]

    local = make_classifier("xgboost", random_state=0).fit(X_train, y_train)
    local_metrics = pair_metrics(y_test, local.predict_proba(X_test)[:, 1])
    model = ray_fit_xgboost(X_train, y_train, {"random_state": 0}, address="local", num_workers=2)
    assert isinstance(model, RayXGBClassifier) and model.params["num_workers"] == 2
    prob = model.predict_proba(X_test)
    assert prob.shape == (len(X_test), 2) and np.allclose(prob.sum(axis=1), 1)
    ray_metrics = pair_metrics(y_test, prob[:, 1])
    assert ray_metrics["accuracy"] > 0.8
    assert abs(ray_metrics["accuracy"] - local_metrics["accuracy"]) < 0.05
    assert abs(ray_metrics["auc"] - local_metrics["auc"]) < 0.03
    buffer = io.BytesIO()
    pickle.dump(model, buffer)  # joblib/pickle round trip, as the re-rank cache does
    again = pickle.loads(buffer.getvalue())
    np.testing.assert_allclose(again.predict_proba(X_test), prob)
