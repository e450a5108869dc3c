"""The job kinds simlab ships: vectorise, a grid of runs, the demo experiment, a search.

Each is ``fn(params, store, progress, should_stop[, job_id]) -> dict`` (see :mod:`simlab.jobs.registry`);
the worker imports this module only when it runs one of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields as dataclass_fields

from simlab.backbones import DEFAULT_BACKBONE
from simlab.data import load_dataset
from simlab.data.demo import demo_dir
from simlab.experiment import GridConfig, run_grid
from simlab.progress import Progress, ShouldStop
from simlab.search import search_dataset
from simlab.store import Store
from simlab.vectors import vectorize

log = logging.getLogger(__name__)

SCALE = 1000  # a grid's bar: vectorising fills the first half, training the second
DEMO_DEFAULTS = {"dataset": "demo", "merges": ["dot", "l1", "l2"], "classifiers": ["cosine", "logreg", "xgboost"]}
SEARCH_PARAMS = ("dataset", "query", "backbone", "weights", "k", "rerank", "index", "shortlist")


# --------------------------------------------------------------------------- vectorise


def _one_of_many(progress: Progress, backbone: str, i: int, k: int, n: int) -> Progress:
    """The vectorisation of backbone ``i`` of ``k`` (``n`` images each), as a slice of one bar."""
    def report(done: int, total: int, message: str = "", **fields) -> None:
        rate, eta = fields.get("rate") or 0.0, fields.get("eta") or 0.0
        progress(i * n + done, k * n, f"{backbone}: {done}/{total} images, {rate:.1f} img/s, ETA {duration(eta)}",
                 **(fields | {"stage": "vectorize", "backbone": backbone}))

    return report


def vectorize_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop) -> dict:
    """Vectors of one dataset for each chosen backbone (params: dataset, backbones, weights)."""
    backbones = params.get("backbones") or [params.get("backbone")]
    if not backbones or not all(backbones):
        raise ValueError("Pick at least one backbone to vectorise with.")
    progress(0, 0, "Loading the dataset", stage="load")
    dataset = load_dataset(params.get("dataset") or "demo")
    n, k = dataset.n_images, len(backbones)
    sets = []
    for i, name in enumerate(backbones):
        progress(i * n, k * n, f"{name}: loading the model", stage="load", backbone=name)
        t0 = time.perf_counter()
        vs = vectorize(dataset, name, params.get("weights") or None, progress=_one_of_many(progress, name, i, k, n),
                       should_stop=should_stop)
        sets.append({"backbone": name, "weights": vs.weights, "key": vs.key, "images": len(vs.paths),
                     "computed": vs.computed, "problems": len(vs.problems),
                     "seconds": round(time.perf_counter() - t0, 2)})
    progress(k * n, k * n, f"Vectors ready for {k} backbone(s)", stage="done")
    return {"dataset": dataset.spec, "fingerprint": dataset.fingerprint, "sets": sets}


# --------------------------------------------------------------------------- grid and demo


def grid_config(params: dict) -> GridConfig:
    """A validated GridConfig from a job's params; unknown settings are refused by name."""
    known = {f.name for f in dataclass_fields(GridConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"Unknown grid setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    return GridConfig(**params).validate()


def _grid_bar(progress: Progress, backbones: list[str]) -> Progress:
    """run_grid's progress as one bar: each backbone's vectors an equal slice of the first half, training the second."""
    def report(done: int, total: int, message: str = "", **fields) -> None:
        if fields.get("stage") == "vectorize":
            b = backbones.index(fields["backbone"]) if fields.get("backbone") in backbones else 0
            frac = (b + (done / total if total else 0)) / len(backbones)
            progress(int(SCALE * 0.5 * frac), SCALE, f"Vectorising · {message}", **fields)
        else:
            frac = done / total if total else 1
            step = f"{done}/{total} runs done · " if done < total else ""
            progress(int(SCALE * (0.5 + 0.5 * frac)), SCALE, f"Training · {step}{message}", **fields)

    return report


def grid_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop,
             job_id: str | None = None) -> dict:
    """A grid of runs (params: a GridConfig as a dict). One progress bar: vectorising, then training."""
    config = grid_config(params)
    progress(0, SCALE, "Loading the models and the dataset", stage="load")
    runs = list(run_grid(config, store, progress=_grid_bar(progress, config.backbones), should_stop=should_stop,
                         job_id=job_id))
    progress(SCALE, SCALE, f"{len(runs)} run(s) done", stage="done")
    best = max(runs, key=lambda r: (r.get("accuracy") or 0, r.get("auc") or 0), default=None)
    return {"dataset": config.dataset, "runs": [r["run_id"] for r in runs], "n_runs": len(config.cells()),
            "best": best}


def demo_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop,
             job_id: str | None = None) -> dict:
    """The demo experiment: the bundled backbone on the demo images, a small default grid."""
    config = {**DEMO_DEFAULTS, "backbones": [DEFAULT_BACKBONE], **(params or {})}
    if config["dataset"] == "demo" and not demo_dir().exists():
        progress(0, SCALE, "Generating the demo images (first time only, up to a minute)", stage="load")
    return grid_job(config, store, progress, should_stop, job_id=job_id)


# --------------------------------------------------------------------------- search


def _search_bar(progress: Progress) -> Progress:
    """search_dataset's progress on one bar of steps: a vectorisation of the dataset stays on its step."""
    step = [0, 1]

    def report(done: int, total: int, message: str = "", **fields) -> None:
        if fields.get("stage") == "vectorize":
            progress(step[0], step[1], message, **fields)
        else:
            step[:] = [done, total]
            progress(done, total, message, **fields)

    return report


def search_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop) -> dict:
    """The images most like a query image, as ``python -m simlab search --json`` prints them.

    params: dataset, query (a path), backbone, weights, k (default 10), rerank (a run id), index
    (default "auto"), shortlist. The job's progress names each step in its ``stage`` field
    (:data:`simlab.search.SEARCH_STAGES`).
    """
    unknown = sorted(set(params) - set(SEARCH_PARAMS))
    if unknown:
        raise ValueError(f"Unknown search setting(s): {', '.join(unknown)}. Known: {', '.join(SEARCH_PARAMS)}.")
    if not params.get("query"):
        raise ValueError("Pick a query image to search with.")
    k = int(params.get("k") or 10)
    if k < 1:
        raise ValueError("k must be at least 1")
    dataset = load_dataset(params.get("dataset") or "demo")
    result = search_dataset(dataset, params["query"], params.get("backbone"), params.get("weights"), k=k,
                            rerank=params.get("rerank"), kind=params.get("index") or "auto",
                            shortlist=params.get("shortlist"), progress=_search_bar(progress),
                            should_stop=should_stop, store=store)
    return result.to_dict()


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
