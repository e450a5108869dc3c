"""The core's "run again" (experiment.rerun_config) and the rule for two runs compared pair by pair
(evaluate.not_comparable), on real stored runs in a real SQLite store."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import pytest

from simlab.evaluate import not_comparable
from simlab.experiment import GridConfig, rerun_config
from simlab.protocol import Protocol
from simlab.runspec import RunSpec, fused_name, run_key
from simlab.store import Store


def stored(store: Store, spec: RunSpec, **columns):
    run_id = store.add_run(dataset=spec.dataset, fingerprint="fp0", backbone=spec.backbone, merge=spec.merge,
                           classifier=spec.classifier, split=spec.protocol.split, seed=spec.protocol.seed,
                           config=spec.to_dict(), **columns)
    return run_id


def preds(labels: list[int], shift: float = 0.0) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"left_path": [f"l{i}.jpg" for i in range(n)], "right_path": [f"r{i}.jpg" for i in range(n)],
                         "left_group": ["a"] * n, "right_group": ["b"] * n, "label": labels,
                         "prob": [min(1.0, 0.2 + 0.6 * y + shift) for y in labels]})


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "simlab.db")


def test_run_again_reproduces_a_grid_runs_configuration(store):
    protocol = Protocol(split="pair", test_size=0.3, negatives="same_left", negative_ratio=2.0, seed=7,
                        weights="random")
    spec = RunSpec(backbone="phash", merge="l1", classifier="logreg", dataset="demo", protocol=protocol,
                   library_defaults=True)
    run = store.get(stored(store, spec))
    config = rerun_config(run)
    assert isinstance(config, GridConfig)
    assert (config.backbones, config.merges, config.classifiers) == (["phash"], ["l1"], ["logreg"])
    assert (config.split, config.test_size, config.negatives, config.negative_ratio, config.seed, config.weights) == (
        "pair", 0.3, "same_left", 2.0, 7, "random")
    assert config.library_defaults and not config.fusion and not config.reuse
    assert config.validate().cells() == [("phash", "l1", "logreg")]
    assert config.cell_spec(config.cells()[0]).key("fp0") == run_key(run)  # the same configuration, seed included
    assert GridConfig(**asdict(config)) == config  # what a grid job receives as its params


def test_run_again_of_a_fused_run_reruns_its_parts_and_their_fusion(store):
    fused = fused_name(["efficientnet_lite0", "phash"])
    run = store.get(stored(store, RunSpec(backbone=fused, merge="dot", classifier="cosine")))
    config = rerun_config(run)
    assert config.backbones == ["efficientnet_lite0", "phash"] and config.fusion
    assert (fused, "dot", "cosine") in config.cells()
    assert config.cell_spec((fused, "dot", "cosine")).key("fp0") == run_key(run)


def test_run_again_reads_an_old_row_and_refuses_a_fine_tune_run(store):
    old = store.add_run(dataset="demo", backbone="phash", merge="dot", classifier="logreg", split="group", seed=3)
    config = rerun_config(store.get(old))  # no config stored: the columns say what ran
    assert (config.backbones, config.split, config.seed) == (["phash"], "group", 3)
    tuned = store.add_run(dataset="demo", backbone="phash", merge="siamese", classifier="contrastive",
                          kind="finetune", config={"mode": "siamese", "loss": "contrastive", "backbone": "phash"})
    assert rerun_config(store.get(tuned)) is None


def test_two_runs_are_comparable_when_done_on_the_same_test_pairs(store):
    spec = RunSpec(backbone="phash", merge="dot", classifier="cosine")
    a, b, c, d = (stored(store, spec) for _ in range(4))
    store.finish_run(a, {"accuracy": 0.5}, preds([1, 0, 1, 0]))
    store.finish_run(b, {"accuracy": 0.6}, preds([1, 0, 1, 0], shift=0.1).iloc[::-1])  # same pairs, any order
    store.finish_run(c, {"accuracy": 0.7}, preds([1, 1, 0, 0]))
    runs = {i: store.get(i) for i in (a, b, c, d)}
    keys = store.test_pairs_keys([a, b, c, d])
    assert not_comparable(runs[a], runs[b], keys) is None
    assert "different test pairs" in not_comparable(runs[a], runs[c], keys)
    assert "finished" in not_comparable(runs[a], runs[d], keys)  # d is still running
    assert "different test pairs" in not_comparable(runs[a], runs[b], {})  # predictions not stored
