"""A grid of pair-classification runs: backbones x merges x classifiers on cached vectors."""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd

from simlab import options
from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.data import load_dataset
from simlab.evaluate import pair_metrics, retrieval_map
from simlab.fitting import fit_cell
from simlab.merge import fuse
from simlab.progress import Cancelled, Progress, ShouldStop, silent
from simlab.protocol import VALIDATION_SIZE, Protocol, SplitPairs, validation_pairs  # noqa: F401 - re-exported
from simlab.provenance import git_commit, library_versions
from simlab.runspec import RunSpec, fused_name, is_fused, run_key, split_backbone, stored_spec
from simlab.search import build_index
from simlab.store import Run, Store, new_id
from simlab.vectors import common_images, vectorize_many

log = logging.getLogger(__name__)


def _default(name: str):
    """A field default declared in :mod:`simlab.options` (lists copied, so no two configs share one)."""
    value = options.default(name)
    return field(default_factory=lambda: list(value)) if isinstance(value, (list, tuple)) else value


@dataclass
class GridConfig:
    """Everything that defines a grid; also what the app's form and the CLI fill in.

    The protocol fields (split ... weights) take their defaults and bounds from :mod:`simlab.options`;
    :meth:`validate` checks every field against them, and :attr:`protocol` builds the pairs.
    """

    dataset: str = "demo"
    backbones: list[str] = field(default_factory=lambda: [DEFAULT_BACKBONE])
    merges: list[str] = _default("merges")
    classifiers: list[str] = _default("classifiers")
    split: str = _default("split")
    test_size: float = _default("test_size")
    negative_ratio: float = _default("negative_ratio")
    negatives: str = _default("negatives")
    seed: int = _default("seed")
    weights: str = _default("weights")
    fusion: bool = False  # also run the backbones' vectors concatenated, as one more "backbone"
    library_defaults: bool = False  # LinearSVC and XGBoost with the libraries' defaults (the 2017 study's)
    ray: str | None = None  # Ray address (docs/scaling.md); None: $SIMLAB_RAY_ADDRESS, or no Ray
    #: Cells whose configuration, data and seed already have a finished run are not run again: the stored run
    #: is reported instead (the app's "open the results"; False: "run again anyway", and the CLI's default).
    reuse: bool = False

    @property
    def protocol(self) -> Protocol:
        """Split, test size, negatives, ratio, seed and weights (validated): where the grid's pairs come from."""
        return Protocol.from_config(asdict(self))

    def validate(self) -> GridConfig:
        """Self, if every field is allowed; else a one-line ``ValueError`` naming the field and its range."""
        if not (self.backbones and self.merges and self.classifiers):
            raise ValueError("Pick at least one backbone, one merge and one classifier.")
        for name in self.backbones:
            get_backbone(name)
        options.validate("merges", self.merges)
        options.validate("classifiers", self.classifiers)
        self.protocol  # noqa: B018 - validates the protocol fields
        return self

    def check_groups(self, n_groups: int) -> None:
        """A group split of ``n_groups`` needs enough groups on each side (before any work starts); the
        refusal says which test sizes this dataset allows."""
        try:
            options.check_groups(self.test_size, n_groups, self.split)
        except ValueError as exc:
            side = options.MIN_GROUPS_PER_SIDE
            allowed = (f"this dataset allows test_size from {side / n_groups:.2f} to {1 - side / n_groups:.2f}"
                       if n_groups >= 2 * side else f"a group split needs at least {2 * side} groups")
            raise ValueError(f"{exc} ({allowed})") from None

    def cells(self) -> list[tuple[str, str, str]]:
        fused = [fused_name(self.backbones)] if self.fusion and len(self.backbones) > 1 else []
        backbones = list(self.backbones) + fused
        return list(itertools.product(backbones, self.merges, self.classifiers))

    def cell_spec(self, cell: tuple[str, str, str]) -> RunSpec:
        """The run spec of one cell, as its run is stored."""
        backbone, merge, classifier = cell
        config = asdict(self) | {"backbones": [backbone], "merges": [merge], "classifiers": [classifier]}
        return RunSpec.from_dict(config, backbone=backbone, merge=merge, classifier=classifier)


def stored_cells(config: GridConfig, runs, fingerprint: str | None = None) -> dict[tuple, Run]:
    """The cells of ``config`` that already have a finished run among ``runs`` (newest first): same method,
    protocol, seed and data (``fingerprint``; None: the same dataset spec, each run on its own data version).
    Cell -> the newest such run."""
    specs = [(config.cell_spec(cell), cell) for cell in config.cells()]
    found: dict[tuple, Run] = {}
    for run in runs:
        if not (run.done and run.is_grid) or (run.fingerprint != fingerprint if fingerprint
                                              else run.dataset != config.dataset):
            continue
        key = run_key(run)
        cell = next((c for spec, c in specs if spec.key(run.fingerprint) == key), None)
        if cell is not None and cell not in found:
            found[cell] = run
    return found


def rerun_config(run) -> GridConfig | None:
    """The grid that runs a stored grid run (a ``simlab.store.Run``) again: its method, protocol and seed on its
    dataset; a fused backbone re-runs its parts and their fusion. None for a run that is not a grid cell."""
    if not run.is_grid:
        return None
    try:
        spec = stored_spec(run)
    except (ValueError, TypeError, KeyError):
        return None
    if not (spec.backbone and spec.merge and spec.classifier):
        return None
    grid_fields = {f.name for f in fields(GridConfig)}
    return GridConfig(dataset=spec.dataset, backbones=split_backbone(spec.backbone), merges=[spec.merge],
                      classifiers=[spec.classifier], fusion=is_fused(spec.backbone),
                      library_defaults=spec.library_defaults,
                      **{k: v for k, v in spec.protocol.to_dict().items() if k in grid_fields})


def _vectorizing(progress: Progress, backbone: str) -> Progress:
    """The grid's report of one backbone's vectorisation: counts, speed and time left in the message."""
    def report(done: int, total: int, message: str = "", **fields) -> None:
        rate, eta = fields.get("rate") or 0.0, fields.get("eta") or 0.0
        progress(done, total, f"{backbone}: {done}/{total} images, {rate:.1f} img/s, ETA {eta:.0f} s",
                 **(fields | {"stage": "vectorize", "backbone": backbone}))

    return report


def run_grid(config: GridConfig, store: Store | None = None, progress: Progress | None = None,
             should_stop: ShouldStop | None = None, job_id: str | None = None):
    """Run every (backbone, merge, classifier) cell; yield each finished run's summary as it lands.

    ``progress`` hears ``stage="vectorize"`` (with ``backbone``, ``rate``, ``eta``) for each backbone's
    vectors, then ``stage="train"`` (done and total in runs). Stopping raises :class:`Cancelled`.

    Settings are checked before any work: the fields first, the dataset's group count before vectorising,
    each backbone's pairs before the first run is stored. However the grid ends (finished, stopped, an
    error, the generator closed, Ctrl-C or a signal turned into an exception), no run stays "running".
    """
    config.validate()
    store = store or Store()
    say = progress or silent
    dataset = load_dataset(config.dataset)
    config.check_groups(dataset.n_groups)
    reused = stored_cells(config, store.list_runs(status="done", fingerprint=dataset.fingerprint),
                          dataset.fingerprint) if config.reuse else {}
    for (backbone, merge, clf_name), run in reused.items():
        yield {"run_id": run.id, "backbone": backbone, "merge": merge, "classifier": clf_name} | run.metrics | {
            "seconds": run.seconds, "existing": True}
    if len(reused) == len(config.cells()):
        say(len(reused), len(reused), f"{len(reused)} runs already stored: nothing to run", stage="train")
        return
    paths, groups, vectors = _grid_vectors(config, dataset, say, should_stop)
    cells = _Cells(config, store, dataset.fingerprint, paths, groups, vectors, job_id, skip=set(reused))
    # Cells train concurrently (grid_workers()), each on its own thread: scikit-learn, XGBoost and
    # Keras release the GIL while they compute, so a single-threaded classifier no longer leaves a
    # core idle. The store is written from this thread only; results are yielded as cells finish.
    workers = grid_workers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simlab-cell")
    ending = "the grid ended before this run finished"
    try:
        while cells.waiting or cells.running:
            stop = cells.failure is not None or bool(should_stop and should_stop())
            while cells.waiting and not stop and len(cells.running) < workers:
                cells.start_next(pool)
            if not cells.running:
                break
            say(cells.finished, cells.total, cells.describe(), stage="train")
            done, _ = wait(cells.running, timeout=1.0, return_when=FIRST_COMPLETED)
            yield from cells.collect(done)
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or a signal the caller turned into an exception
        ending = f"interrupted ({type(exc).__name__}{f': {exc}' if str(exc) else ''}): {ending}"
        raise
    finally:  # left early (the caller closed the generator, or an error here): no run stays "running"
        cells.abandon(ending)
        pool.shutdown(wait=True, cancel_futures=True)
    if cells.failure is not None:
        raise cells.failure
    if cells.waiting:
        raise Cancelled(f"Grid stopped on request after {cells.finished} of {cells.total} runs.")
    say(cells.total, cells.total, f"{cells.total} runs done", stage="train")


def _grid_vectors(config: GridConfig, dataset, say: Progress, should_stop: ShouldStop | None):
    """Paths, groups and each backbone's vectors of the images they all vectorised (plus the fusion).
    Every image the backbones miss is decoded once for all of them (``vectorize_many``)."""
    t0 = time.perf_counter()
    sets = vectorize_many(dataset, config.backbones, config.weights,
                          progress_for=lambda name: _vectorizing(say, name), should_stop=should_stop, ray=config.ray)
    for name in config.backbones:
        say(len(dataset.paths), len(dataset.paths),
            f"{name}: vectors ready in {time.perf_counter() - t0:.1f} s ({sets[name].computed} computed)",
            stage="vectorize", backbone=name)
    paths, groups, vectors = common_images(sets)
    if config.fusion and len(config.backbones) > 1:
        vectors[fused_name(config.backbones)] = fuse([vectors[b] for b in config.backbones])
    return paths, groups, vectors


def check_both_labels(split_pairs: SplitPairs, protocol: Protocol) -> None:
    """Each side of the split needs positive and negative pairs, or a classifier cannot be fitted or scored."""
    for side, mask in (("train", split_pairs.train), ("test", split_pairs.test)):
        labels = set(np.unique(split_pairs.pairs.label[mask]).tolist())
        if labels != {0, 1}:
            have = ", ".join({1: "positive", 0: "negative"}[v] for v in sorted(labels, reverse=True)) or "no"
            raise ValueError(f"test_size {protocol.test_size:g} ({protocol.split} split) leaves the {side} side "
                             f"with {have} pairs: each side needs positive and negative pairs. Use a test size "
                             "nearer 0.5, or a dataset with more images per group.")


class _Cells:
    """The cells of one grid: those waiting, those training (future -> run id and cell), the runs opened and
    not yet stored (run id -> cell), the first failure."""

    def __init__(self, config: GridConfig, store: Store, fingerprint: str, paths, groups, vectors: dict,
                 job_id: str | None, skip: set = frozenset()):
        self.config, self.store, self.fingerprint, self.job_id = config, store, fingerprint, job_id
        self.protocol = config.protocol
        self.groups, self.vectors = groups, vectors
        self.paths_arr, self.groups_arr = np.asarray(paths), np.asarray(groups)
        self.maps = {b: retrieval_map(v, groups) for b, v in vectors.items()}
        self.waiting = collections.deque(cell for cell in config.cells() if cell not in skip)
        self.total, self.finished, self.failure = len(self.waiting), 0, None
        self.running: dict = {}
        self.opened: dict[str, tuple] = {}
        self.pair_sets: dict = {}
        self.validation_sets: dict = {}
        self.one_backbone = len({backbone for backbone, _, _ in self.waiting}) == 1
        for backbone in dict.fromkeys(b for b, _, _ in self.waiting):  # every pair set, before any run is stored
            check_both_labels(self.pairs_for(backbone), self.protocol)

    def pairs_for(self, backbone: str) -> SplitPairs:
        """The grid's pairs; with hard negatives, mined on each backbone's own vectors (FAISS)."""
        key = backbone if self.protocol.needs_vectors else None
        if key not in self.pair_sets:
            if self.protocol.needs_vectors:
                v = self.vectors[backbone]
                self.pair_sets[key] = self.protocol.pairs(self.groups, v, index=build_index(v))
            else:
                self.pair_sets[key] = self.protocol.pairs(self.groups)
        return self.pair_sets[key]

    def validation_for(self, backbone: str) -> SplitPairs | None:
        """The pairs a run's threshold is chosen on (:func:`validation_pairs`); None under the study's rule."""
        if self.config.library_defaults:
            return None
        key = backbone if self.protocol.needs_vectors else None
        if key not in self.validation_sets:
            self.validation_sets[key] = validation_pairs(self.protocol, self.pairs_for(backbone), self.groups,
                                                         self.vectors[backbone])
        return self.validation_sets[key]

    def fail(self, run_id: str, exc: BaseException) -> None:
        log.warning("Run %s failed: %s: %s", run_id, type(exc).__name__, exc)
        self.store.update_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
        self.opened.pop(run_id, None)

    def start_next(self, pool: ThreadPoolExecutor) -> None:
        """Open the next cell's run in the store and start training it (or record why it cannot start)."""
        config = self.config
        backbone, merge, clf_name = cell = self.waiting.popleft()
        spec = config.cell_spec(cell)
        cell_config = asdict(config) | {"backbones": [backbone], "merges": [merge], "classifiers": [clf_name]}
        run_id = new_id("r")
        self.opened[run_id] = cell  # before the row exists: an interruption from here on still closes it
        self.store.add_run(id=run_id, dataset=config.dataset, fingerprint=self.fingerprint, backbone=backbone,
                           merge=merge, classifier=clf_name, split=config.split, seed=config.seed,
                           config=cell_config, versions=library_versions(), git=git_commit(), job_id=self.job_id)
        future = pool.submit(_run_cell, spec, self.vectors[backbone], self.pairs_for(backbone),
                             self.validation_for(backbone), self.maps[backbone], self.paths_arr, self.groups_arr,
                             config.ray)
        self.running[future] = (run_id, cell)

    def describe(self) -> str:
        """What is training now, e.g. "now: dot + xgboost, l1 + cosine"."""
        return "now: " + ", ".join(" + ".join(cell[1:] if self.one_backbone else cell)
                                   for _, cell in self.running.values())

    def collect(self, done) -> Iterator[dict]:
        """Store each finished future's run (or its failure); yield the summaries of those that succeeded."""
        for future in done:
            run_id, (backbone, merge, clf_name) = self.running.pop(future)
            try:
                metrics, predictions, timings, artifacts = future.result()
            except Exception as exc:  # noqa: BLE001 - logged and stored on the run; raised at the end
                self.fail(run_id, exc)
                self.failure = self.failure or exc
                continue
            self.store.finish_run(run_id, metrics, predictions, timings=timings, threshold=metrics["threshold"],
                                  artifacts=artifacts)
            self.opened.pop(run_id, None)
            self.finished += 1
            yield {"run_id": run_id, "backbone": backbone, "merge": merge, "classifier": clf_name} | metrics | {
                "seconds": round(timings["total"], 3)}

    def abandon(self, reason: str) -> None:
        """Mark every run opened and not stored as failed (the grid is leaving before they finish)."""
        for future in self.running:
            future.cancel()
        for run_id in list(self.opened):
            run = self.store.get(run_id)
            if run is not None and run.status == "running":  # a run whose result landed just now stays done
                self.fail(run_id, Cancelled(reason))
            self.opened.pop(run_id, None)


def grid_workers() -> int:
    """Grid cells trained at once: ``$SIMLAB_GRID_WORKERS``, else 2 where there are 2 cores or more.

    Two, not one per core: XGBoost, random forests and Keras already use every core within one cell;
    the second cell fills the gaps the single-threaded ones (liblinear, lbfgs) leave (benchmarks/README.md).
    """
    try:
        return max(1, int(os.environ["SIMLAB_GRID_WORKERS"]))
    except (KeyError, ValueError):
        return 2 if (os.cpu_count() or 1) >= 2 else 1


def _run_cell(spec: RunSpec, vectors, split_pairs: SplitPairs, validation: SplitPairs | None, map_score: float,
              paths, groups, ray: str | None = None) -> tuple[dict, pd.DataFrame, dict, dict]:
    """Fit and score one cell (:func:`simlab.fitting.fit_cell`); returns (metrics, test predictions, timings,
    artifacts) for the store. P(same) is calibrated on the validation pairs that choose the threshold."""
    cell = fit_cell(spec, vectors, split_pairs, validation, ray)
    test = split_pairs.test_pairs
    n_val = {} if cell.n_val is None else {"n_val": cell.n_val}
    metrics = pair_metrics(test.label, cell.test_prob, threshold=cell.threshold, seed=spec.protocol.seed) | n_val | {
        "map": map_score, "n_train": int(split_pairs.train.sum())}
    predictions = pd.DataFrame({"left_path": paths[test.left], "right_path": paths[test.right],
                                "left_group": groups[test.left], "right_group": groups[test.right],
                                "label": test.label.astype(int), "prob": cell.test_prob})
    return metrics, predictions, cell.timings, cell.summary()
