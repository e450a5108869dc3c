"""The job kinds simlab ships: vectorise, a grid of runs, the demo experiment, a search.

Each is ``fn(params, store, progress, should_stop[, job_id]) -> dict`` (see :mod:`simlab.jobs.registry`);
the worker imports this module only when it runs one of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from dataclasses import fields as dataclass_fields

import simlab.finetune  # noqa: F401  (registers the siamese-<run id> backbones a job may name)
from simlab import options
from simlab.data import Dataset, load_dataset, parse_spec
from simlab.data.demo import demo_dir, ensure_demo
from simlab.experiment import GridConfig, run_grid
from simlab.jobs.worker import until_stopped
from simlab.progress import Cancelled, Progress, ShouldStop
from simlab.search import search_dataset
from simlab.store import Store
from simlab.vectors import default_weights, vectorize
from simlab.vectors.cache import VectorCache

log = logging.getLogger(__name__)

SCALE = 1000  # a grid's bar: loading fills the first tenth, vectorising up to half, training the second half
LOADED = 0.1  # share of a grid's bar for loading the dataset and the models
SEARCH_PARAMS = ("dataset", "query", "backbone", "weights", "k", "rerank", "index", "shortlist")


# --------------------------------------------------------------------------- loading


class _Loading:
    """The start of a job on its bar: each step in words ("Generating the demo images: 312/783",
    "Loading TensorFlow"), steps running side by side joined by " · ", and a fraction of ``share``."""

    def __init__(self, progress: Progress, total: int, share: float):
        self.progress, self.total, self.share = progress, total, share
        self.steps: dict[str, tuple[str, float]] = {}  # step -> (text, fraction done)
        self.weights = {"data": 0.7, "models": 0.3}
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def say(self, step: str, text: str, frac: float = 0.0) -> None:
        with self.lock:
            self.steps[step] = (text, frac)
            self._emit()

    def done(self, step: str) -> None:
        with self.lock:
            self.steps.pop(step, None)
            self.finished.add(step)
            self._emit()

    def _emit(self) -> None:
        frac = sum(w * (1.0 if k in self.finished else self.steps.get(k, ("", 0.0))[1])
                   for k, w in self.weights.items())
        text = " · ".join(t for t, _ in self.steps.values()) or "Loaded"
        self.progress(int(self.total * self.share * frac), self.total, text, stage="load")


def _load_models(backbones: list[str], weights: str | None, loading: _Loading, before_models=None) -> None:
    """Import TensorFlow and build each backbone's model (simlab.vectors.embed.load_model keeps them for
    the vectorisation that follows); ``before_models()`` is called between the two. A failure here is left
    for the vectorisation to report."""
    from simlab.vectors.embed import load_model

    try:
        loading.say("models", "Loading TensorFlow")
        import keras  # noqa: F401  (the first import of TensorFlow: seconds)

        if before_models is not None:
            loading.say("models", "TensorFlow loaded", 0.5)
            before_models()
        for i, name in enumerate(backbones):
            w = weights or default_weights(name)
            loading.say("models", f"Loading the backbone {name} ({w} weights)", 0.5 + 0.5 * i / len(backbones))
            load_model(name, w)
    except Exception:  # vectorize() loads it again and reports the error in its own words
        log.warning("Loading the models ahead of vectorising failed", exc_info=True)
    finally:
        loading.done("models")


_GENERATE_DEMO = ("from simlab.data.demo import ensure_demo\n"
                  "ensure_demo(progress=lambda done, total: print(done, total, flush=True))\n")


def _demo_in_a_child(loading: _Loading) -> subprocess.Popen:
    """Generate the demo images in a child process (its own interpreter: loading TensorFlow here holds this
    one's GIL for seconds at a time), its progress read from its output by a thread."""
    child = subprocess.Popen([sys.executable, "-c", _GENERATE_DEMO], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)

    def follow() -> None:
        for line in child.stdout:
            with contextlib.suppress(ValueError):
                done, total = map(int, line.split())
                loading.say("data", f"Generating the demo images: {done}/{total} (first time only)",
                            done / max(total, 1))

    threading.Thread(target=follow, daemon=True, name="simlab-demo-progress").start()
    return child


def prepare(spec: str, backbones: list[str], weights: str | None, progress: Progress, total: int = 0,
            share: float = 0.0, should_stop: ShouldStop | None = None) -> Dataset:
    """The dataset of a job, and the models its missing vectors need, loaded with each step said.

    On a first demo TensorFlow loads while a child process plans and renders the images;
    otherwise the models load only when the dataset's vectors of that backbone are not cached yet.
    """
    loading = _Loading(progress, total, share)
    first_demo = parse_spec(spec)[0] == "demo" and not demo_dir().exists()  # a new demo has no vectors yet
    if first_demo:
        # TensorFlow's import (one core) overlaps the child's planning of the scenes (one core); where the
        # rendering threads take every core, the models are built once the images are written
        loading.say("data", "Generating the demo images (first time only)")
        child = _demo_in_a_child(loading)
        cores = os.cpu_count() or 1
        try:
            until_stopped(lambda: _load_models(backbones, weights, loading,
                                               before_models=child.wait if cores - min(4, cores) < 2 else None),
                          should_stop, "loading TensorFlow")
            if until_stopped(child.wait, should_stop, "generating the demo images") != 0:
                # generated here instead, where a failure says what went wrong
                log.warning("Generating the demo in a child process failed (exit %s)", child.returncode)
        except Cancelled:
            child.kill()
            raise
        until_stopped(ensure_demo, should_stop, "generating the demo images")
    loading.say("data", f"Loading the dataset {spec}", 0.95 if first_demo else 0.0)
    dataset = until_stopped(lambda: load_dataset(spec), should_stop, "loading the dataset")
    loading.done("data")
    if not first_demo:
        missing = [b for b in backbones if not VectorCache(b, weights or default_weights(b)).has(dataset.fingerprint)]
        if missing:
            until_stopped(lambda: _load_models(missing, weights, loading), should_stop, "loading the models")
        else:
            loading.done("models")
    if should_stop is not None and should_stop():
        raise Cancelled("Stopped on request while loading.")
    return dataset


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
    dataset = prepare(params.get("dataset") or "demo", backbones, params.get("weights") or None, progress,
                      should_stop=should_stop)
    n, k = dataset.n_images, len(backbones)
    sets = []
    for i, name in enumerate(backbones):
        progress(i * n, k * n, f"{name}: starting", stage="load", backbone=name)
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
    """run_grid's progress as one bar: loading, then the backbones' vectors (each an equal share; they advance
    together when one decode feeds them all), then training the second half."""
    share = dict.fromkeys(backbones, 0.0)  # each backbone's fraction of its images vectorised

    def report(done: int, total: int, message: str = "", **fields) -> None:
        if fields.get("stage") == "vectorize":
            name = fields.get("backbone") if fields.get("backbone") in share else backbones[0]
            share[name] = done / total if total else 1.0
            frac = sum(share.values()) / len(backbones)
            progress(int(SCALE * (LOADED + (0.5 - LOADED) * frac)), SCALE, f"Vectorising · {message}", **fields)
        else:
            frac = done / total if total else 1
            step = f"{done}/{total} runs done · " if done < total else ""
            progress(int(SCALE * (0.5 + 0.5 * frac)), SCALE, f"Training · {step}{message}", **fields)

    return report


def grid_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop,
             job_id: str | None = None) -> dict:
    """A grid of runs (params: a GridConfig as a dict). One progress bar: vectorising, then training."""
    config = grid_config(params)
    prepare(config.dataset, config.backbones, config.weights, progress, SCALE, LOADED, should_stop)
    runs = list(run_grid(config, store, progress=_grid_bar(progress, config.backbones), should_stop=should_stop,
                         job_id=job_id))
    progress(SCALE, SCALE, f"{len(runs)} run(s) done", stage="done")
    best = max(runs, key=lambda r: (r.get("accuracy") or 0, r.get("auc") or 0), default=None)
    return {"dataset": config.dataset, "runs": [r["run_id"] for r in runs], "n_runs": len(config.cells()),
            "best": best}


def demo_job(params: dict, store: Store, progress: Progress, should_stop: ShouldStop,
             job_id: str | None = None) -> dict:
    """The demo experiment: the default grid (:class:`GridConfig`'s defaults: the bundled backbone, the declared
    merges and classifiers) on the demo images; ``params`` may set ``reuse`` (stored cells are not run again)."""
    return grid_job(asdict(GridConfig(**({"dataset": "demo"} | (params or {})))), store, progress, should_stop,
                    job_id=job_id)


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
    k = int(params.get("k") or options.default("k"))
    if k < 1:
        raise ValueError("k must be at least 1")
    dataset = until_stopped(lambda: load_dataset(params.get("dataset") or "demo"), should_stop, "loading the dataset")
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
