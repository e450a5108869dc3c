"""Vectorising on a Ray cluster with Ray Data: the same contract as ``compute_vectors``, the
same vectors, the work spread over the cluster's CPUs and GPUs.

>>> vectors, errors = ray_vectorize(paths, "efficientnet_lite0", "imagenet", address="local")

Ray is imported inside the functions: ``simlab.vectors`` imports this module only when a Ray
address is given (``--ray ADDRESS`` or ``$SIMLAB_RAY_ADDRESS``). See docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import threading
import time
import uuid

import numpy as np

from simlab.backbones import get_backbone, scheme_modules
from simlab.data.images import load_many
from simlab.device import has_gpu
from simlab.distributed import cluster_cpus, cluster_gpus, connect, is_local
from simlab.paths import cache_dir
from simlab.progress import Cancelled, Progress, ShouldStop
from simlab.vectors.cache import FITS
from simlab.vectors.embed import load_model, report_progress

log = logging.getLogger(__name__)

SHARDS_ENV = "SIMLAB_RAY_SHARDS"  # where vector shards go (a shared folder or fsspec URL) on a multi-node cluster
CRASH_ENV = "SIMLAB_RAY_CRASH_ONCE"  # test hook: "decode:MARKER" or "embed:MARKER" (see _maybe_crash)
TASK_RETRIES = 3  # a decode task whose worker dies is run again this many times
ACTOR_RESTARTS = 3  # an embedding actor that dies is restarted this many times (its batch retried)


def _maybe_crash(stage: str, crash_once: str | None) -> None:
    """Test hook: kill this worker process (a real ``os._exit``) the first time ``stage`` runs.

    ``crash_once`` is ``"STAGE:MARKER_PATH"`` (several joined by ``,``), STAGE ``decode`` (a Ray Data
    task: retried) or ``embed`` (an actor: restarted, its batch retried). The marker file records
    that the crash happened, so the retry goes through; it must be on a path every worker sees.
    """
    for spec in filter(None, (crash_once or "").split(",")):
        want, _, marker = spec.partition(":")
        if want != stage or not marker:
            continue
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only the first attempt wins
        except FileExistsError:
            continue
        os.write(fd, f"{stage} crashed in pid {os.getpid()}\n".encode())
        os.close(fd)
        os._exit(17)


def decode_batch(batch: dict, size: int, fit: str, crash_once: str | None = None) -> dict:
    """Ray Data task: paths -> uint8 images (``size`` x ``size``), with one error string per image."""
    _maybe_crash("decode", crash_once)
    images = np.zeros((len(batch["path"]), size, size, 3), np.uint8)
    errors = []
    for i, (image, error) in enumerate(load_many([str(p) for p in batch["path"]], size, fit)):
        if image is not None:  # a failed image stays black, reported by its error (as compute_vectors does)
            images[i] = image
        errors.append(error)
    return {"index": np.asarray(batch["index"], np.int64), "image": images, "error": np.asarray(errors, object)}


class Embedder:
    """Ray Data actor: loads the backbone once, then turns image batches into vectors."""

    def __init__(self, backbone: str, weights: str, batch_size: int, tracker=None, crash_once: str | None = None,
                 schemes: tuple[str, ...] = ()):
        for module in schemes:  # the driver's backbone schemes (siamese-<run id>...), registered on import
            importlib.import_module(module)
        self.batch_size = batch_size
        self.tracker = tracker
        self.crash_once = crash_once
        _, self.embed = load_model(backbone, weights)

    def __call__(self, batch: dict) -> dict:
        _maybe_crash("embed", self.crash_once)
        images = np.asarray(batch["image"])
        n = len(images)
        if n < self.batch_size:  # one traced shape for the whole run, as compute_vectors does
            images = np.concatenate([images, np.zeros((self.batch_size - n, *images.shape[1:]), np.uint8)])
        vectors = self.embed(images)[:n].astype(np.float32)
        if self.tracker is not None:
            import ray

            if ray.get(self.tracker.add.remote(n)):
                raise Cancelled("Vectorisation stopped on request.")
        return {"index": batch["index"], "vector": vectors, "error": batch["error"]}


def _tracker_class():
    import ray

    @ray.remote(num_cpus=0)
    class Tracker:
        """Counts embedded images for the driver's progress bar and carries its stop request."""

        def __init__(self):
            self.done, self.stop = 0, False

        def add(self, n: int) -> bool:
            self.done += n
            return self.stop

        def state(self) -> int:
            return self.done

        def request_stop(self) -> None:
            self.stop = True

    return Tracker


def shard_name(paths: list[str], backbone: str, weights: str, fit: str) -> str:
    """A fresh folder name for one vectorisation's shards: the configuration, the file list's digest, a nonce."""
    digest = hashlib.blake2b("\n".join(paths).encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
    return f"{backbone}-{weights}-{fit}-{digest}-{uuid.uuid4().hex[:8]}"


def default_shard_dir(name: str) -> str:
    """``$SIMLAB_RAY_SHARDS/NAME`` (shared storage for a multi-node cluster), else ``cache/shards/NAME``
    (enough when the whole cluster is this machine)."""
    base = os.environ.get(SHARDS_ENV, "").strip()
    return f"{base.rstrip('/')}/{name}" if base else str(cache_dir("shards") / name)


def _remove_shards(shard_dir: str) -> None:
    """Best effort: the shards are only a hand-over; the vector cache keeps the result."""
    try:
        if is_local(shard_dir):
            shutil.rmtree(shard_dir.removeprefix("file://"), ignore_errors=True)
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(shard_dir)
            fs.rm(path, recursive=True)
    except Exception as exc:  # left behind: harmless, the vectors are already gathered
        log.warning("Could not remove the vector shards in %s: %s", shard_dir, exc, exc_info=True)


def _filesystem_path(uri: str):
    """(path, filesystem) for pyarrow: a local folder, a URL pyarrow knows (s3, gs, hdfs), or any fsspec URL."""
    import pyarrow
    import pyarrow.fs

    if is_local(uri):
        return uri.removeprefix("file://"), pyarrow.fs.LocalFileSystem()
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return path, fs
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def ray_vectorize(paths: list[str], backbone: str, weights: str, fit: str = "crop", address: str = "local",
                  shard_dir: str | None = None, batch_size: int | None = None, progress: Progress | None = None,
                  should_stop: ShouldStop | None = None,
                  crash_once: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Vectors of the given images computed on a Ray cluster (same contract as ``compute_vectors``,
    progress reports and :class:`simlab.progress.Cancelled` included).

    Returns ``(vectors, errors)``: ``vectors`` float32 (N, D) in the order of ``paths``, ``errors[i]``
    '' when image i was fine. The pipeline is Ray Data: the path list in blocks, decoding and
    resizing in parallel tasks, the backbone in a pool of actors (one GPU each when the cluster has
    GPUs), vectors written as Parquet shards to ``shard_dir`` (a folder or fsspec URL every node can
    reach; default :func:`default_shard_dir`), then read back and ordered. Shards in a folder named
    here are removed once gathered; an explicit ``shard_dir`` is kept.

    ``crash_once`` (or ``$SIMLAB_RAY_CRASH_ONCE``) is a test hook that kills one worker mid-run.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    bb = get_backbone(backbone)
    if not paths:
        return np.zeros((0, bb.dim), np.float32), []
    ray = connect(address)
    crash_once = crash_once or os.environ.get(CRASH_ENV) or None
    gpus = cluster_gpus()
    batch_size = batch_size or (128 if gpus or has_gpu() else 32)
    chosen_here = not shard_dir
    shard_dir = shard_dir or default_shard_dir(shard_name(paths, backbone, weights, fit))
    n = len(paths)
    tracker = _tracker_class().remote()
    pipeline = _pipeline(ray, paths, bb, weights, fit, batch_size, gpus, tracker, crash_once)

    failure: list[BaseException] = []

    def write():
        try:
            pipeline.write_parquet(shard_dir)
        except BaseException as exc:  # noqa: BLE001  (handed to the calling thread, which raises it)
            failure.append(exc)

    start = time.perf_counter()
    writer = threading.Thread(target=write, name="simlab-ray-vectorize", daemon=True)
    writer.start()
    stopping = False
    while writer.is_alive():
        writer.join(0.5)
        if progress:
            done = min(ray.get(tracker.state.remote()), n)
            rate = done / max(time.perf_counter() - start, 1e-9)
            report_progress(progress, done, n, backbone, rate, (n - done) / rate if rate else float("inf"))
        if should_stop and not stopping and should_stop():
            stopping = True
            tracker.request_stop.remote()
    ray.kill(tracker)
    if stopping:
        raise Cancelled("Vectorisation stopped on request.")
    if failure:
        raise RuntimeError(f"Ray vectorisation failed: {failure[0]}") from failure[0]
    vectors, errors = gather_shards(shard_dir, n, bb.dim)
    report_progress(progress, n, n, backbone, n / max(time.perf_counter() - start, 1e-9), 0.0)
    if chosen_here:
        _remove_shards(shard_dir)
    return vectors, errors


def _pipeline(ray, paths, bb, weights, fit, batch_size, gpus, tracker, crash_once):
    """The Ray Data plan (lazy): items -> decode tasks -> embedding actors."""
    import warnings

    n = len(paths)
    # enough blocks to keep every CPU busy, small enough (~2k images) for retries to be cheap
    blocks = max(1, min(-(-n // batch_size), max(4 * cluster_cpus(), n // 2048)))
    items = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    if gpus:
        actors = {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=gpus)}
    else:  # the decode tasks need CPUs too: at most half the cluster's for the model
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cluster_cpus() // 2))
        actors = {"num_cpus": 1, "compute": pool}
    with warnings.catch_warnings():
        # Bounded retries are still passed as remote args in Ray 2.60 (deprecated for 2.64, which
        # will name them); without them Ray retries forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ds.map_batches(decode_batch, batch_size=batch_size, num_cpus=1, max_retries=TASK_RETRIES,
                            fn_kwargs={"size": bb.input_size, "fit": fit, "crash_once": crash_once})
        return ds.map_batches(Embedder, batch_size=batch_size, max_restarts=ACTOR_RESTARTS,
                              max_task_retries=ACTOR_RESTARTS,
                              fn_constructor_kwargs={"backbone": bb.name, "weights": weights,
                                                     "batch_size": batch_size, "tracker": tracker,
                                                     "crash_once": crash_once,
                                                     "schemes": tuple(scheme_modules())}, **actors)


def gather_shards(shard_dir: str, n: int, dim: int) -> tuple[np.ndarray, list[str]]:
    """Read the Parquet shards back into one (n, dim) array ordered by index, and the errors.

    A retried batch may have been written twice: the copies are identical, the last one wins.
    Raises if an index is missing (a shard was lost).
    """
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's tensor type, the type of the vector column)

    vectors = np.zeros((n, dim), np.float32)
    errors = [""] * n
    seen = np.zeros(n, bool)
    path, fs = _filesystem_path(shard_dir)
    for batch in pads.dataset(path, filesystem=fs, format="parquet").to_batches(columns=["index", "vector", "error"]):
        idx = batch.column("index").to_numpy()
        vectors[idx] = np.asarray(batch.column("vector").to_numpy(), np.float32).reshape(len(idx), dim)
        for i, e in zip(idx, batch.column("error").to_pylist()):
            errors[i] = e or ""
        seen[idx] = True
    if not seen.all():
        missing = int((~seen).sum())
        raise RuntimeError(f"{missing} of {n} vectors are missing from the shards in {shard_dir}; "
                           "run the vectorisation again.")
    return vectors, errors
