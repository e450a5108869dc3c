"""Beyond one machine: connecting to a Ray cluster, and training XGBoost with Ray Train.

Ray itself is imported inside the functions (it is heavy), so plain simlab never loads it; it is
used only when asked for (``--ray ADDRESS`` or ``SIMLAB_RAY_ADDRESS``). Vectorising on the cluster
is :func:`simlab.vectors.ray.ray_vectorize`, which connects through :func:`connect`.

>>> model = ray_fit_xgboost(X_train, y_train, {"random_state": 0}, address="local")
>>> model.predict_proba(X_test)[:, 1]

``address`` is ``"local"`` (start a Ray instance on this machine), ``"auto"`` (join the cluster
this machine belongs to), ``"HOST:6379"`` (a head node) or ``"ray://HOST:10001"`` (Ray Client).
See docs/scaling.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from simlab.paths import REPO_ROOT, cache_dir

ADDRESS_ENV = "SIMLAB_RAY_ADDRESS"
STORAGE_ENV = "SIMLAB_RAY_STORAGE"  # shared storage for Ray Train results on a multi-node cluster
XGB_DEFAULTS = {"n_estimators": 100, "tree_method": "hist", "eval_metric": "logloss"}  # as the local one

log = logging.getLogger(__name__)


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


def is_local(path: str) -> bool:
    """Whether a folder or URL is on this machine's file system (a plain path or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


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
    if is_local(storage):
        shutil.rmtree(Path(storage.removeprefix("file://")) / trainer_run_name(result), ignore_errors=True)
    return RayXGBClassifier(booster, {**native, "num_boost_round": rounds, "num_workers": workers})


def trainer_run_name(result) -> str:
    """The run folder name of a Ray Train result (its checkpoint is no longer needed once loaded)."""
    try:
        return Path(result.path).name
    except (AttributeError, TypeError) as exc:  # no run folder to remove: the checkpoint stays, nothing breaks
        log.warning("Ray Train result without a run folder (%s): its checkpoint is left in place", exc)
        return ""


def _arrow_blocks(X: np.ndarray, y: np.ndarray, parts: int) -> list:
    """The training pairs as Arrow tables (a tensor column ``x``, a label column ``y``), a few rows each."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    bounds = np.linspace(0, len(X), min(parts, max(len(X), 1)) + 1).astype(int)
    return [pa.table({"x": ArrowTensorArray.from_numpy(X[a:b]), "y": pa.array(y[a:b])})
            for a, b in zip(bounds[:-1], bounds[1:])]
