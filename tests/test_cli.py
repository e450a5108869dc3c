import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_group_folder


def simlab(*args, cache, timeout=600):
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "simlab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_group_folder(tmp_path_factory.mktemp("cli") / "ds", n_groups=14, per_group=3)


def test_run_end_to_end_prints_one_json_line_per_run(dataset, tmp_path):
    res = simlab("run", "--dataset", f"folder:{dataset}", "--backbone", "efficientnet_lite0", "--weights", "random",
                 "--merge", "dot", "l1", "--classifier", "cosine", "logreg", "--json", cache=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4
    cells = {(m, c) for m in ("dot", "l1") for c in ("cosine", "logreg")}
    assert {(r["merge"], r["classifier"]) for r in rows} == cells
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["auc"] <= 1 and r["backbone"] == "efficientnet_lite0"
        assert r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"]

    listed = simlab("runs", "--json", cache=tmp_path)
    assert listed.returncode == 0
    stored = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["id"] for r in stored} == {r["run_id"] for r in rows}
    table = simlab("runs", cache=tmp_path).stdout
    assert "efficientnet_lite0" in table and "accuracy" in table


def test_vectorize_writes_the_npz(dataset, tmp_path):
    out = tmp_path / "v.npz"
    res = simlab("vectorize", "--dataset", f"folder:{dataset}", "--backbone", "efficientnet_lite0", "--weights",
                 "random", "--out", str(out), "--json", cache=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == 42
    with np.load(out) as z:
        assert z["vectors"].shape == (42, 1280)
        assert len(z["paths"]) == len(z["groups"]) == 42


def test_errors_are_one_clear_line(tmp_path):
    res = simlab("run", "--dataset", f"folder:{tmp_path / 'nowhere'}", cache=tmp_path)
    assert res.returncode == 2
    assert "error:" in res.stderr and "Traceback" not in res.stderr
    res = simlab("vectorize", "--backbone", "nonesuch", cache=tmp_path)
    assert res.returncode == 2 and "efficientnet_lite0" in res.stderr


def test_backbones_lists_the_bundled_one_first(tmp_path):
    res = simlab("backbones", "--json", cache=tmp_path)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["name"] == "efficientnet_lite0" and rows[0]["weights"] == "bundled"
    assert {"vgg16", "vgg19", "resnet50", "inceptionv3", "xception"} <= {r["name"] for r in rows}
