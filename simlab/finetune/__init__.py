"""Fine-tuning with live loss curves: the study's neural head trained on image pairs, and a true
Siamese network. Both are scored on the same test pairs as every grid run.

``head``      The backbone (frozen, or its top K layers unfrozen at a lower learning rate)
              vectorises both images; the merged vector feeds the study's neural head
              (:func:`simlab.classifiers.build_head`). With augmentation off and nothing unfrozen
              the backbone's vectors never change, so only the head trains, on the cached vectors.
``siamese``   One shared tower maps each image to an L2-normalised embedding: the backbone plus a
              small trainable projection (or a small CNN trained from scratch); the Euclidean
              distance between the two embeddings is trained with a contrastive loss (or a
              triplet loss), and the decision threshold is chosen on validation pairs. The trained
              tower becomes a backbone, ``siamese-<run id>``, usable by every merge, classifier and
              retrieval through :func:`simlab.vectors.vectorize`.

Augmentation acts on raw pixels (0..255) before the backbone's own preprocessing (the 2017 study
augmented after normalising: a bug not repeated here). Images are decoded once into memory; only
augmentation and the forward (and backward) pass run per step.

Validation pairs come from groups carved out of the training groups (never from test). Per-batch
loss and per-epoch loss and accuracy go to the store as they happen; a stop request ends the run
after the current batch, and the best checkpoint is still scored.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from simlab.backbones import BACKBONES, DEFAULT_BACKBONE, WEIGHTS_CHOICES, Backbone, get_backbone, register
from simlab.pairs import NEGATIVE_SCHEMES, SPLITS, Pairs, build_pairs, group_codes, split_groups
from simlab.paths import atomic_path, cache_dir

MODES = {
    "head": "The study's neural head on the merged backbone vectors, trained on image pairs "
            "(optionally augmented, optionally with the backbone's top layers unfrozen).",
    "siamese": "A true Siamese network: a shared tower trained so that images of one scene sit close "
               "and others far apart (contrastive or triplet loss).",
}
LOSSES = {
    "contrastive": "Pairs: pulls same-scene embeddings together, pushes others at least a margin apart.",
    "triplet": "Triplets (anchor, same scene, other scene): the other scene must be a margin farther.",
}
TOWERS = {
    "backbone": "The pretrained backbone (frozen unless unfrozen) plus a trainable projection to an "
                "L2-normalised embedding.",
    "small-cnn": "A small CNN trained from scratch at low resolution (the study's from-scratch attempt).",
}
INITS = {
    "whitening": "Projection Dense -> embedding, starting from learned whitening of the training pairs "
                 "(Radenovic et al. 2018): the contrastive loss fine-tunes it.",
    "random": "Projection Dense 256 -> ReLU -> Dense -> embedding, from random weights.",
}
DEFAULT_RATES = {"head": 1e-3, "whitening": 1e-4, "random": 1e-3}  # Adam; whitening starts close to a good answer
TUNED_PREFIX = "siamese-"
CURVE_NAMES = ("loss", "val_loss", "accuracy", "val_accuracy")
FLUSH_EVERY = 1.0  # seconds between writes of buffered per-batch points

Progress = Callable[[int, int, str], None]  # done, total, message (the jobs' signature)


# --------------------------------------------------------------------------- configuration


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run; what the page's form and the CLI fill in."""

    dataset: str = "demo"
    mode: str = "siamese"
    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    merge: str = "dot"  # head: how the two vectors are merged
    tower: str = "backbone"  # siamese: backbone + projection, or small-cnn
    init: str = "whitening"  # siamese projection: learned whitening, or random
    loss: str = "contrastive"  # siamese: contrastive | triplet
    margin: float = 1.0  # embeddings are unit vectors: distances lie in [0, 2]
    embedding_dim: int = 128
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None  # None: 1e-3 (head, random projection, small CNN), 1e-4 (whitening)
    unfreeze: int = 0  # the top K weighted layers of the backbone train too...
    backbone_lr_factor: float = 0.1  # ...at this fraction of the learning rate
    augment: bool = False
    same_transform: bool = True  # one random transform for both images of a pair, or one each
    steps_per_epoch: int | None = None  # at most this many batches per epoch (a fresh random subset each)
    patience: int = 3  # early stopping on validation loss
    val_fraction: float = 0.15  # of the training groups, held out for validation
    cnn_size: int = 96  # small-cnn input size
    split: str = "group"
    test_size: float = 0.3
    negative_ratio: float = 1.0
    negatives: str = "random"
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"Unknown fine-tune setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        return cls(**params)

    def validate(self) -> "FinetuneConfig":
        def one_of(name, value, choices):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")

        one_of("mode", self.mode, MODES)
        one_of("tower", self.tower, TOWERS)
        one_of("loss", self.loss, LOSSES)
        one_of("init", self.init, INITS)
        one_of("weights", self.weights, WEIGHTS_CHOICES)
        one_of("split", self.split, SPLITS)
        one_of("negatives", self.negatives, NEGATIVE_SCHEMES)
        from simlab.merge import get_merge

        get_merge(self.merge)
        if not self.uses_small_cnn:
            bb = get_backbone(self.backbone)
            if bb.options.get("tuned"):
                raise ValueError(f"{self.backbone} is itself a tuned tower; fine-tune from a pretrained backbone.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.unfreeze < 0:
            raise ValueError("unfreeze (the number of top backbone layers to train) must be >= 0")
        if self.unfreeze and self.uses_small_cnn:
            raise ValueError("unfreeze applies to a pretrained backbone; the small CNN trains entirely anyway")
        if not self.rate > 0 or not 0 < self.backbone_lr_factor <= 1:
            raise ValueError("learning rate must be > 0 and the backbone's factor in (0, 1]")
        if not self.margin > 0:
            raise ValueError("margin must be > 0")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps per epoch must be at least 1 (or None for every pair)")
        if not 0 < self.test_size < 1 or not 0 < self.val_fraction < 1:
            raise ValueError("test size and validation fraction must be between 0 and 1")
        if self.patience < 1:
            raise ValueError("patience must be at least 1 epoch")
        return self

    @property
    def rate(self) -> float:
        """The learning rate: as set, else the default of the mode (and the projection's start)."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        if self.mode == "head":
            return DEFAULT_RATES["head"]
        return DEFAULT_RATES["random" if self.uses_small_cnn else self.init]

    @property
    def uses_small_cnn(self) -> bool:
        return self.mode == "siamese" and self.tower == "small-cnn"

    @property
    def on_images(self) -> bool:
        """Whether training needs pixels (else it runs on the cached frozen vectors)."""
        return self.augment or self.unfreeze > 0 or self.uses_small_cnn

    # How the run shows in the store (Compare's heatmaps: backbone x merge, one chart per classifier).
    @property
    def backbone_label(self) -> str:
        return "small-cnn" if self.uses_small_cnn else self.backbone

    @property
    def merge_label(self) -> str:
        return f"head-{self.merge}" if self.mode == "head" else "siamese"

    @property
    def classifier_label(self) -> str:
        base = "finetune-head" if self.mode == "head" else self.loss
        return base + ("+aug" if self.augment else "") + (f"+top{self.unfreeze}" if self.unfreeze else "")


# --------------------------------------------------------------------------- data


@dataclass
class PairData:
    """Images, pairs and (for backbone runs) the frozen vectors one run trains and scores on."""

    paths: np.ndarray
    groups: np.ndarray
    digests: list[str]
    bad: dict  # digest -> reason, images the backbone could not read
    vectors: np.ndarray | None  # frozen backbone vectors (None for the small CNN)
    train: Pairs
    val: Pairs
    test: Pairs
    test_images: np.ndarray  # indices of the images of held-out groups (retrieval on those)


def carve_validation(groups: np.ndarray, train_mask: np.ndarray, pairs: Pairs, config: FinetuneConfig) -> tuple[Pairs, Pairs]:
    """Training and validation pairs from the training side only, never from test.

    Group split: some training groups are held out for validation and pairs are rebuilt inside each
    side, exactly as :func:`simlab.pairs.build_pairs` builds train and test (no image on both sides,
    the negative ratio kept). Pair split (the study's, leaky): a random share of the training pairs.
    """
    rng = np.random.default_rng(config.seed + 1)
    if config.split == "pair":
        idx = rng.permutation(np.flatnonzero(train_mask))
        n_val = max(1, int(round(config.val_fraction * len(idx))))
        return pairs.subset(np.sort(idx[n_val:])), pairs.subset(np.sort(idx[:n_val]))
    members = np.flatnonzero(~split_groups(groups, config.test_size, config.seed))
    n_groups = len(np.unique(group_codes(groups[members])))
    if n_groups < 4:
        raise ValueError(f"Only {n_groups} training groups: fine-tuning needs at least 4 (2 to train, 2 to "
                         "validate). Use a dataset with more groups or a smaller test fraction.")
    fraction = min(max(config.val_fraction, 2 / n_groups), 1 - 2 / n_groups)
    sub, tr, va = build_pairs(groups[members], "group", fraction, config.negative_ratio, config.negatives,
                              config.seed + 1)
    mapped = Pairs(members[sub.left], members[sub.right], sub.label)
    return mapped.subset(tr), mapped.subset(va)


def prepare_data(config: FinetuneConfig, dataset, log: Callable[[str], None],
                 progress: Progress, should_stop: Callable[[], bool] | None) -> PairData:
    """The dataset's images (those the backbone could read, as in grid runs) and its pairs."""
    vectors, bad = None, {}
    paths, groups, digests = list(dataset.paths), list(dataset.groups), list(dataset.digests)
    if not config.uses_small_cnn:
        from simlab.vectors import vectorize

        def report(done, total, rate, eta):
            progress(0, 0, f"Vectorising with the frozen {config.backbone}: {done}/{total} images, "
                           f"{rate:.1f} img/s, ETA {eta:.0f} s")

        vs = vectorize(dataset, config.backbone, config.weights, progress=report, should_stop=should_stop)
        if vs.computed:
            log(f"{vs.computed} frozen vectors computed (cached for next time)")
        reasons, good = {p.path: p.reason for p in vs.problems}, set(vs.digests)
        bad = {d: reasons.get(p, "could not be vectorised") for p, d in zip(dataset.paths, dataset.digests)
               if d not in good}
        vectors, paths, groups, digests = vs.vectors, vs.paths, vs.groups, vs.digests
    groups_arr = np.asarray(groups)
    pairs, train_mask, test_mask = build_pairs(groups_arr, config.split, config.test_size, config.negative_ratio,
                                               config.negatives, config.seed)
    train, val = carve_validation(groups_arr, train_mask, pairs, config)
    if config.split == "group":
        test_images = np.flatnonzero(split_groups(groups_arr, config.test_size, config.seed))
    else:
        test_images = np.arange(len(groups_arr))
    return PairData(np.asarray(paths), groups_arr, digests, bad, vectors, train, val, pairs.subset(test_mask),
                    test_images)


def decode_images(paths, size: int, should_stop: Callable[[], bool] | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """Every image decoded once to ``size`` px (uint8, N x size x size x 3), as the vectoriser crops them."""
    from concurrent.futures import ThreadPoolExecutor

    from simlab.data.images import load_for_model

    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) + 2)) as pool:
        for i, image in enumerate(pool.map(lambda p: load_for_model(p, size, fit="crop"), paths)):
            out[i] = image
            if i % 50 == 0:
                if progress:
                    progress(0, 0, f"Decoding images once into memory: {i}/{len(paths)}")
                if should_stop and should_stop():
                    raise InterruptedError("Stopped on request while decoding images.")
    return out


def make_triplets(pairs: Pairs, groups: np.ndarray, seed: int) -> np.ndarray:
    """(anchor, positive, negative) rows: each positive pair in both orders, with a random image of
    another group drawn from the same side's images (an (M, 3) index array)."""
    rng = np.random.default_rng(seed)
    pool = np.unique(np.concatenate([pairs.left, pairs.right]))
    codes = group_codes(groups)
    pos = pairs.label == 1
    anchors = np.concatenate([pairs.left[pos], pairs.right[pos]])
    positives = np.concatenate([pairs.right[pos], pairs.left[pos]])
    negatives = np.empty_like(anchors)
    for i, a in enumerate(anchors):
        others = pool[codes[pool] != codes[a]]
        negatives[i] = rng.choice(others)
    return np.column_stack([anchors, positives, negatives])


# --------------------------------------------------------------------------- Keras parts


def unit_scale(x):
    """The small CNN's preprocessing: RGB 0..255 -> 0..1."""
    return x / 255.0


def preprocess_fn(name: str) -> Callable:
    """The preprocessing of a backbone by name, or ``"unit"`` (0..1) for the small CNN."""
    return unit_scale if name == "unit" else get_backbone(name).preprocess


@functools.lru_cache(maxsize=None)
def keras_parts() -> SimpleNamespace:
    """This module's Keras layers, losses and callbacks, defined on first use (importing Keras takes
    seconds; ``python -m simlab --help`` should not). The layers register themselves for loading."""
    import keras
    from keras import layers, ops

    from simlab.classifiers import build_head

    serializable = keras.saving.register_keras_serializable(package="simlab")

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

    def _l2n(x):
        return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)

    # The merges of simlab.merge, in Keras ops (same definitions, so vectors and pixels agree).
    merges = {
        "dot": lambda a, b: _l2n(a) * _l2n(b),
        "l1": lambda a, b: ops.abs(a - b),
        "l2": lambda a, b: ops.square(a - b),
    }
    merges["concat"] = lambda a, b: ops.concatenate([merges[m](a, b) for m in ("dot", "l1", "l2")], axis=-1)

    @serializable
    class PairMerge(layers.Layer):
        """Two vectors -> one, as :mod:`simlab.merge` does (dot, l1, l2, concat)."""

        def __init__(self, merge: str = "dot", **kwargs):
            super().__init__(**kwargs)
            self.merge = merge

        def call(self, inputs):
            return merges[self.merge](*inputs)

        def get_config(self):
            return super().get_config() | {"merge": self.merge}

    @serializable
    class PairDistance(layers.Layer):
        """Euclidean distance between two embeddings, shape (batch, 1)."""

        def call(self, inputs):
            a, b = inputs
            return ops.sqrt(ops.maximum(ops.sum(ops.square(a - b), axis=-1, keepdims=True), 1e-12))

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

    def contrastive_accuracy(margin: float):
        return ThresholdAccuracy(max_distance=max(2.0, 2 * margin))

    def triplet_loss(margin: float):
        """distances = [d(anchor, positive), d(anchor, negative)]: the negative must be a margin farther."""

        def triplet(y_true, distances):
            return ops.maximum(distances[:, 0] - distances[:, 1] + margin, 0.0)

        return triplet

    def triplet_accuracy():
        def accuracy(y_true, distances):
            return ops.cast(distances[:, 0] < distances[:, 1], "float32")

        return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")

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
            import tensorflow as tf

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

    class LiveCurves(keras.callbacks.Callback):
        """Writes the training curves to the store as they happen, reports progress, and checks the
        stop request after every batch (which then ends training once the batch is done).

        Keras reports the epoch's running mean loss after each batch; the batch's own loss is recovered
        from two consecutive means (they are weighted by batch size)."""

        def __init__(self, store, run_id: str, batch_sizes: list[int], epochs: int, progress: Progress,
                     should_stop: Callable[[], bool] | None, log: Callable[[str], None]):
            super().__init__()
            self.store, self.run_id, self.sizes, self.epochs = store, run_id, batch_sizes, epochs
            self.progress, self.should_stop, self.log = progress, should_stop, log
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
                          f"Epoch {self.epoch}/{self.epochs} · batch {batch + 1}/{len(self.sizes)} · "
                          f"loss {mean:.4f}")
            if not self.stopped and self.should_stop and self.should_stop():
                self.stopped = True
                self.model.stop_training = True
                self.log(f"Stop requested: ending after batch {batch + 1} of epoch {self.epoch}")

        def record(self, epoch: int, logs: dict) -> dict:
            """Epoch points (epoch 0: validation before any training) go to the store at once."""
            logs = {k: float(v) for k, v in (logs or {}).items() if k in CURVE_NAMES}
            self.buffer += [(self.step, epoch, name, value) for name, value in logs.items()]
            self.flush()
            self.history[epoch] = logs
            return logs

        def on_epoch_end(self, epoch, logs=None):
            logs = self.record(epoch + 1, logs)
            self.epoch_seconds.append(time.perf_counter() - self.t0)
            text = " · ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items()))
            self.log(f"Epoch {epoch + 1}/{self.epochs}: {text} ({self.epoch_seconds[-1]:.1f} s)")

        def on_train_end(self, logs=None):
            self.flush()

    class BestCheckpoint(keras.callbacks.Callback):
        """Whenever validation loss improves: saves ``target`` (the scoring model) to ``path`` and keeps
        the trained model's weights in memory; restores the best weights when training ends."""

        def __init__(self, target: keras.Model, path: Path):
            super().__init__()
            self.target, self.path = target, Path(path)
            self.best, self.best_epoch, self.best_weights = math.inf, None, None

        def offer(self, epoch: int, logs: dict, model) -> None:
            """Epoch ``epoch`` (0 = before training) ended with these logs: keep it if it is the best."""
            value = float((logs or {}).get("val_loss", math.nan))
            if math.isfinite(value) and value < self.best:
                self.best, self.best_epoch = value, epoch
                self.best_weights = model.get_weights()
                save_model(self.target, self.path)

        def on_epoch_end(self, epoch, logs=None):
            self.offer(epoch + 1, logs, self.model)

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return SimpleNamespace(
        keras=keras, layers=layers, ops=ops, build_head=build_head, augmenter=augmenter, JointAugment=JointAugment,
        Preprocess=Preprocess, PairMerge=PairMerge, PairDistance=PairDistance, contrastive_loss=contrastive_loss,
        contrastive_accuracy=contrastive_accuracy, triplet_loss=triplet_loss, triplet_accuracy=triplet_accuracy,
        projection=projection, small_cnn=small_cnn, TwoSpeedModel=TwoSpeedModel, IndexBatches=IndexBatches,
        LiveCurves=LiveCurves, BestCheckpoint=BestCheckpoint)


def save_model(model, path: Path) -> Path:
    """Save a Keras model atomically (a killed job never leaves half a ``.keras`` file)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return Path(path)


def load_checkpoint(path: str | Path):
    """A saved model of this module (``best.keras`` or ``tower.keras``), ready to predict."""
    k = keras_parts()
    return k.keras.saving.load_model(path, compile=False)


def pair_pipeline(backbone: str, augment: bool = True, same_transform: bool = True, seed: int = 0):
    """The pixels-to-network-input step of an image pair: augmentation (while training) on raw
    0..255 pixels, THEN the backbone's preprocessing. Returns ``f(a, b, training) -> (a', b')``."""
    k = keras_parts()
    joint = k.JointAugment(same_transform, seed) if augment else None
    pre = k.Preprocess(backbone)

    def run(a, b, training: bool = True):
        if joint is not None:
            a, b = joint([a, b], training=training)
        return pre(a), pre(b)

    return run


def unfreeze_top(model, k: int) -> list:
    """Freeze ``model`` except its top ``k`` layers that carry weights; returns their trainable weights."""
    weighted = [layer for layer in model.layers if layer.weights]
    model.trainable = k > 0
    for i, layer in enumerate(weighted):
        layer.trainable = i >= len(weighted) - k
    return [w for layer in weighted[len(weighted) - k:] for w in layer.trainable_weights] if k else []


# --------------------------------------------------------------------------- models


@dataclass
class Built:
    """What one run trains and scores with."""

    trainer: object  # the model being fit
    scorer: object  # pair model: (a, b) -> P(same) (head) or distance (siamese); saved as best.keras
    source: np.ndarray  # what the index batches read: frozen vectors or decoded images
    train_x: list  # index columns of the training rows
    train_y: np.ndarray
    val_x: list
    val_y: np.ndarray
    loss: object
    metrics: list
    embedder: object = None  # siamese: one image (raw pixels or frozen vector) -> embedding
    tower: object = None  # siamese: preprocessed image -> embedding (the new backbone)
    input_size: int = 0
    preprocess: str = ""


def _encoder(config: FinetuneConfig, k: SimpleNamespace):
    """The image network shared by both images: (model on preprocessed images, slow weights, size, preprocess)."""
    if config.uses_small_cnn:
        return k.small_cnn(config.cnn_size, config.embedding_dim), [], config.cnn_size, "unit"
    bb = get_backbone(config.backbone)
    base = bb.build(config.weights)
    return base, unfreeze_top(base, config.unfreeze), bb.input_size, bb.name


def _pair_inputs(config: FinetuneConfig, k: SimpleNamespace, n: int, size: int | None, dim: int | None):
    """n Keras inputs: raw images (size x size x 3) or frozen vectors (dim)."""
    shape = (size, size, 3) if size else (dim,)
    return [k.keras.Input(shape, name=f"{'image' if size else 'vector'}_{i}") for i in range(n)]


def _model(k, config, inputs, outputs, slow, name):
    if slow:
        return k.TwoSpeedModel(inputs, outputs, slow=slow, slow_factor=config.backbone_lr_factor, name=name)
    return k.keras.Model(inputs, outputs, name=name)


def build_head_models(config: FinetuneConfig, data: PairData, images: np.ndarray | None) -> Built:
    """The study's head on merged vectors; on pixels (augmented, backbone partly unfrozen) when asked."""
    from simlab.merge import merge_pairs

    k = keras_parts()
    keras, layers = k.keras, k.layers
    merged = merge_pairs(data.vectors, data.train.left, data.train.right, config.merge)
    # Standardise the merged vector with the training statistics of the frozen backbone, as KerasHead does.
    norm = layers.Normalization(mean=merged.mean(axis=0), variance=merged.var(axis=0) + 1e-12, name="standardise")
    head = k.build_head(merged.shape[1])
    slow = []
    if images is None:
        inputs = _pair_inputs(config, k, 2, None, data.vectors.shape[1])
        a, b = inputs
    else:
        encoder, slow, size, pre_name = _encoder(config, k)
        inputs = _pair_inputs(config, k, 2, size, None)
        a, b = inputs
        if config.augment:
            a, b = k.JointAugment(config.same_transform, config.seed, name="augment_pair")([a, b])
        pre = k.Preprocess(pre_name, name="preprocess")
        a, b = encoder(pre(a), training=False), encoder(pre(b), training=False)  # BatchNorm stays in inference
    prob = head(norm(k.PairMerge(config.merge, name="merge")([a, b])))
    scorer = keras.Model(inputs, prob, name="pair_head")
    trainer = _model(k, config, inputs, prob, slow, "pair_head_trainer") if slow else scorer
    source = data.vectors if images is None else images
    return Built(trainer, scorer, source, [data.train.left, data.train.right], data.train.label,
                 [data.val.left, data.val.right], data.val.label, "sparse_categorical_crossentropy",
                 ["accuracy"])


def build_siamese_models(config: FinetuneConfig, data: PairData, images: np.ndarray | None) -> Built:
    """One shared tower, the distance between two embeddings, a contrastive (or triplet) loss."""
    k = keras_parts()
    keras = k.keras
    triplet = config.loss == "triplet"
    n_in = 3 if triplet else 2
    slow, size, pre_name = [], 0, ""
    if images is None:  # frozen backbone: only the projection trains, on the cached vectors
        tower = k.projection(data.vectors.shape[1], config.embedding_dim, _projection_start(config, data))
        inputs = _pair_inputs(config, k, n_in, None, data.vectors.shape[1])
        embedded = [tower(x) for x in inputs]
        embed_in = keras.Input((data.vectors.shape[1],))
        embedder = keras.Model(embed_in, tower(embed_in), name="embedder")
    else:
        encoder, slow, size, pre_name = _encoder(config, k)
        if config.uses_small_cnn:
            tower = encoder
        else:
            pre_in = keras.Input((size, size, 3), name="preprocessed")
            proj = k.projection(encoder.output_shape[-1], config.embedding_dim, _projection_start(config, data))
            tower = keras.Model(pre_in, proj(encoder(pre_in, training=False)), name="tower")
        inputs = _pair_inputs(config, k, n_in, size, None)
        xs = list(inputs)
        if config.augment:
            xs = k.JointAugment(config.same_transform and not triplet, config.seed, name="augment_pair")(xs)
        pre = k.Preprocess(pre_name, name="preprocess")
        embedded = [tower(pre(x)) for x in xs]
        raw_in = keras.Input((size, size, 3))
        embedder = keras.Model(raw_in, tower(pre(raw_in)), name="embedder")
    distance = k.PairDistance(name="distance")
    # The scoring model: the distance between two un-augmented images' embeddings (best.keras).
    pair_in = [keras.Input(embedder.input_shape[1:], name=f"input_{i}") for i in range(2)]
    scorer = keras.Model(pair_in, distance([embedder(x) for x in pair_in]), name="siamese")
    if triplet:
        out = k.layers.Concatenate(name="distances")([distance([embedded[0], embedded[1]]),
                                                      distance([embedded[0], embedded[2]])])
        train_rows = make_triplets(data.train, data.groups, config.seed)
        val_rows = make_triplets(data.val, data.groups, config.seed + 1)
        train_x, val_x = list(train_rows.T), list(val_rows.T)
        train_y, val_y = np.zeros(len(train_rows)), np.zeros(len(val_rows))
        loss, metrics = k.triplet_loss(config.margin), [k.triplet_accuracy()]
    else:
        out = distance(embedded[:2])
        train_x, val_x = [data.train.left, data.train.right], [data.val.left, data.val.right]
        train_y, val_y = data.train.label, data.val.label
        loss, metrics = k.contrastive_loss(config.margin), [k.contrastive_accuracy(config.margin)]
    trainer = _model(k, config, inputs, out, slow, "siamese_trainer")
    source = data.vectors if images is None else images
    return Built(trainer, scorer, source, train_x, train_y, val_x, val_y, loss, metrics, embedder, tower, size,
                 pre_name)


BUILDERS = {"head": build_head_models, "siamese": build_siamese_models}


def learned_whitening(vectors: np.ndarray, pairs: Pairs, dim: int, shrinkage: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A linear map (kernel, bias) of L2-normalised vectors: whitening of the differences between
    images of one scene, then PCA to ``dim`` (Radenovic, Tolias & Chum 2018, "learned whitening").

    Directions along which views of one scene vary are shrunk; the rest are kept. Only the training
    pairs are used; ``shrinkage`` (times the mean eigenvalue, added to the within-scene covariance)
    blends it with plain cosine and keeps it stable with few pairs.
    """
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    x = x.astype(np.float64)
    images = np.unique(np.concatenate([pairs.left, pairs.right]))
    mean = x[images].mean(axis=0)
    pos = pairs.label == 1
    diffs = x[pairs.left[pos]] - x[pairs.right[pos]]
    within = diffs.T @ diffs / max(len(diffs), 1)
    within += shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    eigval, eigvec = np.linalg.eigh(within)
    whiten = (eigvec / np.sqrt(eigval)) @ eigvec.T
    centred = (x[images] - mean) @ whiten
    _, components = np.linalg.eigh(centred.T @ centred)  # ascending: the main directions come last
    kernel = whiten @ components[:, ::-1][:, :dim]
    kernel /= kernel.std() * np.sqrt(kernel.shape[0])  # Glorot-like scale, so Adam's steps are meaningful
    return kernel, -mean @ kernel


def _projection_start(config: FinetuneConfig, data: PairData):
    return learned_whitening(data.vectors, data.train, config.embedding_dim) if config.init == "whitening" else None


# --------------------------------------------------------------------------- tuned towers as backbones


def tuned_name(run_id: str) -> str:
    return f"{TUNED_PREFIX}{run_id}"


def run_folder(run_id: str) -> Path:
    """Where a run keeps its checkpoint (best.keras), and for Siamese runs its tower."""
    return cache_dir("runs", run_id)


def register_tuned(run_id: str) -> Backbone:
    """Register the Siamese tower of a run as the backbone ``siamese-<run id>``."""
    folder = run_folder(run_id)
    meta = json.loads((folder / "tower.json").read_text())
    base = meta["preprocess"]
    version = "1" if base == "unit" else get_backbone(base).preprocessing_version

    def build(weights: str | None = None):
        # The tower carries its own trained weights; ``weights`` only names those of the base it grew from.
        return load_checkpoint(folder / "tower.keras")

    return register(Backbone(
        name=tuned_name(run_id), input_size=int(meta["input_size"]), dim=int(meta["dim"]), build=build,
        preprocess=preprocess_fn(base),
        description=f"Siamese tower of fine-tune run {run_id}: {meta['base']} + {meta['loss']} "
                    f"-> {meta['dim']}-d (trained here, works offline)",
        bundled=True, preprocessing_version=f"{version}-tuned",
        options={"tuned": True, "run_id": run_id, "folder": str(folder), "base": meta["base"],
                 "base_weights": meta["base_weights"]}))


def sync_tuned_backbones() -> None:
    """Register the towers found under ``cache/runs/*/tower.json``; forget those whose folder is gone."""
    root = cache_dir("runs")
    for name, bb in list(BACKBONES.items()):
        folder = Path(bb.options.get("folder", ""))
        if bb.options.get("tuned") and (folder.parent != root or not (folder / "tower.json").exists()):
            del BACKBONES[name]  # deleted, or from another cache (SIMLAB_CACHE changed)
    for meta in root.glob("*/tower.json"):
        name = tuned_name(meta.parent.name)
        if name not in BACKBONES or BACKBONES[name].options.get("folder") != str(meta.parent):
            try:
                register_tuned(meta.parent.name)
            except Exception:  # an unreadable tower is skipped, never fatal to the registry
                continue


def _write_vector_cache(name: str, weights: str, dataset, data: PairData, embeddings: np.ndarray) -> str:
    """Put the tower's vectors into the vector cache, so ``vectorize(dataset, name)`` is a cache hit.

    Same file layout as :func:`simlab.vectors.vectorize` writes: vectors, digests, bad (JSON)."""
    from simlab.vectors import _cache_folder, config_key

    key = config_key(name, weights)
    target = _cache_folder(key) / f"{dataset.fingerprint}.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, vectors=embeddings.astype(np.float32), digests=np.array(data.digests),
                 bad=json.dumps(data.bad))
    return key


# --------------------------------------------------------------------------- the run


def run_finetune(config: FinetuneConfig, store=None, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None, job_id: str | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Train, checkpoint and score one fine-tuning run; curves, metrics and predictions go to the store.

    Returns a summary (run_id, mode, backbone, accuracy, auc, epochs_run, status, ...). A stop
    request ends training after the current batch: the best checkpoint is scored and the run is
    stored as ``cancelled``.
    """
    from simlab.data import load_dataset
    from simlab.experiment import git_commit, library_versions
    from simlab.store import Store, new_id

    config.validate()
    store = store or Store()
    progress = progress or (lambda *a: None)
    log = log or (lambda text: None)
    progress(0, 0, "Loading the dataset")
    dataset = load_dataset(config.dataset)
    run_id = new_id("f")
    store.add_run(id=run_id, kind="finetune", dataset=config.dataset, fingerprint=dataset.fingerprint,
                  backbone=config.backbone_label, merge=config.merge_label, classifier=config.classifier_label,
                  split=config.split, seed=config.seed, config=asdict(config), versions=library_versions(),
                  git=git_commit(), job_id=job_id, artifacts={"folder": str(run_folder(run_id))})
    try:
        return _train_and_score(config, dataset, store, run_id, progress, should_stop, log)
    except InterruptedError as exc:
        store.update_run(run_id, status="cancelled", error=str(exc), finished=time.time())
        raise
    except BaseException as exc:
        store.update_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
        raise


def _train_and_score(config: FinetuneConfig, dataset, store, run_id: str, progress: Progress,
                     should_stop, log) -> dict:
    t_start = time.perf_counter()
    k = keras_parts()
    k.keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, dataset, log, progress, should_stop)
    images = None
    if config.on_images:
        size = config.cnn_size if config.uses_small_cnn else get_backbone(config.backbone).input_size
        images = decode_images(data.paths, size, should_stop, progress)
    log(f"Run {run_id}: {config.mode} on {len(data.train)} training, {len(data.val)} validation and "
        f"{len(data.test)} test pairs ({'pixels' if images is not None else 'cached frozen vectors'})")
    progress(0, 0, "Building the model")
    k.keras.utils.set_random_seed(config.seed)  # the same initial weights whatever ran before
    policy = k.keras.mixed_precision.global_policy()
    k.keras.mixed_precision.set_global_policy("float32")  # distances and thresholds need float32, even on a GPU
    try:
        built = BUILDERS[config.mode](config, data, images)
    finally:
        k.keras.mixed_precision.set_global_policy(policy)
    folder = run_folder(run_id)
    train_batches = k.IndexBatches(built.source, built.train_x, built.train_y, config.batch_size, seed=config.seed,
                                   max_batches=config.steps_per_epoch)
    val_batches = k.IndexBatches(built.source, built.val_x, built.val_y, config.batch_size)
    artifacts = {"folder": str(folder), "steps_per_epoch": len(train_batches)}  # the page's x axis needs it
    store.update_run(run_id, artifacts=artifacts)
    curves = k.LiveCurves(store, run_id, train_batches.batch_sizes(), config.epochs, progress, should_stop, log)
    best = k.BestCheckpoint(built.scorer, folder / "best.keras")
    built.trainer.compile(optimizer=k.keras.optimizers.Adam(config.rate), loss=built.loss,
                          metrics=built.metrics)
    progress(0, 0, "Validating the starting point")
    start = curves.record(0, {f"val_{name}": value for name, value in
                              built.trainer.evaluate(val_batches, verbose=0, return_dict=True).items()})
    best.offer(0, start, built.trainer)
    log("Before training: " + " · ".join(f"{k} {v:.4f}" for k, v in sorted(start.items())))
    stop_early = k.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                 baseline=start.get("val_loss"))
    t_fit = time.perf_counter()
    built.trainer.fit(train_batches, validation_data=val_batches, epochs=config.epochs, shuffle=False, verbose=0,
                      callbacks=[curves, best, stop_early])
    t_scored = time.perf_counter()
    if best.best_epoch is None:  # no finite validation loss: keep the last weights
        save_model(built.scorer, folder / "best.keras")
    progress(0, 0, "Scoring the best checkpoint on the test pairs")
    metrics, prob, extra = _score(config, built, data, dataset, run_id)
    status = "cancelled" if curves.stopped else "done"
    n_epochs = len(curves.epoch_seconds)
    metrics |= {"n_train": len(data.train), "n_val": len(data.val), "epochs_run": n_epochs,
                "best_epoch": best.best_epoch, "best_val_loss": None if best.best_epoch is None else best.best,
                "stopped": curves.stopped} | extra
    if best.best_epoch is not None:
        metrics["best_val_accuracy"] = curves.history.get(best.best_epoch, {}).get("val_accuracy")
    t_end = time.perf_counter()
    timings = {"total": t_end - t_start, "prepare": t_fit - t_start, "train": t_scored - t_fit,
               "score": t_end - t_scored, "epochs": curves.epoch_seconds,
               "per_epoch": float(np.mean(curves.epoch_seconds)) if curves.epoch_seconds else None}
    left, right = data.test.left, data.test.right
    import pandas as pd

    predictions = pd.DataFrame({"left_path": data.paths[left], "right_path": data.paths[right],
                                "left_group": data.groups[left], "right_group": data.groups[right],
                                "label": data.test.label.astype(int), "prob": prob})
    artifacts["checkpoint"] = str(folder / "best.keras")
    if "tuned_backbone" in extra:
        artifacts["tower"] = str(folder / "tower.keras")
    store.finish_run(run_id, metrics, predictions, status=status, timings=timings, artifacts=artifacts)
    summary = (f"test accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f} "
               f"(best epoch {best.best_epoch} of {n_epochs}, {timings['total']:.0f} s)")
    progress(1, 1, f"{'Stopped and scored' if curves.stopped else 'Done'}: {summary}")
    log(f"Run {run_id} {status}: {summary}")
    return {"run_id": run_id, "mode": config.mode, "backbone": config.backbone_label, "merge": config.merge_label,
            "classifier": config.classifier_label, "status": status, **metrics,
            "seconds": round(timings["total"], 2),
            "seconds_per_epoch": None if timings["per_epoch"] is None else round(timings["per_epoch"], 2)}


def _predict(model, source, columns, batch_size: int = 256) -> np.ndarray:
    k = keras_parts()
    return np.asarray(model.predict(k.IndexBatches(source, columns, batch_size=batch_size), verbose=0), np.float64)


def _score(config: FinetuneConfig, built: Built, data: PairData, dataset, run_id: str) -> tuple[dict, np.ndarray, dict]:
    """Test metrics of the restored best weights; for Siamese runs, the threshold chosen on
    validation, retrieval mAP on the held-out images, and the tower saved and registered."""
    from simlab.evaluate import pair_metrics, retrieval_map

    test_cols = [data.test.left, data.test.right]
    test_img = data.test_images
    extra = {} if data.vectors is None else {
        "map_frozen": retrieval_map(data.vectors[test_img], data.groups[test_img]),
        "map_scope": "test images" if config.split == "group" else "all images"}
    if config.mode == "head":
        prob = _predict(built.scorer, built.source, test_cols)[:, 1]
        return pair_metrics(data.test.label, prob, seed=config.seed), prob, extra

    from simlab.classifiers import SimilarityThreshold

    d_val = _predict(built.scorer, built.source, [data.val.left, data.val.right])[:, 0]
    d_test = _predict(built.scorer, built.source, test_cols)[:, 0]
    # Threshold on the (negated) distance, tuned on validation pairs; probabilities are a logistic of it.
    rule = SimilarityThreshold().fit(-d_val[:, None], data.val.label)
    prob = rule.predict_proba(-d_test[:, None])[:, 1]
    metrics = pair_metrics(data.test.label, prob, seed=config.seed)
    extra |= {"distance_threshold": float(-rule.threshold_) if rule.sign_ > 0 else None, "margin": config.margin}

    embeddings = np.asarray(_predict(built.embedder, built.source, [np.arange(len(built.source))]), np.float32)
    extra["map"] = retrieval_map(embeddings[test_img], data.groups[test_img])
    extra["map_scope"] = "test images" if config.split == "group" else "all images"

    tower, size, pre_name = built.tower, built.input_size, built.preprocess
    if data.vectors is not None and built.input_size == 0:  # frozen: the tower is the backbone + projection
        k = keras_parts()
        bb = get_backbone(config.backbone)
        base = bb.build(config.weights)
        pre_in = k.keras.Input((bb.input_size, bb.input_size, 3), name="preprocessed")
        tower = k.keras.Model(pre_in, built.tower(base(pre_in, training=False)), name="tower")
        size, pre_name = bb.input_size, bb.name
    folder = run_folder(run_id)
    save_model(tower, folder / "tower.keras")
    meta = {"run_id": run_id, "base": config.backbone_label, "base_weights": config.weights,
            "input_size": size, "dim": int(embeddings.shape[1]), "preprocess": pre_name, "loss": config.loss,
            "created": time.time()}
    with atomic_path(folder / "tower.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    register_tuned(run_id)
    name = tuned_name(run_id)
    extra["tuned_backbone"] = name
    extra["vector_key"] = _write_vector_cache(name, config.weights, dataset, data, embeddings)
    return metrics, prob, extra


# --------------------------------------------------------------------------- job and CLI


def finetune_job(params: dict, store, progress: Progress, should_stop, job_id: str | None = None) -> dict:
    """The ``finetune`` job kind (params: a FinetuneConfig as a dict)."""
    config = FinetuneConfig.from_params(params).validate()
    return run_finetune(config, store, progress, should_stop, job_id=job_id, log=lambda t: print(t, flush=True))


def add_cli(subparsers, data_args) -> None:
    """``python -m simlab finetune ...``"""
    p = subparsers.add_parser("finetune", help="fine-tune the neural head end to end, or train a Siamese network",
                              description="Train on image pairs with live curves in the run store; prints one "
                                          "line per epoch and the test metrics.")
    data_args(p)
    d = FinetuneConfig()
    p.add_argument("--mode", default=d.mode, choices=list(MODES), help="head | siamese (default siamese)")
    p.add_argument("--backbone", default=d.backbone, help=f"pretrained backbone (default {d.backbone})")
    p.add_argument("--merge", default=d.merge, help="head mode: dot | l1 | l2 | concat (default dot)")
    p.add_argument("--tower", default=d.tower, choices=list(TOWERS), help="siamese: backbone (+ projection) or small-cnn")
    p.add_argument("--loss", default=d.loss, choices=list(LOSSES), help="siamese: contrastive or triplet")
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--init", default=d.init, choices=list(INITS),
                   help="siamese projection: learned whitening of the training pairs (default) or random")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the head / projection (default 1e-3; 1e-4 from whitening)")
    p.add_argument("--unfreeze", type=int, default=d.unfreeze, metavar="K",
                   help="also train the backbone's top K weighted layers, at lr x --backbone-lr-factor")
    p.add_argument("--backbone-lr-factor", type=float, default=d.backbone_lr_factor)
    p.add_argument("--augment", action="store_true", help="augment raw pixels (flip, rotate, zoom, shift, contrast)")
    p.add_argument("--independent", action="store_true", help="with --augment: a different transform per image")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (random subset each)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping on validation loss")
    p.add_argument("--split", default=d.split, choices=SPLITS)
    p.add_argument("--test-size", type=float, default=d.test_size)
    p.add_argument("--negative-ratio", type=float, default=d.negative_ratio)
    p.add_argument("--negatives", default=d.negatives, choices=NEGATIVE_SCHEMES)
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    config = FinetuneConfig(
        dataset=args.dataset, mode=args.mode, backbone=args.backbone, weights=args.weights, merge=args.merge,
        tower=args.tower, init=args.init, loss=args.loss, margin=args.margin, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, unfreeze=args.unfreeze, backbone_lr_factor=args.backbone_lr_factor,
        augment=args.augment, same_transform=not args.independent, steps_per_epoch=args.steps_per_epoch,
        patience=args.patience, split=args.split, test_size=args.test_size, negative_ratio=args.negative_ratio,
        negatives=args.negatives, seed=args.seed).validate()
    out = sys.stderr if args.json else sys.stdout
    requested = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after this batch and score; second: abort
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("\nstopping after this batch (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_finetune(config, should_stop=lambda: bool(requested), log=lambda t: print(t, file=out, flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"{result['mode']} · {result['backbone']}: accuracy {result['accuracy']:.3f} "
              f"[{result['accuracy_lo']:.3f}, {result['accuracy_hi']:.3f}], AUC {result['auc']:.3f}, "
              f"{result['epochs_run']} epoch(s), run {result['run_id']}"
              + (f"; its tower is now the backbone {result['tuned_backbone']}" if "tuned_backbone" in result else ""))
    return 0
