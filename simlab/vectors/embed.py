"""The backbone's forward pass: model loading, compiled for the Keras backend in use, and
:func:`compute_vectors` (files -> vectors, no cache)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import numpy as np

from simlab.backbones import get_backbone
from simlab.device import has_gpu
from simlab.progress import Progress, ShouldStop, check_stop
from simlab.vectors.decode import _image_batches
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


def compute_vectors(paths: list[str], backbone: str, weights: str, fit: str = "crop",
                    batch_size: int | None = None, progress: Progress | None = None,
                    should_stop: ShouldStop | None = None,
                    on_batch: Callable[[int, np.ndarray, list[str]], None] | None = None,
                    ) -> tuple[np.ndarray, list[str]]:
    """Vectors of the given images (no cache). Returns (vectors, errors): errors[i] is '' when fine.

    ``progress(done, total, message, stage="vectorize", backbone=..., rate=..., eta=...)`` after each
    batch; a ``should_stop()`` that answers True raises :class:`simlab.progress.Cancelled`.
    ``on_batch(start, vectors, errors)``, before the progress report: each finished batch, rows
    ``start...`` of the result (``vectorize`` keeps them on disk as they come).
    """
    bb = get_backbone(backbone)
    _, embed = load_model(backbone, weights)
    batch_size = batch_size or default_batch_size()
    out = np.zeros((len(paths), bb.dim), np.float32)
    errors: list[str] = []
    start, done = time.perf_counter(), 0
    for images, n, errs in _image_batches(paths, bb.input_size, fit, batch_size):
        out[done:done + n] = embed(images)[:n]
        errors.extend(errs)
        if on_batch is not None:
            on_batch(done, out[done:done + n], errs)
        done += n
        rate = done / max(time.perf_counter() - start, 1e-9)
        report_progress(progress, done, len(paths), backbone, rate, (len(paths) - done) / rate)
        check_stop(should_stop, "Vectorisation stopped on request.")
    return out, errors
