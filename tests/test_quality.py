"""benchmarks/quality.py end to end on a tiny folder dataset: one JSON object, one row per backbone, every
field there and consistent with simlab's own numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import simlab_cache_at, write_group_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    spec = f"folder:{write_group_folder(root / 'ds', n_groups=10, per_group=3, size=64)}"
    cache = root / "cache"
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--dataset", spec,
                          "--backbone", "phash", "dhash", "--merges", "l1", "--classifiers", "logreg",
                          "--speed-images", "8", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1  # stdout is the JSON object alone; the table goes to stderr
    return json.loads(lines[0]), res.stderr, spec, cache


def test_one_row_per_backbone_with_every_field(result):
    out, stderr, spec, _ = result
    assert out["benchmark"] == "quality" and out["dataset"] == spec
    assert out["merges"] == ["dot", "l1"] and out["classifiers"] == ["cosine", "logreg"]  # the baseline added
    assert [r["backbone"] for r in out["rows"]] == ["phash", "dhash"]
    for row in out["rows"]:
        assert row["dim"] == 64 and row["images"] == 30 and row["cells"] == 4
        for key in ("auc_all", "map_all", "p_at_1", "cosine_auc", "cosine_acc", "map_test", "best_acc", "best_lo",
                    "best_hi", "best_auc"):
            assert 0 <= row[key] <= 1, key
        assert row["best_lo"] <= row["best_acc"] <= row["best_hi"]
        assert row["chosen_on"] == "validation" and 0 <= row["val_acc"] <= 1  # never picked on the test pairs
        assert row["best_cell"] == f"{row['best_merge']} + {row['best_classifier']}"
        assert row["best_merge"] in ("dot", "l1") and row["best_classifier"] in ("cosine", "logreg")
        assert row["img_s"] > 0 and row["speed_images"] == 8  # all computed: a scratch vector cache
        assert row["backbone"] in stderr and "map_test" in stderr


def test_numbers_are_simlabs_own(result, tmp_path):
    out, _, spec, cache = result
    from simlab.data import load_dataset
    from simlab.evaluate import retrieval_map_on
    from simlab.experiment import GridConfig, run_grid
    from simlab.protocol import Protocol
    from simlab.store import Store
    from simlab.vectors import vectorize

    row = out["rows"][0]
    with simlab_cache_at(cache):
        vs = vectorize(load_dataset(spec), "phash")
        assert vs.computed == 0  # the script cached the dataset's vectors where simlab keeps them
        cells = {(c["merge"], c["classifier"]): c for c in run_grid(
            GridConfig(dataset=spec, backbones=["phash"], merges=["dot", "l1"], classifiers=["cosine", "logreg"]),
            Store(tmp_path / "simlab.db"))}
    protocol = Protocol(seed=0)
    assert row["map_test"] == pytest.approx(retrieval_map_on(vs.vectors, vs.groups, protocol.test_images(vs.groups)),
                                            abs=1e-4)
    cosine = cells["dot", "cosine"]
    assert row["cosine_auc"] == pytest.approx(cosine["auc"], abs=1e-4)
    assert row["cosine_acc"] == pytest.approx(cosine["accuracy"], abs=1e-4)
    best = cells[row["best_merge"], row["best_classifier"]]  # the cell chosen on validation, scored on test
    assert row["best_acc"] == pytest.approx(best["accuracy"], abs=1e-4)
    assert row["best_acc"] <= max(c["accuracy"] for c in cells.values())
    assert (row["best_lo"], row["best_hi"]) == pytest.approx((best["accuracy_lo"], best["accuracy_hi"]), abs=1e-4)
    assert row["n_test"] == best["n_test"] and np.isfinite(row["grid_s"])


def test_all_images_figures_match_a_plain_computation(result):
    """map_all, p_at_1 and auc_all against straightforward loops over the same vectors: every image a query
    ranking all the others by cosine similarity (ties in index order), AP averaged over every query with a
    match; the AUC as the share of (same, different) pairs ordered right, ties counting half."""
    out, _, spec, cache = result
    from simlab.data import load_dataset
    from simlab.vectors import vectorize

    for row in out["rows"]:
        with simlab_cache_at(cache):
            vs = vectorize(load_dataset(spec), row["backbone"])
        v = np.asarray(vs.vectors, np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        sim = v @ v.T
        groups = list(vs.groups)
        n = len(groups)
        aps, hits = [], []
        for q in range(n):
            ranked = sorted((j for j in range(n) if j != q), key=lambda j: (-sim[q, j], j))
            relevant = [groups[j] == groups[q] for j in ranked]
            if not any(relevant):
                continue
            found, precisions = 0, []
            for k, rel in enumerate(relevant, start=1):
                if rel:
                    found += 1
                    precisions.append(found / k)
            aps.append(sum(precisions) / len(precisions))
            hits.append(relevant[0])
        assert row["map_all"] == pytest.approx(sum(aps) / len(aps), abs=1e-4)
        assert row["p_at_1"] == pytest.approx(sum(hits) / len(hits), abs=1e-4)
        same = [sim[i, j] for i in range(n) for j in range(i + 1, n) if groups[i] == groups[j]]
        other = [sim[i, j] for i in range(n) for j in range(i + 1, n) if groups[i] != groups[j]]
        ordered = sum((a > b) + 0.5 * (a == b) for a in same for b in other)
        assert row["auc_all"] == pytest.approx(ordered / (len(same) * len(other)), abs=1e-3)
