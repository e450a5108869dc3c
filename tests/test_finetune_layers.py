"""Fine-tuning's Keras parts one at a time, on tiny inputs: merges, losses, accuracies, towers,
batches and callbacks."""

import math

import keras
import numpy as np
import pytest

from simlab.finetune.config import FinetuneConfig
from simlab.finetune.data import PairData
from simlab.finetune.layers import (
    BestCheckpoint,
    IndexBatches,
    LiveCurves,
    PairDistance,
    PairMerge,
    Preprocess,
    ThresholdAccuracy,
    contrastive_loss,
    load_checkpoint,
    projection,
    save_model,
    small_cnn,
    triplet_accuracy,
    triplet_loss,
)
from simlab.finetune.models import build_head_models, learned_whitening
from simlab.merge import MERGES, Merge, merge_pairs
from simlab.pairs import Pairs
from simlab.store import Store


def tiny_pairs(n_images: int = 8, dim: int = 5, seed: int = 0) -> PairData:
    rng = np.random.default_rng(seed)
    vectors = rng.random((n_images, dim)).astype(np.float32)
    groups = np.repeat(np.arange(n_images // 2), 2).astype(str)
    train = Pairs(np.array([0, 2, 0, 2]), np.array([1, 3, 2, 5]), np.array([1, 1, 0, 0]))
    val = Pairs(np.array([4, 4]), np.array([5, 6]), np.array([1, 0]))
    test = Pairs(np.array([6, 6, 7]), np.array([7, 0, 1]), np.array([1, 0, 0]))
    paths = np.array([f"{i}.jpg" for i in range(n_images)])
    return PairData(paths, groups, [str(i) for i in range(n_images)], {}, vectors, train, val, test,
                    np.arange(n_images))


def run_head(name: str, data: PairData) -> np.ndarray:
    built = build_head_models(FinetuneConfig(mode="head", merge=name), data, None)
    prob = built.scorer.predict(IndexBatches(data.vectors, [data.test.left, data.test.right]), verbose=0)
    merged = PairMerge(name)([data.vectors[data.test.left], data.vectors[data.test.right]])
    np.testing.assert_allclose(np.asarray(merged), merge_pairs(data.vectors, data.test.left, data.test.right, name),
                               rtol=1e-5, atol=1e-6)
    return np.asarray(prob)


@pytest.mark.parametrize("name", list(MERGES))
def test_every_registered_merge_runs_in_the_keras_head(name):
    prob = run_head(name, tiny_pairs())
    assert prob.shape == (3, 2) and np.isfinite(prob).all()
    np.testing.assert_allclose(prob.sum(axis=1), 1, atol=1e-5)


def test_a_merge_declared_only_in_merge_py_works_in_the_head(monkeypatch):
    def _max(a, b, xp=np):
        return xp.maximum(a, b)

    monkeypatch.setitem(MERGES, "max", Merge("max", _max, "Elementwise maximum."))
    prob = run_head("max", tiny_pairs())
    assert prob.shape == (3, 2) and np.isfinite(prob).all()


def test_pair_distance_by_hand():
    d = PairDistance()([np.array([[3.0, 4.0], [1.0, 1.0]]), np.zeros((2, 2))])
    np.testing.assert_allclose(np.asarray(d), [[5.0], [math.sqrt(2)]], rtol=1e-6)


def test_contrastive_loss_by_hand():
    loss = contrastive_loss(1.0)(np.array([1, 0, 0]), np.array([[0.5], [0.3], [1.5]], np.float32))
    np.testing.assert_allclose(np.asarray(loss), [0.25, 0.49, 0.0], rtol=1e-6)


def test_triplet_loss_and_accuracy_by_hand():
    distances = np.array([[0.2, 1.0], [0.9, 0.5]], np.float32)
    np.testing.assert_allclose(np.asarray(triplet_loss(0.5)(None, distances)), [0.0, 0.9], rtol=1e-6)
    accuracy = triplet_accuracy()
    accuracy.update_state(np.zeros(2), distances)
    assert float(accuracy.result()) == pytest.approx(0.5)


def test_threshold_accuracy_finds_the_best_cut():
    metric = ThresholdAccuracy()
    metric.update_state(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 1.0, 1.5]))
    assert float(metric.result()) == pytest.approx(1.0)
    metric.update_state(np.array([1, 0]), np.array([1.8, 0.05]))  # one of each on the wrong side
    assert float(metric.result()) == pytest.approx(4 / 6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_projection_and_small_cnn_embed_to_unit_vectors():
    data = tiny_pairs(dim=6)
    start = learned_whitening(data.vectors, data.train, 3)
    assert start[0].shape == (6, 3) and start[1].shape == (3,)
    for model in (projection(6, 3, start), projection(6, 4)):
        out = np.asarray(model(data.vectors))
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    out = np.asarray(small_cnn(16, 8)(np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)))
    assert out.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_index_batches_cover_every_row_once_per_epoch():
    source = np.arange(10, dtype=np.float32)[:, None]
    batches = IndexBatches(source, [np.arange(10), np.arange(10)[::-1]], np.arange(10), batch_size=4, seed=0)
    assert len(batches) == 3 and batches.batch_sizes() == [4, 4, 2]
    rows = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(rows) == list(range(10))
    (a, b), y = batches[0]
    np.testing.assert_array_equal(a[:, 0] + b[:, 0], 9)
    assert len(IndexBatches(source, [np.arange(10)], batch_size=4, seed=0, max_batches=2)) == 2


def test_live_curves_recover_each_batch_loss_and_stop_on_request(tmp_path):
    store = Store(tmp_path / "simlab.db")
    calls, stop = [], []
    curves = LiveCurves(store, "f1", [2, 1], epochs=1, progress=lambda *a, **f: calls.append((a, f)),
                        should_stop=lambda: bool(stop), echo=lambda text: None)
    curves.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    curves.on_epoch_begin(0)
    curves.on_train_batch_end(0, {"loss": 2.0})
    stop.append(True)
    curves.on_train_batch_end(1, {"loss": (2 * 2.0 + 1 * 5.0) / 3})  # the running mean, weighted by size
    curves.on_epoch_end(0, {"loss": 3.0, "val_loss": 4.0, "other": 1.0})
    points = store.curves("f1")
    np.testing.assert_allclose(points[points.name == "batch_loss"].value, [2.0, 5.0])
    assert set(points.name) == {"batch_loss", "loss", "val_loss"}
    assert [a[:2] for a, _ in calls] == [(1, 2), (2, 2)] and all(f["stage"] == "train" for _, f in calls)
    assert curves.stopped and curves.model.stop_training


def test_best_checkpoint_keeps_the_best_epoch_and_restores_it(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = BestCheckpoint(model, tmp_path / "best.keras")
    best.set_model(model)
    first = [w.copy() for w in model.get_weights()]
    best.offer(0, {"val_loss": 1.0}, model)
    model.set_weights([w + 1 for w in first])
    best.on_epoch_end(0, {"val_loss": 2.0})  # worse: not kept
    best.on_epoch_end(1, {"val_loss": float("nan")})
    assert (best.best_epoch, best.best) == (0, 1.0) and (tmp_path / "best.keras").exists()
    best.on_train_end()
    for kept, w in zip(first, model.get_weights()):
        np.testing.assert_array_equal(kept, w)


def test_saved_models_with_simlab_layers_load_back(tmp_path):
    inputs = [keras.Input((4, 4, 3)), keras.Input((4, 4, 3))]
    pre = Preprocess("unit")
    flat = keras.layers.Flatten()
    out = PairDistance()([flat(pre(inputs[0])), flat(pre(inputs[1]))])
    merged = PairMerge("l1")([flat(pre(inputs[0])), flat(pre(inputs[1]))])
    model = keras.Model(inputs, [out, merged])
    save_model(model, tmp_path / "m.keras")
    loaded = load_checkpoint(tmp_path / "m.keras")
    x = np.random.default_rng(0).integers(0, 256, (2, 2, 4, 4, 3)).astype(np.float32)
    for a, b in zip(model.predict([x[0], x[1]], verbose=0), loaded.predict([x[0], x[1]], verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_keras_dot_merge_matches_keras_norm_to_the_bit_gradients_too():
    import tensorflow as tf
    from keras import ops

    def by_norm(a, b):  # the product of L2-normalised vectors written with keras.ops.norm
        def unit(x):
            return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)

        return unit(a) * unit(b)

    rng = np.random.default_rng(0)
    a, b = (tf.Variable(rng.standard_normal((16, 32)).astype(np.float32)) for _ in range(2))
    grads = []
    for fn in (lambda a, b: PairMerge("dot")([a, b]), by_norm):
        with tf.GradientTape() as tape:
            out = fn(a, b)
            loss = ops.sum(out * ops.arange(32, dtype="float32"))
        grads.append((np.asarray(out), *(np.asarray(g) for g in tape.gradient(loss, [a, b]))))
    for mine, reference in zip(*grads):
        np.testing.assert_array_equal(mine, reference)
