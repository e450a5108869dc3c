"""The Keras models of one fine-tuning run: the study's head on pairs, or a Siamese network.

``BUILDERS[mode](config, data, images) -> Built``: what the run fits (``trainer``), what it saves
and scores with (``scorer``), and what the index batches read (``source``: frozen vectors, or
decoded images when training needs pixels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers

from simlab.backbones import get_backbone
from simlab.classifiers import build_head
from simlab.finetune.config import FinetuneConfig
from simlab.finetune.data import PairData, make_triplets
from simlab.finetune.layers import (
    BatchRecall,
    JointAugment,
    PairDistance,
    PairMerge,
    Preprocess,
    TwoSpeedModel,
    contrastive_accuracy,
    contrastive_loss,
    multi_similarity_loss,
    projection,
    small_cnn,
    triplet_accuracy,
    triplet_loss,
)
from simlab.finetune.validation import query_aps
from simlab.merge import merge_pairs
from simlab.pairs import Pairs, group_codes

log = logging.getLogger(__name__)


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
    info: dict = field(default_factory=dict)  # choices made while building (e.g. the whitening's shrinkage)


def unfreeze_top(model, k: int) -> list:
    """Freeze ``model`` except its top ``k`` layers that carry weights; returns their trainable weights."""
    weighted = [layer for layer in model.layers if layer.weights]
    model.trainable = k > 0
    for i, layer in enumerate(weighted):
        layer.trainable = i >= len(weighted) - k
    return [w for layer in weighted[len(weighted) - k:] for w in layer.trainable_weights] if k else []


def _encoder(config: FinetuneConfig):
    """The image network shared by both images: (model on preprocessed images, slow weights, size, preprocess)."""
    if config.uses_small_cnn:
        return small_cnn(config.cnn_size, config.embedding_size(0)), [], config.cnn_size, "unit"
    bb = get_backbone(config.backbone)
    base = bb.build(config.weights)
    return base, unfreeze_top(base, config.unfreeze), bb.input_size, bb.name


def _pair_inputs(n: int, size: int | None, dim: int | None) -> list:
    """n Keras inputs: raw images (size x size x 3) or frozen vectors (dim)."""
    shape = (size, size, 3) if size else (dim,)
    return [keras.Input(shape, name=f"{'image' if size else 'vector'}_{i}") for i in range(n)]


def _model(config: FinetuneConfig, inputs, outputs, slow, name: str):
    if slow:
        return TwoSpeedModel(inputs, outputs, slow=slow, slow_factor=config.backbone_lr_factor, name=name)
    return keras.Model(inputs, outputs, name=name)


def build_head_models(config: FinetuneConfig, data: PairData, images: np.ndarray | None) -> Built:
    """The study's head on merged vectors; on pixels (augmented, backbone partly unfrozen) when asked."""
    merged = merge_pairs(data.vectors, data.train.left, data.train.right, config.merge)
    # Standardise the merged vector with the training statistics of the frozen backbone, as KerasHead does.
    norm = layers.Normalization(mean=merged.mean(axis=0), variance=merged.var(axis=0) + 1e-12, name="standardise")
    head = build_head(merged.shape[1])
    slow = []
    if images is None:
        inputs = _pair_inputs(2, None, data.vectors.shape[1])
        a, b = inputs
    else:
        encoder, slow, size, pre_name = _encoder(config)
        inputs = _pair_inputs(2, size, None)
        a, b = inputs
        if config.augment:
            a, b = JointAugment(config.same_transform, config.seed, name="augment_pair")([a, b])
        pre = Preprocess(pre_name, name="preprocess")
        a, b = encoder(pre(a), training=False), encoder(pre(b), training=False)  # BatchNorm stays in inference
    prob = head(norm(PairMerge(config.merge, name="merge")([a, b])))
    scorer = keras.Model(inputs, prob, name="pair_head")
    trainer = _model(config, inputs, prob, slow, "pair_head_trainer") if slow else scorer
    source = data.vectors if images is None else images
    return Built(trainer, scorer, source, [data.train.left, data.train.right], data.train.label,
                 [data.val.left, data.val.right], data.val.label, "sparse_categorical_crossentropy",
                 ["accuracy"])


def _siamese_tower(config: FinetuneConfig, data: PairData, images: np.ndarray | None, n_in: int, info: dict):
    """(tower, inputs, their embeddings, embedder, slow weights, input size, preprocess name)."""
    if images is None:  # frozen backbone: only the projection trains, on the cached vectors
        tower = projection(data.vectors.shape[1], config.embedding_size(data.vectors.shape[1]),
                           _projection_start(config, data, info))
        inputs = _pair_inputs(n_in, None, data.vectors.shape[1])
        embedded = [tower(x) for x in inputs]
        embed_in = keras.Input((data.vectors.shape[1],))
        embedder = keras.Model(embed_in, tower(embed_in), name="embedder")
        return tower, inputs, embedded, embedder, [], 0, ""
    encoder, slow, size, pre_name = _encoder(config)
    if config.uses_small_cnn:
        tower = encoder
    else:
        pre_in = keras.Input((size, size, 3), name="preprocessed")
        proj = projection(encoder.output_shape[-1], config.embedding_size(encoder.output_shape[-1]),
                          _projection_start(config, data, info))
        tower = keras.Model(pre_in, proj(encoder(pre_in, training=False)), name="tower")
    inputs = _pair_inputs(n_in, size, None)
    xs = list(inputs)
    if config.augment:
        xs = JointAugment(config.same_transform and n_in == 2, config.seed, name="augment_pair")(xs)
    pre = Preprocess(pre_name, name="preprocess")
    embedded = [tower(pre(x)) for x in xs]
    raw_in = keras.Input((size, size, 3))
    embedder = keras.Model(raw_in, tower(pre(raw_in)), name="embedder")
    return tower, inputs, embedded, embedder, slow, size, pre_name


def build_siamese_models(config: FinetuneConfig, data: PairData, images: np.ndarray | None) -> Built:
    """One shared tower; a multi-similarity loss on batches of scenes, or the distance between two
    embeddings with a contrastive (or triplet) loss."""
    triplet = config.loss == "triplet"
    info: dict = {}
    tower, inputs, embedded, embedder, slow, size, pre_name = _siamese_tower(
        config, data, images, 1 if config.group_batches else 3 if triplet else 2, info)
    distance = PairDistance(name="distance")
    # The scoring model: the distance between two un-augmented images' embeddings (best.keras).
    pair_in = [keras.Input(embedder.input_shape[1:], name=f"input_{i}") for i in range(2)]
    scorer = keras.Model(pair_in, distance([embedder(x) for x in pair_in]), name="siamese")
    if config.group_batches:  # rows are images, labels their scene codes (GroupBatches batches them)
        out = embedded[0]
        codes = group_codes(data.groups).astype(np.float32)
        train_x, val_x = [data.train_images], [data.val_images]
        train_y, val_y = codes, codes
        loss, metrics = multi_similarity_loss(), [BatchRecall()]
    elif triplet:
        out = layers.Concatenate(name="distances")([distance([embedded[0], embedded[1]]),
                                                    distance([embedded[0], embedded[2]])])
        train_rows = make_triplets(data.train, data.groups, config.seed)
        val_rows = make_triplets(data.val, data.groups, config.seed + 1)
        train_x, val_x = list(train_rows.T), list(val_rows.T)
        train_y, val_y = np.zeros(len(train_rows)), np.zeros(len(val_rows))
        loss, metrics = triplet_loss(config.margin), [triplet_accuracy()]
    else:
        out = distance(embedded[:2])
        train_x, val_x = [data.train.left, data.train.right], [data.val.left, data.val.right]
        train_y, val_y = data.train.label, data.val.label
        loss, metrics = contrastive_loss(config.margin), [contrastive_accuracy(config.margin)]
    trainer = _model(config, inputs, out, slow, "siamese_trainer")
    source = data.vectors if images is None else images
    return Built(trainer, scorer, source, train_x, train_y, val_x, val_y, loss, metrics, embedder, tower, size,
                 pre_name, info)


BUILDERS = {"head": build_head_models, "siamese": build_siamese_models}


def _within_scene(vectors: np.ndarray, pairs: Pairs):
    """What learned whitening needs from the training pairs, whatever the shrinkage: the L2-normalised
    vectors (float64), the training images, their mean, and the eigen-decomposition of the covariance
    of the differences between images of one scene."""
    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    x = x.astype(np.float64)
    images = np.unique(np.concatenate([pairs.left, pairs.right]))
    pos = pairs.label == 1
    diffs = x[pairs.left[pos]] - x[pairs.right[pos]]
    eigval, eigvec = np.linalg.eigh(diffs.T @ diffs / max(len(diffs), 1))
    return x, images, x[images].mean(axis=0), eigval, eigvec


def _whitener(eigval: np.ndarray, eigvec: np.ndarray, shrinkage: float) -> np.ndarray:
    """(within + shrinkage x mean eigenvalue x I)^(-1/2): the shrinkage only shifts the eigenvalues.

    The mean is over the directions the training pairs span (the non-zero eigenvalues). With fewer pairs than
    dimensions most eigenvalues are 0, and a mean over every dimension made the shrinkage so small that the
    whitening squeezed each training scene to a point: every training batch was separated before the first
    step, and the loss had nothing to learn from."""
    eigval = np.maximum(eigval, 0)
    spanned = max(int(np.sum(eigval > 1e-9 * max(float(eigval.max()), 1e-300))), 1)
    return (eigvec / np.sqrt(eigval + shrinkage * eigval.sum() / spanned)) @ eigvec.T


def learned_whitening(vectors: np.ndarray, pairs: Pairs, dim: int, shrinkage: float = 1.0,
                      parts=None) -> tuple[np.ndarray, np.ndarray]:
    """A linear map (kernel, bias) of L2-normalised vectors: whitening of the differences between
    images of one scene, then PCA to ``dim`` (Radenovic, Tolias & Chum 2018, "learned whitening").

    Directions along which views of one scene vary are shrunk; the rest are kept. Only the training
    pairs are used; ``shrinkage`` (times the mean eigenvalue, added to the within-scene covariance)
    blends it with plain cosine and keeps it stable with few pairs. ``parts``: :func:`_within_scene`'s
    answer for these vectors and pairs, when several shrinkages are tried.
    """
    x, images, mean, eigval, eigvec = parts or _within_scene(vectors, pairs)
    whiten = _whitener(eigval, eigvec, shrinkage)
    centred = (x[images] - mean) @ whiten
    _, components = np.linalg.eigh(centred.T @ centred)  # ascending: the main directions come last
    kernel = whiten @ components[:, ::-1][:, :dim]
    kernel /= kernel.std() * np.sqrt(kernel.shape[0])  # Glorot-like scale, so Adam's steps are meaningful
    return kernel, -mean @ kernel


SHRINKAGES = (0.03, 0.1, 0.3, 1.0, 3.0)  # learned whitening's candidates, chosen on validation mAP


def choose_whitening(vectors: np.ndarray, train: Pairs, val_images: np.ndarray, groups: np.ndarray, dim: int,
                     shrinkages=SHRINKAGES) -> tuple[tuple[np.ndarray, np.ndarray], float, dict]:
    """Learned whitening (on the training pairs) with the shrinkage whose L2-normalised output retrieves
    best on the validation images (the largest on ties: the most regularised, the closest to plain cosine):
    ((kernel, bias), shrinkage, {shrinkage: mAP}).

    One eigen-decomposition serves every shrinkage; at full size the PCA step is a rotation, which
    changes no cosine, so candidates are scored without it and it runs once, for the one chosen."""
    parts = _within_scene(vectors, train)
    x, _, mean, eigval, eigvec = parts
    full = dim >= x.shape[1]
    scores = {}
    for shrinkage in shrinkages:
        if full:
            embedded = (x[val_images] - mean) @ _whitener(eigval, eigvec, shrinkage)
        else:
            kernel, bias = learned_whitening(vectors, train, dim, shrinkage, parts)
            embedded = x[val_images] @ kernel + bias
        scores[shrinkage] = query_aps(embedded, groups[val_images]).mean  # as validation mAP is measured
    chosen = max(shrinkages, key=lambda s: (scores[s], s))
    return learned_whitening(vectors, train, dim, chosen, parts), chosen, scores


def _projection_start(config: FinetuneConfig, data: PairData, info: dict):
    if config.init != "whitening":
        return None
    dim = config.embedding_size(data.vectors.shape[1])
    if len(data.val_images) < 2:
        return learned_whitening(data.vectors, data.train, dim)
    start, info["whitening_shrinkage"], scores = choose_whitening(data.vectors, data.train, data.val_images,
                                                                  data.groups, dim)
    info["whitening_val_map"] = {str(k): round(v, 4) for k, v in scores.items()}
    return start
