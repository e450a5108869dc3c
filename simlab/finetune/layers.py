"""Keras layers, losses, metrics, batches and callbacks of fine-tuning, each usable on its own.

Importing this module imports Keras (seconds); the light parts of :mod:`simlab.finetune` never do.
The layers register themselves (package ``simlab``) so that saved checkpoints load.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from simlab.finetune.config import CURVE_NAMES, preprocess_fn
from simlab.finetune.validation import KeptEpoch, Scores, query_aps, recall_at_1
from simlab.merge import get_merge
from simlab.paths import atomic_path
from simlab.progress import Progress, ShouldStop

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds between writes of buffered per-batch points
RECORDED = (*CURVE_NAMES, "val_map_se", "val_loss_se")  # epoch series stored: the curves and their noise
serializable = keras.saving.register_keras_serializable(package="simlab")


# --------------------------------------------------------------------------- augmentation and preprocessing


def augmenter(seed: int) -> keras.Sequential:
    """Random flip, rotation, zoom, shift and contrast, on raw pixels (0..255)."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, seed=seed + 1),
        layers.RandomZoom(0.15, seed=seed + 2),
        layers.RandomTranslation(0.1, 0.1, seed=seed + 3),
        layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
    ], name="augment")


@serializable
class JointAugment(layers.Layer):
    """Augments the images of a pair (or triplet) while training: one random transform shared by
    all of them (stacked as channels), or one each (stacked as a batch)."""

    def __init__(self, same: bool = True, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.same, self.seed = same, seed
        self.augment = augmenter(seed)

    def build(self, input_shape):
        shape = list(input_shape[0])
        if self.same:
            shape[-1] = 3 * len(input_shape)
        self.augment.build(tuple(shape))

    def call(self, images, training=None):
        images = [ops.cast(x, "float32") for x in images]
        if not training:
            return images
        if self.same:
            out = self.augment(ops.concatenate(images, axis=-1), training=True)
            return [out[..., 3 * i:3 * i + 3] for i in range(len(images))]
        n = ops.shape(images[0])[0]
        out = self.augment(ops.concatenate(images, axis=0), training=True)
        return [out[i * n:(i + 1) * n] for i in range(len(images))]

    def get_config(self):
        return super().get_config() | {"same": self.same, "seed": self.seed}


@serializable
class Preprocess(layers.Layer):
    """RGB 0..255 -> the network's input: a backbone's own preprocessing, or ``unit`` (0..1)."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, x):
        return preprocess_fn(self.backbone)(ops.cast(x, "float32"))

    def get_config(self):
        return super().get_config() | {"backbone": self.backbone}


def pair_pipeline(backbone: str, augment: bool = True, same_transform: bool = True, seed: int = 0):
    """The pixels-to-network-input step of an image pair: augmentation (while training) on raw
    0..255 pixels, THEN the backbone's preprocessing. Returns ``f(a, b, training) -> (a', b')``."""
    joint = JointAugment(same_transform, seed) if augment else None
    pre = Preprocess(backbone)

    def run(a, b, training: bool = True):
        if joint is not None:
            a, b = joint([a, b], training=training)
        return pre(a), pre(b)

    return run


# --------------------------------------------------------------------------- pairs: merge and distance


@serializable
class PairMerge(layers.Layer):
    """Two vectors -> one, by a merge of :data:`simlab.merge.MERGES` run in ``keras.ops``."""

    def __init__(self, merge: str = "dot", **kwargs):
        super().__init__(**kwargs)
        self.merge = merge

    def call(self, inputs):
        a, b = inputs
        return get_merge(self.merge).fn(a, b, ops)

    def get_config(self):
        return super().get_config() | {"merge": self.merge}


@serializable
class PairDistance(layers.Layer):
    """Euclidean distance between two embeddings, shape (batch, 1)."""

    def call(self, inputs):
        a, b = inputs
        return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1, keepdims=True), 1e-12))


# --------------------------------------------------------------------------- losses and accuracies


def contrastive_loss(margin: float):
    """Same scene (y=1): the squared distance; other scenes: the squared shortfall below the margin."""

    def contrastive(y_true, distance):
        y = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        d = ops.reshape(distance, (-1,))
        return y * ops.square(d) + (1.0 - y) * ops.square(ops.maximum(margin - d, 0.0))

    return contrastive


class ThresholdAccuracy(keras.metrics.Metric):
    """Pair accuracy at the best distance threshold, from histograms of the distances of same and
    different pairs seen so far (the run sets its threshold the same way, on validation pairs)."""

    def __init__(self, bins: int = 400, max_distance: float = 2.0, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.bins, self.max_distance = bins, max_distance
        self.same = self.add_variable(shape=(bins,), initializer="zeros", name="same")
        self.other = self.add_variable(shape=(bins,), initializer="zeros", name="other")

    def update_state(self, y_true, distance, sample_weight=None):
        y = ops.cast(ops.reshape(y_true, (-1, 1)), "float32")
        where = ops.cast(ops.reshape(distance, (-1,)) / self.max_distance * self.bins, "int32")
        hot = ops.one_hot(ops.clip(where, 0, self.bins - 1), self.bins)
        self.same.assign_add(ops.sum(hot * y, axis=0))
        self.other.assign_add(ops.sum(hot * (1.0 - y), axis=0))

    def result(self):
        # "same" below the cut, "different" at or above it; every cut between bins is tried.
        same_below = ops.concatenate([ops.zeros((1,)), ops.cumsum(self.same)])
        other_above = ops.sum(self.other) - ops.concatenate([ops.zeros((1,)), ops.cumsum(self.other)])
        total = ops.maximum(ops.sum(self.same) + ops.sum(self.other), 1.0)
        return ops.max(same_below + other_above) / total

    def reset_state(self):
        self.same.assign(ops.zeros((self.bins,)))
        self.other.assign(ops.zeros((self.bins,)))


def contrastive_accuracy(margin: float) -> ThresholdAccuracy:
    return ThresholdAccuracy(max_distance=max(2.0, 2 * margin))


def triplet_loss(margin: float):
    """distances = [d(anchor, positive), d(anchor, negative)]: the negative must be a margin farther."""

    def triplet(y_true, distances):
        return ops.maximum(distances[:, 0] - distances[:, 1] + margin, 0.0)

    return triplet


def triplet_accuracy() -> keras.metrics.MeanMetricWrapper:
    def accuracy(y_true, distances):
        return ops.cast(distances[:, 0] < distances[:, 1], "float32")

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def multi_similarity_loss(alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, mining: float = 0.1):
    """Multi-similarity loss (Wang et al., CVPR 2019) on a batch of L2-normalised embeddings whose
    ``y_true`` are scene codes: every pair in the batch counts, weighted by how hard it is.

    Pairs are mined first: a same-scene pair is kept if its similarity is below the image's most
    similar other scene plus ``mining``; an other-scene pair if above its least similar same-scene
    image minus ``mining``. Then, per image, ``log(1 + sum exp(-alpha (s - base))) / alpha`` over
    the kept same-scene pairs plus ``log(1 + sum exp(beta (s - base))) / beta`` over the kept
    others. An image with no other image of its scene in the batch adds nothing (no pair to mine
    against), as in the reference implementation.
    """

    def multi_similarity(y_true, embeddings):
        labels = ops.reshape(y_true, (-1,))
        e = ops.cast(embeddings, "float32")
        sim = ops.matmul(e, ops.transpose(e))
        same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
        pos = same * (1.0 - ops.eye(ops.shape(e)[0]))
        neg = 1.0 - same
        hardest_pos = ops.min(sim + 4.0 * (1.0 - pos), axis=1, keepdims=True)  # similarities lie in [-1, 1]
        hardest_neg = ops.max(sim - 4.0 * (1.0 - neg), axis=1, keepdims=True)
        keep_neg = neg * ops.cast(sim + mining > hardest_pos, "float32")
        keep_pos = pos * ops.cast(sim - mining < hardest_neg, "float32")
        pull = ops.log1p(ops.sum(keep_pos * ops.exp(-alpha * (sim - base)), axis=1)) / alpha
        push = ops.log1p(ops.sum(keep_neg * ops.exp(beta * (sim - base)), axis=1)) / beta
        return pull + push

    return multi_similarity


class BatchRecall(keras.metrics.Metric):
    """Recall@1 within the batch: the share of images whose most similar other image of the batch shows
    the same scene, over the images that have another image of their scene in the batch."""

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, embeddings, sample_weight=None):
        labels = ops.reshape(y_true, (-1,))
        e = ops.cast(embeddings, "float32")
        eye = ops.eye(ops.shape(e)[0])
        sim = ops.matmul(e, ops.transpose(e)) - 4.0 * eye  # never its own nearest
        same = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") * (1.0 - eye)
        hit = ops.take_along_axis(same, ops.argmax(sim, axis=1)[:, None], axis=1)[:, 0]
        self.hits.assign_add(ops.sum(hit))
        self.count.assign_add(ops.sum(ops.cast(ops.sum(same, axis=1) > 0, "float32")))

    def result(self):
        return self.hits / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.hits.assign(0.0)
        self.count.assign(0.0)


# --------------------------------------------------------------------------- towers


def projection(input_dim: int, dim: int, start: tuple[np.ndarray, np.ndarray] | None = None) -> keras.Sequential:
    """The trainable top of the Siamese tower, on L2-normalised backbone vectors: one Dense layer
    starting from ``start`` (kernel, bias: learned whitening), else Dense 256 -> ReLU -> Dense; the
    embedding is L2-normalised."""
    dense = [layers.Dense(start[0].shape[1])] if start is not None else [
        layers.Dense(256, activation="relu"), layers.Dense(dim)]
    model = keras.Sequential([keras.Input((input_dim,)), layers.UnitNormalization(), *dense,
                              layers.UnitNormalization()], name="projection")
    if start is not None:
        dense[0].set_weights([start[0].astype(np.float32), start[1].astype(np.float32)])
    return model


def small_cnn(size: int, dim: int) -> keras.Sequential:
    """A small CNN trained from scratch (input 0..1): three conv blocks, global pooling, embedding."""
    blocks = []
    for filters in (32, 64, 128):
        blocks += [layers.Conv2D(filters, 3, padding="same", use_bias=False), layers.BatchNormalization(),
                   layers.ReLU(), layers.MaxPooling2D()]
    return keras.Sequential([keras.Input((size, size, 3)), *blocks, layers.GlobalAveragePooling2D(),
                             layers.Dense(dim), layers.UnitNormalization()], name="small_cnn")


class TwoSpeedModel(keras.Model):
    """A functional model whose ``slow`` weights (the unfrozen backbone layers) learn at
    ``slow_factor`` times the learning rate of the rest (the head or projection)."""

    def __init__(self, inputs, outputs, slow=(), slow_factor: float = 0.1, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.slow_ids = {id(v) for v in slow}
        self.slow_factor = slow_factor

    def compile(self, optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self.slow_optimizer = keras.optimizers.Adam(rate * self.slow_factor)

    def train_step(self, data):
        import tensorflow as tf  # the backend this step is written for; loaded with Keras already

        x, y = data
        slow = [v for v in self.trainable_variables if id(v) in self.slow_ids]
        fast = [v for v in self.trainable_variables if id(v) not in self.slow_ids]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, fast + slow)
        self.optimizer.apply(grads[:len(fast)], fast)
        if slow:
            self.slow_optimizer.apply(grads[len(fast):], slow)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=ops.shape(y)[0])
            else:
                metric.update_state(y, y_pred)
        return self.get_metrics_result()


# --------------------------------------------------------------------------- batches and callbacks


class IndexBatches(keras.utils.PyDataset):
    """Batches ``((source[col1[rows]], source[col2[rows]], ...), y[rows])`` from an in-memory
    ``source`` (vectors, or decoded uint8 images cast to float per batch). With ``seed``, each
    epoch takes a fresh permutation; ``max_batches`` caps an epoch at a random subset."""

    def __init__(self, source: np.ndarray, columns, y=None, batch_size: int = 32, seed: int | None = None,
                 max_batches: int | None = None):
        super().__init__()
        self.source, self.columns = source, [np.asarray(c) for c in columns]
        self.y = None if y is None else np.asarray(y, np.float32)
        self.batch_size = batch_size
        self.rng = None if seed is None else np.random.default_rng(seed)
        n = len(self.columns[0])
        self.n_batches = min(math.ceil(n / batch_size), max_batches or math.inf)
        self.order = np.arange(n)
        self.on_epoch_end()

    def __len__(self):
        return self.n_batches

    def batch_sizes(self) -> list[int]:
        n = len(self.order)
        return [min(self.batch_size, n - i * self.batch_size) for i in range(self.n_batches)]

    def __getitem__(self, i):
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        xs = tuple(np.asarray(self.source[c[rows]], np.float32) for c in self.columns)
        xs = xs[0] if len(xs) == 1 else xs
        return (xs,) if self.y is None else (xs, self.y[rows])

    def on_epoch_end(self):
        if self.rng is not None:
            self.order = self.rng.permutation(len(self.order))


class GroupBatches(keras.utils.PyDataset):
    """Batches ``(source[rows], scene code of rows)`` of whole scenes: each epoch the scenes are
    shuffled, each contributes at most ``per_group`` of its images (a fresh random choice), and
    the sequence is cut into batches of ``batch_size``, so that every batch holds a few scenes with
    several images each (what a multi-similarity loss learns from). Images whose scene has no
    other image in ``images`` are left out. The batch sizes are the same every epoch.

    With ``similar`` (one vector per image of ``source``, e.g. the frozen backbone's), the scenes of a
    batch are neighbours: each batch starts from a random scene and adds the scenes whose mean vectors are
    nearest to it. Scenes drawn at random are told apart at once (the loss mines no pair and stays at 0);
    neighbouring scenes are the confusable ones retrieval has to separate.

    Without ``seed`` the order is fixed (validation: the same batches every epoch)."""

    def __init__(self, source: np.ndarray, images, codes, batch_size: int = 32, per_group: int = 4,
                 seed: int | None = None, max_batches: int | None = None, similar: np.ndarray | None = None):
        super().__init__()
        self.source, self.batch_size, self.per_group = source, batch_size, per_group
        images = np.asarray(images)
        codes = np.asarray(codes)[images]
        scenes = [images[codes == c] for c in np.unique(codes)]
        self.scenes = [m for m in scenes if len(m) >= 2]
        self.codes_of = {int(i): float(c) for i, c in zip(images, codes)}
        self.seed = seed
        self.rng = np.random.default_rng(0 if seed is None else seed)
        self.n_rows = sum(min(per_group, len(m)) for m in self.scenes)
        self.n_batches = min(math.ceil(self.n_rows / batch_size), max_batches or math.inf)
        self.neighbours = None if similar is None else _scene_neighbours(similar, self.scenes)
        self.rows = np.zeros(0, int)
        self.on_epoch_end()

    def __len__(self):
        return self.n_batches

    def batch_sizes(self) -> list[int]:
        return [min(self.batch_size, self.n_rows - i * self.batch_size) for i in range(self.n_batches)]

    def __getitem__(self, i):
        rows = self.rows[i * self.batch_size:(i + 1) * self.batch_size]
        y = np.array([self.codes_of[int(r)] for r in rows], np.float32)
        return np.asarray(self.source[rows], np.float32), y

    def _scene_order(self) -> list[int]:
        """Scenes in batch order: shuffled, or (with neighbours) each random seed scene followed by its
        nearest unused scenes, about one batch's worth."""
        order = self.rng.permutation(len(self.scenes))
        if self.neighbours is None:
            return list(order)
        used, out = np.zeros(len(self.scenes), bool), []
        for seed in order:
            if used[seed]:
                continue
            rows = 0
            for g in self.neighbours[seed]:  # the seed itself comes first
                if used[g]:
                    continue
                used[g] = True
                out.append(int(g))
                rows += min(self.per_group, len(self.scenes[g]))
                if rows >= self.batch_size:
                    break
        return out

    def on_epoch_end(self):
        if self.seed is None and len(self.rows):
            return  # validation: the same batches every epoch
        picked = [self.rng.permutation(self.scenes[g])[:self.per_group] for g in self._scene_order()]
        self.rows = np.concatenate(picked) if picked else np.zeros(0, int)


def _scene_neighbours(vectors: np.ndarray, scenes: list[np.ndarray]) -> np.ndarray:
    """For each scene, every scene ordered by the cosine of their mean L2-normalised vectors (itself first)."""
    if not scenes:
        return np.zeros((0, 0), int)
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    centres = np.stack([v[m].mean(axis=0) for m in scenes])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    sims = centres @ centres.T
    np.fill_diagonal(sims, np.inf)
    return np.argsort(-sims, axis=1, kind="stable")


class ValidationScores(keras.callbacks.Callback):
    """Adds the selection metric, item by item, to each epoch's logs: ``measure()`` returns ``(name, Scores,
    extra logs)``; the logs get ``name`` (the mean), ``name + "_se"`` (its bootstrap standard error over the
    validation scenes) and the extra entries. The latest :class:`Scores` stay in ``latest`` for the kept-epoch
    rule. Place it before the callbacks that read it."""

    def __init__(self, measure: Callable[[], tuple[str, Scores, dict]]):
        super().__init__()
        self.measure, self.latest = measure, None

    def score(self) -> dict:
        name, scores, extra = self.measure()
        self.latest = scores
        return {name: scores.mean, f"{name}_se": scores.se, **extra}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.score())


def map_measure(embed: Callable[[], np.ndarray], groups: np.ndarray, recall: bool = False):
    """``measure`` of :class:`ValidationScores` for ``val_map``: every validation image a query against the
    other validation images; with ``recall``, ``val_accuracy`` becomes recall@1 among the validation images
    (what the in-batch recall of training estimates, on the whole validation set instead of fixed batches)."""
    groups = np.asarray(groups)

    def measure():
        embedded = np.asarray(embed(), np.float32)
        extra = {"val_accuracy": recall_at_1(embedded, groups)} if recall else {}
        return "val_map", query_aps(embedded, groups), extra

    return measure


def ValidationMap(embed: Callable[[], np.ndarray], groups: np.ndarray, recall: bool = False) -> ValidationScores:
    """Validation retrieval mAP (every validation image a query) and its noise, in each epoch's logs."""
    return ValidationScores(map_measure(embed, groups, recall))


class LiveCurves(keras.callbacks.Callback):
    """Writes the training curves to the store as they happen, reports progress, and checks the
    stop request after every batch (which then ends training once the batch is done).

    Keras reports the epoch's running mean loss after each batch; the batch's own loss is recovered
    from two consecutive means (they are weighted by batch size)."""

    def __init__(self, store, run_id: str, batch_sizes: list[int], epochs: int, progress: Progress,
                 should_stop: ShouldStop | None, echo: Callable[[str], None]):
        super().__init__()
        self.store, self.run_id, self.sizes, self.epochs = store, run_id, batch_sizes, epochs
        self.progress, self.should_stop, self.echo = progress, should_stop, echo
        self.step, self.epoch, self.buffer, self.last_flush = 0, 0, [], time.monotonic()
        self.stopped, self.epoch_seconds, self.history = False, [], {}

    def flush(self):
        if self.buffer:
            points, self.buffer = self.buffer, []
            self.store.add_curve_points(self.run_id, points)
        self.last_flush = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.seen, self.mean, self.t0 = epoch + 1, 0, 0.0, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        n = self.sizes[min(batch, len(self.sizes) - 1)]
        mean = float((logs or {}).get("loss", float("nan")))
        batch_loss = ((self.seen + n) * mean - self.seen * self.mean) / n
        self.seen, self.mean = self.seen + n, mean
        self.buffer.append((self.step, self.epoch, "batch_loss", batch_loss))
        if time.monotonic() - self.last_flush >= FLUSH_EVERY:
            self.flush()
        self.progress((self.epoch - 1) * len(self.sizes) + batch + 1, self.epochs * len(self.sizes),
                      f"Epoch {self.epoch}/{self.epochs} · batch {batch + 1}/{len(self.sizes)} · loss {mean:.4f}",
                      stage="train")
        if not self.stopped and self.should_stop and self.should_stop():
            self.stopped = True
            self.model.stop_training = True
            self.echo(f"Stop requested: ending after batch {batch + 1} of epoch {self.epoch}")

    def record(self, epoch: int, logs: dict) -> dict:
        """Epoch points (epoch 0: validation before any training) go to the store at once."""
        logs = {k: float(v) for k, v in (logs or {}).items() if k in RECORDED}
        self.buffer += [(self.step, epoch, name, value) for name, value in logs.items()]
        self.flush()
        self.history[epoch] = logs
        return logs

    def on_epoch_end(self, epoch, logs=None):
        logs = self.record(epoch + 1, logs)
        self.epoch_seconds.append(time.perf_counter() - self.t0)
        text = " · ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items()))
        self.echo(f"Epoch {epoch + 1}/{self.epochs}: {text} ({self.epoch_seconds[-1]:.1f} s)")

    def on_train_end(self, logs=None):
        self.flush()


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch under noise: when ``monitor`` improves (validation loss: lower; validation mAP:
    higher) by more than the standard error of the improvement, saves ``target`` (the scoring model) to
    ``path`` and keeps the trained model's weights in memory; restores them when training ends.

    ``scores`` gives the epoch's validation measurement item by item (:class:`ValidationScores.latest`), so
    the gain over the kept epoch is judged against its bootstrap noise (:class:`KeptEpoch`); without
    it any improvement counts. Ties keep the earlier epoch. With ``patience``, training stops after that many
    epochs without a new kept epoch."""

    def __init__(self, target: keras.Model, path: Path, monitor: str = "val_loss",
                 scores: Callable[[], Scores | None] | None = None, patience: int | None = None):
        super().__init__()
        self.target, self.path, self.monitor = target, Path(path), monitor
        self.scores, self.patience = scores, patience
        self.sign = -1.0 if monitor.endswith("loss") else 1.0  # losses fall, mAP and accuracies rise
        self.rule = KeptEpoch(higher_is_better=self.sign > 0)
        self.best, self.best_epoch, self.best_weights = -self.sign * math.inf, None, None
        self.measured: dict[int, Scores] = {}  # every epoch's measurement (epoch 0: the starting point)

    def offer(self, epoch: int, logs: dict, model) -> None:
        """Epoch ``epoch`` (0 = before training) ended with these logs: keep it if it is the best."""
        value = float((logs or {}).get(self.monitor, math.nan))
        scores = self.scores() if self.scores is not None else None
        if scores is None or not math.isclose(scores.mean, value, rel_tol=1e-6, abs_tol=1e-9):
            scores = Scores(np.array([value]), np.zeros(1, int))  # one number: no noise estimate
        if math.isfinite(value):
            self.measured[epoch] = scores
        if self.rule.offer(epoch, scores):
            self.best, self.best_epoch = value, epoch
            self.best_weights = model.get_weights()
            save_model(self.target, self.path)
        if self.patience and self.rule.since >= self.patience and getattr(self, "model", None) is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.offer(epoch + 1, logs, self.model)

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


# --------------------------------------------------------------------------- saving


def save_model(model, path: Path) -> Path:
    """Save a Keras model atomically (a killed job never leaves half a ``.keras`` file)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return Path(path)


def load_checkpoint(path: str | Path):
    """A saved model of fine-tuning (``best.keras`` or ``tower.keras``), ready to predict."""
    return keras.saving.load_model(path, compile=False)
