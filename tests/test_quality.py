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
                          "--backbones", "phash", "dhash", "--merges", "l1", "--classifiers", "logreg",
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
        for key in ("cosine_auc", "cosine_acc", "map_test", "map_all", "best_acc", "best_lo", "best_hi", "best_auc"):
            assert 0 <= row[key] <= 1, key
        assert row["best_lo"] <= row["best_acc"] <= row["best_hi"]
        assert row["best_acc"] >= row["cosine_acc"]  # the cosine cell is one of the grid's cells
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
    best = max(cells.values(), key=lambda c: (c["accuracy"], c["auc"]))
    assert row["best_acc"] == pytest.approx(best["accuracy"], abs=1e-4)
    assert (row["best_lo"], row["best_hi"]) == pytest.approx((best["accuracy_lo"], best["accuracy_hi"]), abs=1e-4)
    assert row["n_test"] == best["n_test"] and np.isfinite(row["grid_s"])
