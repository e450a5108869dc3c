"""Batched vectorisation (decoding in threads ahead of the forward pass) and the on-disk vector cache.

The cache is keyed by content: one folder per backbone configuration (backbone, weights, image
size, fit, pooling, preprocessing version), holding one ``.npz`` per dataset fingerprint with the
images' content digests. A repeated request is one file read; a dataset that grew reuses the
vectors of the images it already had and computes only the new ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.data import Dataset, Problem
from simlab.paths import atomic_path, cache_dir

PIPELINE_VERSION = "1"  # bump when decoding or resizing changes: it keys the cache
FITS = ("crop", "pad")

Progress = Callable[[int, int, float, float], None]  # done, total, images per second, eta seconds


@dataclass
class VectorSet:
    vectors: np.ndarray  # (N, D) float32, in dataset order (images that failed to decode left out)
    paths: list[str]
    groups: list[str]
    digests: list[str]
    backbone: str
    weights: str
    key: str
    problems: list[Problem] = field(default_factory=list)
    computed: int = 0  # how many vectors this call computed (0 = all from the cache)

    def save_npz(self, out: str | Path) -> Path:
        """Export: ``vectors`` (float32, N x D), ``paths`` (N), ``groups`` (N)."""
        out = Path(out)
        with atomic_path(out, suffix=".npz") as tmp:
            np.savez(tmp, vectors=self.vectors, paths=np.array(self.paths), groups=np.array(self.groups))
        return out


def default_weights(backbone: str) -> str:
    return "imagenet"


def config_key(backbone: str, weights: str, fit: str = "crop") -> str:
    bb = get_backbone(backbone)
    config = {"backbone": bb.name, "weights": weights, "size": bb.input_size, "fit": fit, "pooling": "avg",
              "preprocess": bb.preprocessing_version, "pipeline": PIPELINE_VERSION}
    digest = hashlib.blake2b(json.dumps(config, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"{bb.name}-{weights}-{bb.input_size}-{fit}-{digest}"


def _cache_folder(key: str) -> Path:
    return cache_dir("vectors", key)


def _npz_shape(f: Path, name: str = "vectors") -> tuple[int, ...]:
    """Shape of one array in an ``.npz`` from its header alone (the data is not read)."""
    import zipfile

    with zipfile.ZipFile(f) as zf, zf.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)[0]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)[0]
    with np.load(f) as z:  # a header version this code does not know: read the array
        return z[name].shape


def cached_sets() -> list[dict]:
    """Every cached vector set: backbone configuration, dataset fingerprint, count, dim, size on disk."""
    out = []
    for f in sorted(cache_dir("vectors").glob("*/*.npz")):
        try:
            n, d = _npz_shape(f)
        except Exception:  # unreadable (torn by a crash?): not listed; vectorize recomputes it
            continue
        out.append({"key": f.parent.name, "fingerprint": f.stem, "images": n, "dim": d,
                    "mb": round(f.stat().st_size / 2**20, 2), "path": str(f),
                    "backbone": f.parent.name.split("-")[0], "weights": f.parent.name.split("-")[1]})
    return out


def _read_bank(folder: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Vectors for the wanted digests found in any cached set of this configuration."""
    found: dict[str, np.ndarray] = {}
    for f in folder.glob("*.npz"):
        try:
            with np.load(f) as z:
                digests = z["digests"]
                hit = [i for i, d in enumerate(digests) if d in wanted and d not in found]
                if hit:
                    vecs = z["vectors"]
                    found.update((str(digests[i]), vecs[i]) for i in hit)
        except Exception:  # an unreadable cache file is ignored, never fatal
            continue
        if len(found) == len(wanted):
            break
    return found


@functools.lru_cache(maxsize=4)
def load_model(backbone: str, weights: str):
    """The backbone's Keras model as built, and a compiled batch function (images uint8 -> vectors
    float32, numpy) over an inference copy of it with batch norms folded (``simlab.fold``).

    Compiled the way the Keras backend in use compiles: ``tf.function`` on TensorFlow (the default),
    ``jax.jit`` over the model's stateless call on JAX; on torch, eager calls without gradients.
    """
    import keras

    from simlab.device import has_gpu
    from simlab.fold import fold_batchnorm

    bb = get_backbone(backbone)
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


def decode_workers() -> int:
    """Workers decoding images ahead of the forward pass: one per core, 2 at least, 16 at most.

    On 2 cores, 2 threads beat 1 and 4 (85 against 81 and 84 img/s, EfficientNet-Lite0); a GPU
    machine needs many, as its forward pass is far faster than one decoding worker.
    """
    return max(2, min(16, os.cpu_count() or 2))


def decode_mode() -> str:
    """``threads`` or ``processes``: ``$SIMLAB_DECODE``, else processes from 8 cores up.

    Threads overlap Pillow's decoding (it releases the GIL) but not the Python around it (opening,
    headers, EXIF, copies): on 16 cores they kept about 5 busy (1,100-1,200 img/s on an H200,
    benchmarks/README.md). Processes have no GIL to share but cost a start-up and a copy of each
    image back; on small machines threads are as fast and simpler.
    """
    mode = os.environ.get("SIMLAB_DECODE", "").strip().lower()
    if mode in ("threads", "processes"):
        return mode
    return "processes" if (os.cpu_count() or 1) >= 8 else "threads"


@functools.lru_cache(maxsize=1)
def _process_pool():
    """One pool of decoding processes for the whole process, started on first use. Spawned (never
    a fork of a process that holds a model and its threads), and never running the parent's main
    module (``simlab.spawn``): the workers only need ``simlab.data.images``, imported by name."""
    from simlab.spawn import process_pool

    return process_pool(decode_workers())


def _get(result, timeout: float = 300.0):
    """A decoding process's answer. A pool loses the task of a worker that dies (a decoder crash
    on some file), so wait a bounded time and say so rather than hang."""
    import multiprocessing

    try:
        return result.get(timeout)
    except multiprocessing.TimeoutError:
        raise RuntimeError(f"A decoding process gave no answer in {timeout:.0f} s (it may have crashed on an "
                           "image); SIMLAB_DECODE=threads decodes in this process instead.") from None


def _image_batches(paths: list[str], size: int, fit: str, batch_size: int, ahead: int = 2):
    """Yield ``(images, n, errors)`` per batch, in order: ``images`` is uint8 ``(batch_size, size, size, 3)``
    (the last batch padded with black, so the model sees one shape), ``n`` the real images in it.

    Decoding and resizing run in a pool of threads or processes (``decode_mode()``), ``ahead``
    batches ahead of the consumer, so they overlap the forward pass. A plain pool rather than
    tf.data with a ``numpy_function``: same vectors, steadier and faster on a small CPU
    (EfficientNet-Lite0, 2 cores: 74 against 61 img/s, forward pass alone 84; benchmarks/README.md).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from simlab.data.images import load_many

    if decode_mode() == "processes":
        # a few images per task: fewer round trips, every worker still busy with 2 batches queued
        processes, threads, piece = _process_pool(), None, max(1, batch_size // decode_workers())
        submit = lambda *args: processes.apply_async(load_many, args)  # noqa: E731
    else:
        threads, piece = ThreadPoolExecutor(decode_workers(), thread_name_prefix="simlab-decode"), 1
        submit = lambda *args: threads.submit(load_many, *args)  # noqa: E731
    chunks = iter([paths[i:i + batch_size] for i in range(0, len(paths), batch_size)])
    pending: deque = deque()

    def submit_next():
        chunk = next(chunks, None)
        if chunk is not None:
            pending.append([submit(chunk[j:j + piece], size, fit) for j in range(0, len(chunk), piece)])

    try:
        for _ in range(ahead):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            images = np.zeros((batch_size, size, size, 3), np.uint8)
            errors = []
            for fut in futures:
                for img, err in (fut.result() if threads else _get(fut)):
                    if img is not None:
                        images[len(errors)] = img
                    errors.append(err)
            yield images, len(errors), errors
    finally:  # also when the consumer stops early: drop what is queued, let running decodes end
        if threads:
            threads.shutdown(wait=True, cancel_futures=True)


def default_batch_size() -> int:
    """Images per forward pass: larger on a GPU, where it keeps the device busy."""
    from simlab.device import has_gpu

    return 128 if has_gpu() else 32


def compute_vectors(paths: list[str], backbone: str, weights: str, fit: str = "crop",
                    batch_size: int | None = None, progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, list[str]]:
    """Vectors of the given images (no cache). Returns (vectors, errors): errors[i] is '' when fine."""
    bb = get_backbone(backbone)
    _, embed = load_model(backbone, weights)
    batch_size = batch_size or default_batch_size()
    out = np.zeros((len(paths), bb.dim), np.float32)
    errors: list[str] = []
    start, done = time.perf_counter(), 0
    for images, n, errs in _image_batches(paths, bb.input_size, fit, batch_size):
        out[done:done + n] = embed(images)[:n]
        errors.extend(errs)
        done += n
        if progress:
            rate = done / max(time.perf_counter() - start, 1e-9)
            progress(done, len(paths), rate, (len(paths) - done) / rate)
        if should_stop and should_stop():
            raise InterruptedError("Vectorisation stopped on request.")
    return out, errors


def vectorize(dataset: Dataset, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
              fit: str = "crop", batch_size: int | None = None, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, ray: str | None = None) -> VectorSet:
    """One vector per image of the dataset, from the cache where possible.

    ``ray``: a Ray address (``local``, ``auto``, ``HOST:6379``...; default ``$SIMLAB_RAY_ADDRESS``)
    to compute the missing vectors on a Ray cluster; they land in the same cache under the same key.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    weights = weights or default_weights(backbone)
    key = config_key(backbone, weights, fit)
    folder = _cache_folder(key)
    target = folder / f"{dataset.fingerprint}.npz"
    if target.exists():
        try:
            return _load_hit(target, dataset, backbone, weights, key)
        except Exception:
            pass  # unreadable: recompute below and overwrite
    known = _read_bank(folder, set(dataset.digests))
    todo = [i for i, d in enumerate(dataset.digests) if d not in known]
    bad: dict[str, str] = {}
    if todo:
        from simlab.distributed import ray_address  # imports no Ray

        compute = compute_vectors
        if address := ray_address(ray):
            from simlab.distributed import ray_vectorize

            compute = functools.partial(ray_vectorize, address=address)
        vecs, errors = compute([dataset.paths[i] for i in todo], backbone, weights, fit, batch_size=batch_size,
                               progress=progress, should_stop=should_stop)
        for i, v, err in zip(todo, vecs, errors):
            if err:
                bad[dataset.digests[i]] = err
            else:
                known[dataset.digests[i]] = v
    elif progress:
        progress(len(dataset.paths), len(dataset.paths), 0.0, 0.0)
    result = _assemble(dataset, backbone, weights, key, known, bad, computed=len(todo))
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, vectors=result.vectors, digests=np.array(result.digests), bad=json.dumps(bad))
    return result


def _load_hit(target: Path, dataset: Dataset, backbone: str, weights: str, key: str) -> VectorSet:
    """The cached set for this dataset's fingerprint. The file holds the vectors in dataset order
    (failed images left out), so the usual answer is the array as stored, with no per-image work."""
    with np.load(target) as z:
        vectors, digests, bad = z["vectors"], z["digests"].tolist(), json.loads(str(z["bad"]))
    keep = [i for i, d in enumerate(dataset.digests) if d not in bad]
    if len(keep) == len(digests) and all(dataset.digests[i] == d for i, d in zip(keep, digests)):
        if vectors.dtype != np.float32 or vectors.ndim != 2:
            raise ValueError(f"{target}: unexpected vectors {vectors.dtype} {vectors.shape}")
        problems = [Problem(p, f"could not be vectorised: {bad[d]}")
                    for p, d in zip(dataset.paths, dataset.digests) if d in bad]
        return VectorSet(vectors, [dataset.paths[i] for i in keep], [dataset.groups[i] for i in keep],
                         digests, backbone, weights, key, problems, 0)
    return _assemble(dataset, backbone, weights, key, dict(zip(digests, vectors)), bad, computed=0)


def _assemble(dataset: Dataset, backbone: str, weights: str, key: str, known: dict, bad: dict,
              computed: int) -> VectorSet:
    keep = [i for i, d in enumerate(dataset.digests) if d in known]
    dim = get_backbone(backbone).dim
    vectors = np.stack([known[dataset.digests[i]] for i in keep]).astype(np.float32, copy=False) if keep \
        else np.zeros((0, dim), np.float32)
    problems = [Problem(p, f"could not be vectorised: {bad[d]}")
                for p, d in zip(dataset.paths, dataset.digests) if d in bad]
    return VectorSet(vectors, [dataset.paths[i] for i in keep], [dataset.groups[i] for i in keep],
                     [dataset.digests[i] for i in keep], backbone, weights, key, problems, computed)
