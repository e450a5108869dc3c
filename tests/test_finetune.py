"""Fine-tuning: both modes end to end on real Keras models and a real SQLite store."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import simlab_cache_at, write_group_folder
from simlab.finetune.config import FinetuneConfig
from simlab.finetune.layers import PairMerge, load_checkpoint, pair_pipeline
from simlab.finetune.models import unfreeze_top
from simlab.finetune.train import run_finetune
from simlab.store import Store

BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module, so the frozen vectors are computed once."""
    path = tmp_path_factory.mktemp("ft_cache")
    with simlab_cache_at(path):
        yield path


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return f"folder:{write_group_folder(tmp_path_factory.mktemp('ft') / 'ds', n_groups=12, per_group=3)}"


@pytest.fixture(scope="module")
def store(cache):
    return Store(cache / "simlab.db")


def config(spec, **kw):
    return FinetuneConfig(**{"dataset": spec, "weights": "random", "epochs": 2, "batch_size": 8, **kw})


def check_recorded(store, result, epochs):
    run = store.get(result["run_id"])
    assert run.kind == "finetune" and run.status == "done"
    assert run.metrics["accuracy"] == result["accuracy"] and 0 <= result["auc"] <= 1
    curves = store.curves(result["run_id"])
    batch = curves[curves.name == "batch_loss"]
    steps = run.artifacts["steps_per_epoch"]
    if run.classifier != "multi-similarity":  # batches of 8 pairs; multi-similarity batches 8 images of scenes
        assert steps == math.ceil(run.metrics["n_train"] / 8)
    assert len(batch) == epochs * steps
    assert list(batch.step) == list(range(1, len(batch) + 1)) and np.isfinite(batch.value).all()
    for name in ("loss", "accuracy"):
        assert list(curves[curves.name == name].epoch) == list(range(1, epochs + 1))
    for name in ("val_loss", "val_accuracy"):  # epoch 0: validation before any training
        assert list(curves[curves.name == name].epoch) == list(range(0, epochs + 1))
    assert os.path.exists(run.artifacts["checkpoint"])
    predictions = store.predictions(result["run_id"])
    assert len(predictions) == result["n_test"] and predictions.prob.between(0, 1).all()
    return run, predictions


def test_head_on_frozen_vectors_end_to_end_on_the_grid_split(spec, store):
    from simlab.data import load_dataset
    from simlab.pairs import build_pairs
    from simlab.vectors import vectorize

    result = run_finetune(config(spec, mode="head"), store)
    assert {"mode", "backbone", "accuracy", "auc", "epochs_run"} <= set(result)
    assert result["epochs_run"] == 2 and result["status"] == "done"
    run, predictions = check_recorded(store, result, 2)
    assert (run.backbone, run.merge, run.classifier) == (BACKBONE, "head-dot", "finetune-head")
    # The same test pairs as a grid run on these vectors.
    vs = vectorize(load_dataset(spec), BACKBONE, "random")
    pairs, _, test = build_pairs(vs.groups, seed=0)
    paths = np.asarray(vs.paths)
    assert list(predictions.left_path) == list(paths[pairs.left[test]])
    assert list(predictions.label) == list(pairs.label[test])
    model = load_checkpoint(run.artifacts["checkpoint"])
    assert model.output_shape == (None, 2)


def test_seeded_runs_repeat(spec, store):
    a = run_finetune(config(spec, mode="head", seed=3), store)
    b = run_finetune(config(spec, mode="head", seed=3), store)
    assert a["accuracy"] == b["accuracy"] and a["auc"] == pytest.approx(b["auc"])
    ca, cb = store.curves(a["run_id"]), store.curves(b["run_id"])
    assert list(ca.name) == list(cb.name)
    np.testing.assert_allclose(ca.value, cb.value, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store.predictions(a["run_id"]).prob, store.predictions(b["run_id"]).prob,
                               rtol=1e-4, atol=1e-6)


def test_siamese_end_to_end_and_its_tower_is_a_backbone(spec, store, cache):
    from simlab.backbones import get_backbone, list_backbones
    from simlab.data import load_dataset
    from simlab.experiment import GridConfig, run_grid
    from simlab.vectors import vectorize

    result = run_finetune(config(spec, mode="siamese"), store)
    run, _ = check_recorded(store, result, 2)
    assert (run.merge, run.classifier) == ("siamese", "multi-similarity")
    assert {"map", "map_frozen", "accuracy_cosine", "tuned_backbone", "whitening_shrinkage"} <= set(run.metrics)
    assert run.metrics["selected_by"] == "val_map" and run.metrics["best_val_map"] is not None
    name = result["tuned_backbone"]
    assert os.path.exists(run.artifacts["tower"])
    # From learned whitening the embedding keeps the backbone's size (a rotation, nothing thrown away).
    assert name in [b.name for b in list_backbones()] and get_backbone(name).dim == 1280

    ds = load_dataset(spec)
    cached = vectorize(ds, name, "random")
    assert cached.computed == 0 and cached.vectors.shape == (36, 1280)
    np.testing.assert_allclose(np.linalg.norm(cached.vectors, axis=1), 1, atol=1e-4)
    for f in (cache / "vectors").glob(f"{name}-*/*.npz"):
        f.unlink()
    fresh = vectorize(ds, name, "random")  # through the saved tower.keras this time
    assert fresh.computed == 36
    np.testing.assert_allclose(fresh.vectors, cached.vectors, atol=2e-4)

    grid = list(run_grid(GridConfig(dataset=spec, backbones=[name], merges=["dot"], classifiers=["cosine"],
                                    weights="random"), store))
    assert grid[0]["backbone"] == name and 0 <= grid[0]["accuracy"] <= 1


def test_small_cnn_with_triplet_loss(spec, store):
    result = run_finetune(config(spec, mode="siamese", tower="small-cnn", loss="triplet", cnn_size=32,
                                 epochs=1, augment=True, same_transform=False), store)
    run = store.get(result["run_id"])
    assert run.status == "done" and (run.backbone, run.classifier) == ("small-cnn", "triplet+aug")
    from simlab.backbones import get_backbone

    assert get_backbone(result["tuned_backbone"]).input_size == 32


def test_stop_after_the_first_batches_keeps_and_scores_the_best_checkpoint(tmp_path, store):
    spec = f"folder:{write_group_folder(tmp_path / 'small', n_groups=8, per_group=2, size=64)}"
    trained = {"batches": 0}

    def progress(done, total, message="", **fields):
        if fields.get("stage") == "train":
            trained["batches"] = done

    result = run_finetune(config(spec, mode="head", augment=True, unfreeze=2, epochs=3, batch_size=2), store,
                          progress=progress, should_stop=lambda: trained["batches"] >= 2)
    run = store.get(result["run_id"])
    assert run.status == "cancelled" and result["status"] == "cancelled"
    assert run.metrics["stopped"] and run.metrics["epochs_run"] == 1
    assert run.classifier == "finetune-head+aug+top2"
    curves = store.curves(result["run_id"])
    assert (curves.name == "batch_loss").sum() == 2
    assert os.path.exists(run.artifacts["checkpoint"])
    assert len(store.predictions(result["run_id"])) == run.metrics["n_test"] > 0


def test_augmentation_runs_on_raw_pixels_before_preprocessing():
    from simlab.backbones import get_backbone

    pre = get_backbone(BACKBONE).preprocess
    low, high = pre(np.float32(0)), pre(np.float32(255))
    white = np.full((4, 64, 64, 3), 255, np.float32)
    half = white.copy()
    half[:, :, :32] = 0
    run = pair_pipeline(BACKBONE, augment=True, same_transform=True, seed=1)
    a, b = (np.asarray(x) for x in run(white, half, training=True))
    # Augmenting raw 0..255 pixels then preprocessing keeps every value in the preprocessed range...
    assert low - 1e-5 <= a.min() and a.max() <= high + 1e-5
    np.testing.assert_allclose(a, high, atol=1e-4)  # a constant image stays constant under every transform
    # ...and black stays black: contrast clipped to 0..255 after normalising would have lifted it to 0.
    assert b.min() == pytest.approx(low, abs=1e-3) and b.max() == pytest.approx(high, abs=1e-3)
    # Without training, the pipeline is exactly the backbone's preprocessing.
    a0, b0 = (np.asarray(x) for x in run(white, half, training=False))
    np.testing.assert_allclose(b0, pre(half), atol=1e-6)
    # Training does transform, with one transform per pair or one per image.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 64, 64, 3)).astype(np.float32)
    same_a, same_b = (np.asarray(x) for x in run(img, img, training=True))
    assert not np.allclose(same_a, pre(img)) and np.allclose(same_a, same_b)
    indep = pair_pipeline(BACKBONE, augment=True, same_transform=False, seed=1)
    ia, ib = (np.asarray(x) for x in indep(img, img, training=True))
    assert not np.allclose(ia, ib)


def test_keras_merges_match_simlab_merge():
    from simlab.merge import MERGES, merge_pairs

    rng = np.random.default_rng(0)
    v = rng.random((6, 5)).astype(np.float32)
    left, right = np.array([0, 1, 2]), np.array([3, 4, 5])
    for name in MERGES:
        out = np.asarray(PairMerge(name)([v[left], v[right]]))
        np.testing.assert_allclose(out, merge_pairs(v, left, right, name), rtol=1e-5, atol=1e-6)


def test_unfreeze_top_k_weighted_layers():
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.ReLU(), layers.Dense(3),
                              layers.Dense(2)])
    assert unfreeze_top(model, 0) == [] and not model.trainable_weights
    top = unfreeze_top(model, 2)
    assert len(top) == 4 and {id(w) for w in model.trainable_weights} == {id(w) for w in top}
    assert not model.layers[0].trainable


def test_config_errors_say_what_to_do(tmp_path, store):
    with pytest.raises(ValueError, match="mode must be one of head, siamese"):
        FinetuneConfig(mode="both").validate()
    with pytest.raises(ValueError, match="unfreeze"):
        FinetuneConfig(mode="siamese", tower="small-cnn", unfreeze=2).validate()
    with pytest.raises(ValueError, match="Unknown fine-tune setting"):
        FinetuneConfig.from_params({"epochz": 3})
    spec = f"folder:{write_group_folder(tmp_path / 'tiny', n_groups=5, per_group=2, size=48)}"
    with pytest.raises(ValueError, match="too few to carve validation scenes"):
        run_finetune(config(spec, mode="siamese", tower="small-cnn", cnn_size=32), store)
    assert store.list_runs(kind="finetune")[0].status == "failed"


def test_job_kind_is_registered():
    from simlab import jobs
    from simlab.finetune import train

    assert jobs.job_function("finetune") is train.finetune_job


def test_cli_prints_json_with_the_required_keys(spec, cache):
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    res = subprocess.run([sys.executable, "-m", "simlab", "finetune", "--dataset", spec, "--mode", "siamese",
                          "--backbone", BACKBONE, "--weights", "random", "--epochs", "2", "--batch-size", "8",
                          "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"mode", "backbone", "accuracy", "auc", "epochs_run"} <= set(out)
    assert out["mode"] == "siamese" and out["backbone"] == BACKBONE and out["epochs_run"] == 2
    assert "Epoch 1/2" in res.stderr and "Epoch 2/2" in res.stderr


def test_page_shows_the_runs_curves_and_results(spec, cache, store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    if not store.list_runs(kind="finetune", status="done"):  # usually left by the tests above
        run_finetune(config(spec, mode="siamese", epochs=1), store)
    monkeypatch.setenv("SIMLAB_DATASET", spec)
    page = Path(__file__).resolve().parent.parent / "pages" / "finetune.py"
    at = AppTest.from_file(str(page), default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Fine-tune"
    assert at.button(key="FormSubmitter:ft_form-Start fine-tuning") is not None
    assert [s.value for s in at.subheader] == ["Training curves", "Results on the test pairs"]
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1


def test_the_light_modules_load_no_keras():
    code = ("import sys, argparse; import simlab.finetune, simlab.finetune.config, simlab.finetune.towers; "
            "from simlab.cli.finetune import add_cli; "
            "add_cli(argparse.ArgumentParser().add_subparsers(), lambda p: None); "
            "simlab.finetune.FinetuneConfig(weights='random').validate(); "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
