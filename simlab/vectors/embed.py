"""The backbone's forward pass: model loading, compiled for the Keras backend in use, and
:func:`compute_vectors` (files -> vectors, no cache) and :func:`compute_many` (several backbones
fed from one decode of each file)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simlab.backbones import get_backbone
from simlab.device import has_gpu
from simlab.progress import Progress, ShouldStop, check_stop
from simlab.vectors.decoders import Decoder, choose_decoder
from simlab.vectors.fold import fold_batchnorm

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def load_model(backbone: str, weights: str):
    """The backbone's Keras model as built, and a compiled batch function (images uint8 -> vectors
    float32, numpy) over an inference copy of it with batch norms folded (``simlab.vectors.fold``).

    Compiled the way the Keras backend in use compiles: ``tf.function`` on TensorFlow (the default),
    ``jax.jit`` over the model's stateless call on JAX; on torch, eager calls without gradients.
    """
    import keras

    bb = get_backbone(backbone)
    log.info("Loading %s (%s weights)", backbone, weights)
    if has_gpu():
        # Mixed precision for this model only: the global policy is put back, so Keras models built
        # later in the process (the neural head, fine-tuning) keep their own precision.
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            model = bb.build(weights)
        finally:
            keras.mixed_precision.set_global_policy(previous)
    else:
        model = bb.build(weights)
    # the forward pass runs on an inference copy with batch norms folded into the convolutions
    # (same vectors up to float rounding, 1.2-1.9x faster; benchmarks/README.md); ``model`` stays as built
    return model, _compiled_embed(fold_batchnorm(model), bb.preprocess, keras.config.backend())


def _compiled_embed(model, preprocess, backend: str):
    from keras import ops

    def forward(images):
        return ops.cast(model(preprocess(ops.cast(images, "float32")), training=False), "float32")

    if backend == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(forward, reduce_retracing=True, autograph=False)  # no tensor-dependent Python flow
        return lambda images: compiled(images).numpy()
    if backend == "jax":
        import jax

        @jax.jit
        def stateless(trainable, non_trainable, images):
            x = preprocess(ops.cast(images, "float32"))
            out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return ops.cast(out, "float32")

        # the variables' current arrays at each call: Keras' own predict may donate and replace them
        return lambda images: np.asarray(stateless([v.value for v in model.trainable_variables],
                                                   [v.value for v in model.non_trainable_variables], images))
    if backend == "torch":
        import torch

        def eager(images):
            with torch.no_grad():
                return ops.convert_to_numpy(forward(images))

        return eager
    raise RuntimeError(f"Keras backend {backend!r} is not supported for vectorising (tensorflow, jax or torch).")


def default_batch_size() -> int:
    """Images per forward pass: larger on a GPU, where it keeps the device busy."""
    return 128 if has_gpu() else 32


def report_progress(progress: Progress | None, done: int, total: int, backbone: str, rate: float,
                    eta: float) -> None:
    """One vectorisation progress report: the numbers as fields, and a line for people."""
    if progress is None:
        return
    message = f"{backbone}: {done}/{total} images, {rate:.1f} img/s, ETA {eta:.0f} s"
    progress(done, total, message, stage="vectorize", backbone=backbone, rate=rate, eta=eta)


OnBatch = Callable[[int, np.ndarray, list[str]], None]


@dataclass
class Job:
    """One backbone's share of :func:`compute_many`: the rows of ``paths`` it needs (increasing;
    None: all), and its own progress report and ``on_batch`` (as :func:`compute_vectors` has them)."""

    backbone: str
    weights: str
    rows: list[int] | None = None
    progress: Progress | None = None
    on_batch: OnBatch | None = None


@dataclass
class DecodeStats:
    """What decoding cost: ``decodes`` files decoded for ``images`` images (one each, however many
    backbones), ``fallbacks`` of them handed by a GPU decoder to Pillow."""

    decoder: str
    images: int = 0
    decodes: int = 0
    fallbacks: int = 0
    backbones: list[str] = field(default_factory=list)

    @property
    def decodes_per_image(self) -> float:
        return self.decodes / self.images if self.images else 0.0


def compute_vectors(paths: list[str], backbone: str, weights: str, fit: str = "crop",
                    batch_size: int | None = None, progress: Progress | None = None,
                    should_stop: ShouldStop | None = None, on_batch: OnBatch | None = None,
                    decoder: Decoder | None = None) -> tuple[np.ndarray, list[str]]:
    """Vectors of the given images (no cache). Returns (vectors, errors): errors[i] is '' when fine.

    ``progress(done, total, message, stage="vectorize", backbone=..., rate=..., eta=...)`` after each
    batch; a ``should_stop()`` that answers True raises :class:`simlab.progress.Cancelled`.
    ``on_batch(start, vectors, errors)``, before the progress report: each finished batch, rows
    ``start...`` of the result (``vectorize`` keeps them on disk as they come).
    """
    (result,), _ = compute_many(paths, [Job(backbone, weights, None, progress, on_batch)], fit, batch_size,
                                should_stop, decoder)
    return result


def compute_many(paths: list[str], jobs: list[Job], fit: str = "crop", batch_size: int | None = None,
                 should_stop: ShouldStop | None = None, decoder: Decoder | None = None,
                 ) -> tuple[list[tuple[np.ndarray, list[str]]], DecodeStats]:
    """Several backbones' vectors from one decode of each file: ``(vectors, errors)`` per job, row for
    row with its ``rows``, and the decoding's :class:`DecodeStats`.

    Each image is decoded once, at the largest input size of the backbones that need it, and resized
    to each one's size (``decoder``, default :func:`simlab.vectors.decoders.choose_decoder`). Each
    backbone's forward passes see the batches it would see alone: its rows in order, ``batch_size``
    at a time, the last one padded with black. So its vectors are those of :func:`compute_vectors` on
    its rows alone: bit for bit where the decode is the one it would make alone (always with one
    backbone), within float tolerance where a Pillow draft scale differs (benchmarks/README.md).
    """
    decoder = decoder or choose_decoder()
    batch_size = batch_size or default_batch_size()
    feeds = [_Feed(job, len(paths), batch_size) for job in jobs]
    wanted: dict[int, set[int]] = {}
    for feed in feeds:
        for row in feed.rows:
            wanted.setdefault(row, set()).add(feed.size)
    union = sorted(wanted)
    sizes = [tuple(sorted(wanted[row])) for row in union]
    stats = DecodeStats(decoder.name, images=len(union), backbones=[job.backbone for job in jobs])
    needs = [set(feed.rows) for feed in feeds]
    done = 0
    for batch in decoder.batches([paths[row] for row in union], sizes, fit, batch_size):
        stats.decodes += batch.decodes
        stats.fallbacks += batch.fallbacks
        rows = union[done:done + batch.n]
        for feed, need in zip(feeds, needs):
            local = [j for j, row in enumerate(rows) if row in need]
            if local:
                feed.add(batch.images[feed.size], local, [batch.errors[j] for j in local])
        done += batch.n
        check_stop(should_stop, "Vectorisation stopped on request.")
    for feed in feeds:
        feed.finish()
    return [(feed.out, feed.errors) for feed in feeds], stats


class _Feed:
    """One backbone fed from the shared batches: it collects the rows it needs and runs its forward
    pass on ``batch_size`` of them at a time, in order (a batch it needs whole goes through as is)."""

    def __init__(self, job: Job, n_paths: int, batch_size: int):
        self.job, self.batch_size = job, batch_size
        self.rows = list(range(n_paths)) if job.rows is None else list(job.rows)
        bb = get_backbone(job.backbone)
        self.size = bb.input_size
        _, self.embed = load_model(job.backbone, job.weights)
        self.out = np.zeros((len(self.rows), bb.dim), np.float32)
        self.errors: list[str] = []
        self.held: list[tuple[object, list[str]]] = []  # (images, errors) not yet through the model
        self.count = 0  # rows held
        self.start = time.perf_counter()

    def add(self, images, local: list[int], errors: list[str]) -> None:
        if not self.held and len(local) == self.batch_size:  # the whole batch: no copy
            self._forward(images, errors)
            return
        self.held.append((_take(images, local), errors))
        self.count += len(local)
        while self.count >= self.batch_size:
            self._forward(*self._pop(self.batch_size))

    def finish(self) -> None:
        if self.count:
            self._forward(*self._pop(self.count))

    def _pop(self, k: int):
        """The first ``k`` rows held, padded with black up to a batch; the rest stay held."""
        images = _concat([x for x, _ in self.held])
        errors = [e for _, errs in self.held for e in errs]
        self.held = [(_slice(images, k, None), errors[k:])] if self.count > k else []
        self.count -= k
        head = _slice(images, 0, k)
        if k < self.batch_size:
            head = _concat([head, _zeros_like(head, self.batch_size - k)])
        return head, errors[:k]

    def _forward(self, images, errors: list[str]) -> None:
        m, at = len(errors), len(self.errors)
        self.out[at:at + m] = self.embed(images)[:m]
        self.errors.extend(errors)
        if self.job.on_batch is not None:
            self.job.on_batch(at, self.out[at:at + m], errors)
        done, total = at + m, len(self.rows)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        report_progress(self.job.progress, done, total, self.job.backbone, rate, (total - done) / rate)


# Rows of a batch, whether numpy (Pillow) or a Keras backend tensor on the device (nvImageCodec).
def _take(images, rows: list[int]):
    if isinstance(images, np.ndarray):
        return images[rows]
    from keras import ops

    return ops.take(images, ops.convert_to_tensor(np.asarray(rows, np.int32)), axis=0)


def _concat(parts: list):
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    from keras import ops

    return ops.concatenate([ops.convert_to_tensor(p) for p in parts], axis=0)


def _slice(images, start: int, stop: int | None):
    return images[start:stop]


def _zeros_like(images, k: int):
    if isinstance(images, np.ndarray):
        return np.zeros((k, *images.shape[1:]), images.dtype)
    from keras import ops

    return ops.zeros((k, *tuple(images.shape)[1:]), "uint8")
