"""Beyond one machine: vectorising with Ray Data and training XGBoost with Ray Train.

Nothing here is imported unless asked for (``--ray ADDRESS`` or ``SIMLAB_RAY_ADDRESS``), and Ray
itself is imported inside the functions, so plain simlab never loads it.

>>> vectors, errors = ray_vectorize(paths, "efficientnet_lite0", "imagenet", address="local")
>>> model = ray_fit_xgboost(X_train, y_train, {"random_state": 0}, address="local")
>>> model.predict_proba(X_test)[:, 1]

``address`` is ``"local"`` (start a Ray instance on this machine), ``"auto"`` (join the cluster
this machine belongs to), ``"HOST:6379"`` (a head node) or ``"ray://HOST:10001"`` (Ray Client).
See docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from simlab.paths import REPO_ROOT, cache_dir

ADDRESS_ENV = "SIMLAB_RAY_ADDRESS"
SHARDS_ENV = "SIMLAB_RAY_SHARDS"  # where vector shards go (a shared folder or fsspec URL) on a multi-node cluster
STORAGE_ENV = "SIMLAB_RAY_STORAGE"  # shared storage for Ray Train results on a multi-node cluster
CRASH_ENV = "SIMLAB_RAY_CRASH_ONCE"  # test hook: "decode:MARKER" or "embed:MARKER" (see _maybe_crash)
TASK_RETRIES = 3  # a decode task whose worker dies is run again this many times
ACTOR_RESTARTS = 3  # an embedding actor that dies is restarted this many times (its batch retried)
XGB_DEFAULTS = {"n_estimators": 100, "tree_method": "hist", "eval_metric": "logloss"}  # as the local one

Progress = Callable[[int, int, float, float], None]  # done, total, images per second, eta seconds


# --------------------------------------------------------------------------- connecting


def ray_address(explicit: str | None = None) -> str | None:
    """The Ray address to use: the explicit one, else ``$SIMLAB_RAY_ADDRESS``, else None (no Ray)."""
    return (explicit or os.environ.get(ADDRESS_ENV, "")).strip() or None


def connect(address: str = "local", num_cpus: int | None = None):
    """Join (or start, for ``"local"``) a Ray cluster once per process; returns the ``ray`` module.

    The simlab package travels to the workers through ``runtime_env`` (``py_modules``), so a cluster
    only needs the same requirements.txt installed, not a checkout of simlab.
    """
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = {"py_modules": [str(REPO_ROOT / "simlab")],
                   "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2", **_worker_env(address)}}
    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env=runtime_env,
                 object_store_memory=int(os.environ.get("SIMLAB_RAY_OBJECT_STORE_MB", "1024")) * 2**20)
    else:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
    _quiet_ray_data()
    return ray


def _quiet_ray_data() -> None:
    """simlab draws its own progress bar: no Ray Data progress bars or per-dataset log lines."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _worker_env(address: str) -> dict[str, str]:
    """The workers' cache root (it holds the converted bundled weights): the driver's on a local
    instance; on a remote cluster ``$SIMLAB_WORKER_CACHE`` if set, else each worker's default."""
    if address == "local":
        return {k: os.environ[k] for k in ("SIMLAB_CACHE", "KERAS_HOME") if os.environ.get(k)}
    worker_cache = os.environ.get("SIMLAB_WORKER_CACHE", "").strip()
    return {"SIMLAB_CACHE": worker_cache} if worker_cache else {}


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


# --------------------------------------------------------------------------- vectorising


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
    from simlab.data.images import load_many

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

    def __init__(self, backbone: str, weights: str, batch_size: int, tracker=None, crash_once: str | None = None):
        from simlab.vectors import load_model

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
                raise InterruptedError("Vectorisation stopped on request.")
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
        if _is_local(shard_dir):
            shutil.rmtree(shard_dir.removeprefix("file://"), ignore_errors=True)
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(shard_dir)
            fs.rm(path, recursive=True)
    except Exception:
        pass


def _filesystem_path(uri: str):
    """(path, filesystem) for pyarrow: a local folder, a URL pyarrow knows (s3, gs, hdfs), or any fsspec URL."""
    import pyarrow
    import pyarrow.fs

    if _is_local(uri):
        return uri.removeprefix("file://"), pyarrow.fs.LocalFileSystem()
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return path, fs
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def ray_vectorize(paths: list[str], backbone: str, weights: str, fit: str = "crop", address: str = "local",
                  shard_dir: str | None = None, batch_size: int | None = None, progress: Progress | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  crash_once: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Vectors of the given images computed on a Ray cluster (same contract as ``compute_vectors``).

    Returns ``(vectors, errors)``: ``vectors`` float32 (N, D) in the order of ``paths``, ``errors[i]``
    '' when image i was fine. The pipeline is Ray Data: the path list in blocks, decoding and
    resizing in parallel tasks, the backbone in a pool of actors (one GPU each when the cluster has
    GPUs), vectors written as Parquet shards to ``shard_dir`` (a folder or fsspec URL every node can
    reach; default :func:`default_shard_dir`), then read back and ordered. Shards in a folder named
    here are removed once gathered; an explicit ``shard_dir`` is kept.

    ``crash_once`` (or ``$SIMLAB_RAY_CRASH_ONCE``) is a test hook that kills one worker mid-run.
    """
    from simlab.backbones import get_backbone
    from simlab.device import has_gpu

    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', not {fit!r}")
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
        except BaseException as exc:  # handed to the calling thread below
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
            progress(done, n, rate, (n - done) / rate if rate else float("inf"))
        if should_stop and not stopping and should_stop():
            stopping = True
            tracker.request_stop.remote()
    ray.kill(tracker)
    if stopping:
        raise InterruptedError("Vectorisation stopped on request.")
    if failure:
        raise RuntimeError(f"Ray vectorisation failed: {failure[0]}") from failure[0]
    vectors, errors = gather_shards(shard_dir, n, bb.dim)
    if progress:
        progress(n, n, n / max(time.perf_counter() - start, 1e-9), 0.0)
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
                                                     "crash_once": crash_once}, **actors)


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


# --------------------------------------------------------------------------- XGBoost on Ray Train


class RayXGBClassifier:
    """A booster trained through Ray Train, with scikit-learn's ``predict_proba`` / ``predict``."""

    def __init__(self, booster, params: dict | None = None):
        self.booster_ = booster
        self.params = dict(params or {})
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X) -> np.ndarray:
        import xgboost

        p = self.booster_.predict(xgboost.DMatrix(np.asarray(X, np.float32)))
        return np.column_stack([1 - p, p]).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def __getstate__(self):  # picklable (joblib) through xgboost's own format
        return {"raw": bytes(self.booster_.save_raw("ubj")), "params": self.params}

    def __setstate__(self, state):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(state["raw"]))
        self.__init__(booster, state["params"])


def xgb_train_params(params: dict | None) -> tuple[dict, int]:
    """scikit-learn style XGBoost parameters (as ``XGBClassifier`` takes them) -> (native params, rounds)."""
    merged = {**XGB_DEFAULTS, **(params or {})}
    rounds = int(merged.pop("n_estimators", None) or merged.pop("num_boost_round", 100))
    merged.pop("num_boost_round", None)
    if "random_state" in merged:
        merged["seed"] = merged.pop("random_state") or 0
    if "learning_rate" in merged:
        merged["eta"] = merged.pop("learning_rate")
    for sklearn_only in ("n_jobs", "verbosity", "missing", "enable_categorical", "importance_type",
                         "early_stopping_rounds", "callbacks", "multi_strategy", "feature_types", "feature_weights"):
        merged.pop(sklearn_only, None)
    native = {k: v for k, v in merged.items() if v is not None}
    native.setdefault("objective", "binary:logistic")
    return native, rounds


def _xgb_worker(config: dict) -> None:
    """Ray Train loop on each worker: its shard of the pairs -> DMatrix -> distributed xgboost.train.

    XGBoostTrainer has set up the workers' collective, so ``xgboost.train`` builds one model
    together. Only the final model is reported (a report per round costs a round trip each).
    """
    import ray.train
    import xgboost
    from ray.train.xgboost import RayTrainReportCallback

    class ReportAtEnd(RayTrainReportCallback):
        def _report_metrics(self, report_dict):  # nothing per round; the checkpoint at the end
            pass

    shard = ray.train.get_dataset_shard("train")
    xs, ys = [], []
    for batch in shard.iter_batches(batch_format="numpy", batch_size=8192):
        xs.append(np.asarray(batch["x"], np.float32))
        ys.append(np.asarray(batch["y"], np.float32))
    dim = config["dim"]
    dtrain = xgboost.DMatrix(np.concatenate(xs) if xs else np.zeros((0, dim), np.float32),
                             label=np.concatenate(ys) if ys else np.zeros(0, np.float32))
    xgboost.train(config["params"], dtrain, num_boost_round=config["rounds"], evals=[(dtrain, "train")],
                  verbose_eval=False, callbacks=[ReportAtEnd(frequency=0, checkpoint_at_end=True)])


def ray_fit_xgboost(X_train, y_train, params: dict | None = None, address: str = "local",
                    num_workers: int | None = None, storage_path: str | None = None) -> RayXGBClassifier:
    """Fit XGBoost on the training pairs with Ray Train's ``XGBoostTrainer``; returns a fitted model
    with ``predict_proba``, usable like the local classifier.

    ``params`` are XGBClassifier-style (``n_estimators``, ``random_state``, ``max_depth``...);
    by default those of simlab's local ``xgboost`` classifier. ``num_workers`` defaults to one per
    GPU, else two (or one on a one-CPU cluster). ``storage_path`` (or ``$SIMLAB_RAY_STORAGE``) is
    where Ray Train keeps the checkpoint: it must be shared storage on a multi-node cluster.
    """
    ray = connect(address)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    X = np.ascontiguousarray(X_train, np.float32)
    y = np.asarray(y_train, np.float32)
    if len(X) != len(y):
        raise ValueError(f"X_train has {len(X)} rows but y_train {len(y)}")
    native, rounds = xgb_train_params(params)
    gpus = cluster_gpus()
    if gpus:
        native.setdefault("device", "cuda")
    else:
        native["device"] = "cpu"
    workers = num_workers or gpus or min(2, cluster_cpus())
    train = ray.data.from_arrow(_arrow_blocks(X, y, parts=max(workers, 1) * 2))
    storage = storage_path or os.environ.get(STORAGE_ENV) or str(cache_dir("ray_results"))
    trainer = XGBoostTrainer(
        _xgb_worker,
        train_loop_config={"params": native, "rounds": rounds, "dim": X.shape[1]},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus)),
        run_config=RunConfig(name=f"simlab-xgb-{uuid.uuid4().hex[:8]}", storage_path=storage),
        datasets={"train": train},
    )
    result = trainer.fit()
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    if _is_local(storage):
        shutil.rmtree(Path(storage.removeprefix("file://")) / trainer_run_name(result), ignore_errors=True)
    return RayXGBClassifier(booster, {**native, "num_boost_round": rounds, "num_workers": workers})


def trainer_run_name(result) -> str:
    """The run folder name of a Ray Train result (its checkpoint is no longer needed once loaded)."""
    try:
        return Path(result.path).name
    except Exception:
        return ""


def _arrow_blocks(X: np.ndarray, y: np.ndarray, parts: int) -> list:
    """The training pairs as Arrow tables (a tensor column ``x``, a label column ``y``), a few rows each."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    bounds = np.linspace(0, len(X), min(parts, max(len(X), 1)) + 1).astype(int)
    return [pa.table({"x": ArrowTensorArray.from_numpy(X[a:b]), "y": pa.array(y[a:b])})
            for a, b in zip(bounds[:-1], bounds[1:])]
