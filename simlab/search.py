"""Nearest-neighbour search over a vector set, re-ranking by a run's classifier, retrieval mAP.

>>> result = search_dataset(dataset, "holidays/100000.jpg", k=10)          # vectorises what is missing
>>> scores, ids, index = search_set(vectors, query=3, k=10)                 # a row of a cached set, or a vector
>>> search_in_process(position, kept_vector, rerank)                        # or a "search" job?

The index is :mod:`simlab.neighbours`' (FAISS; its names are re-exported here). :func:`search_dataset`
reports its steps through one :class:`simlab.progress.Progress`, each with a
``stage`` field (see :data:`SEARCH_STAGES`). FAISS is imported inside the functions.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from simlab.backbones import DEFAULT_BACKBONE
from simlab.data import file_digest, load_dataset
from simlab.fitting import FittedCell, cosines, fit_run
from simlab.neighbours import (  # noqa: F401  (re-exported: the index as search's callers know it)
    FLAT_MAX,
    HNSW_M,
    INDEX_KINDS,
    INDEX_VERSION,
    IVF_MAX,
    VectorIndex,
    build_index,
    choose_kind,
    default_nprobe,
    index_path,
    ivf_lists,
    normalised,
)
from simlab.options import default
from simlab.pairs import group_codes
from simlab.paths import atomic_path, cache_dir
from simlab.progress import Progress, ShouldStop, silent
from simlab.protocol import Protocol
from simlab.runspec import RunSpec, is_fused, split_backbone
from simlab.store import Store
from simlab.vectors import common_images, compute_vectors, vectorize

log = logging.getLogger(__name__)

#: The steps of :func:`search_dataset`, in order: each is reported as ``progress(position, steps, message,
#: stage=name)``; a step that is not needed (cached index, query in the dataset) is skipped. While the
#: dataset is vectorised, the vectors' own progress comes through with ``stage="vectorize"`` (images).
SEARCH_STAGES = ("load", "query", "index", "search", "refit", "rerank")
K = default("k")  # neighbours returned, as declared in simlab.options


# --------------------------------------------------------------------------- retrieval mAP


def retrieval_map_index(index: VectorIndex, vectors, groups, queries=None, k: int | None = None) -> float:
    """Holidays-protocol mAP with the ranking taken from ``index`` (see ``simlab.evaluate.retrieval_map``).

    Each query (default: each group's first image) retrieves ``k`` neighbours (default all); the query
    itself is left out, and AP is over all of the group's other images, so a truncated list loses
    what it did not retrieve. With a flat index and ``k=None`` it equals ``retrieval_map``.
    """
    codes = group_codes(groups)
    if queries is None:
        _, queries = np.unique(codes, return_index=True)
    queries = np.asarray(queries, int)
    if len(queries) == 0:
        return float("nan")
    k = index.n if k is None else min(int(k) + 1, index.n)
    sizes = np.bincount(codes)
    aps = []
    for start in range(0, len(queries), 256):
        batch = queries[start:start + 256]
        _, ids = index.search(np.asarray(vectors)[batch], k)
        for q, row in zip(batch, ids):
            relevant_total = sizes[codes[q]] - 1
            if relevant_total <= 0:
                continue
            ranked = row[(row >= 0) & (row != q)]
            hits = np.flatnonzero(codes[ranked] == codes[q])
            aps.append(float(np.sum(np.arange(1, len(hits) + 1) / (hits + 1)) / relevant_total))
    return float(np.mean(aps)) if aps else float("nan")


# --------------------------------------------------------------------------- re-ranking with a run's classifier


def run_model_path(run_id: str) -> Path:
    return cache_dir("runs", run_id) / "model.joblib"


def run_spec(run_id: str, store=None) -> RunSpec:
    """The spec of a finished grid run on one backbone, as it was fitted (to refit its classifier)."""
    run = (store or Store()).get(run_id)
    if run is None:
        raise ValueError(f"No run {run_id!r} in the store. List runs with: python -m simlab runs")
    if not (run.done and run.is_grid):
        raise ValueError(f"Run {run_id} is not a finished pair-classifier run (status {run.status}, "
                         f"kind {run.kind}); pick another with: python -m simlab runs")
    if is_fused(run.backbone):
        raise ValueError(f"Run {run_id} uses fused backbones ({run.backbone}); re-ranking needs a run "
                         "on one backbone.")
    try:
        protocol = Protocol(**run.protocol.to_dict())  # a stored protocol now out of bounds cannot build pairs
    except ValueError as exc:
        raise ValueError(f"Run {run_id} cannot be refitted: {exc}") from None
    spec = RunSpec.from_dict(run.config, backbone=run.backbone, merge=run.merge, classifier=run.classifier,
                             dataset=run.dataset)
    return spec.replace(protocol=protocol)


def run_classifier(run_id: str, store=None, progress: Progress = silent) -> FittedCell:
    """The run's fitted classifier, calibration and threshold (:func:`simlab.fitting.fit_run`, the grid's own
    fit: same pairs, validation pairs, library settings and seed), refitted once, then cached with joblib
    under ``cache/runs/<run_id>/model.joblib`` (classifiers are not stored with runs)."""
    path = run_model_path(run_id)
    if path.exists():
        try:
            cell = joblib.load(path)
            if isinstance(cell, FittedCell):
                return cell
        except Exception:  # unreadable or from another library version: refit below
            log.warning("Refitting run %s's classifier: %s could not be loaded", run_id, path, exc_info=True)
    spec = run_spec(run_id, store)
    progress(0, 1, f"Refitting run {run_id}'s classifier ({spec.classifier}) on its training pairs",
             stage="refit")
    dataset = load_dataset(spec.dataset)
    vs = vectorize(dataset, spec.backbone, spec.protocol.weights)
    index = build_index(vs.vectors) if spec.protocol.needs_vectors else None
    cell = fit_run(spec, vs.vectors, vs.groups, index=index)
    with atomic_path(path, suffix=".joblib") as tmp:
        joblib.dump(cell, tmp)
    return cell


def pair_probabilities(cell: FittedCell, query_vector, candidate_vectors) -> np.ndarray:
    """Calibrated P(same scene) of (query, candidate) for each candidate, by a run's fitted classifier."""
    vectors = np.vstack([np.asarray(query_vector, np.float32).reshape(1, -1),
                         np.asarray(candidate_vectors, np.float32)])
    m = len(vectors) - 1
    return cell.predict(vectors, np.zeros(m, np.int64), np.arange(1, m + 1))


# --------------------------------------------------------------------------- searching a dataset


@dataclass
class SearchResult:
    query: str
    query_group: str | None  # None when the query is not an image of the dataset
    backbone: str
    weights: str
    kind: str
    results: list[dict]  # rank, index, path, group, score, same_file (the query's own bytes) [, prob]
    rerank: str | None = None
    seconds: float = 0.0
    #: Re-ranked only: whether the best result looks like the run's validation positives (None: unknown).
    #: False means "no close match": the P(same) shown are the classifier's reading of strangers.
    close_match: bool | None = None

    def to_dict(self) -> dict:
        return {"query": self.query, "query_group": self.query_group, "backbone": self.backbone,
                "weights": self.weights, "index": self.kind, "rerank": self.rerank, "k": len(self.results),
                "seconds": round(self.seconds, 3), "close_match": self.close_match, "results": self.results}


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def query_position(paths: list[str], query: str) -> int | None:
    """Index of ``query`` among ``paths`` (same file), or None."""
    target = os.path.realpath(query)
    for i, p in enumerate(paths):
        if os.path.realpath(p) == target:
            return i
    name = os.path.basename(query)
    for i, p in enumerate(paths):
        if os.path.basename(p) == name and _same_file(p, query):
            return i
    return None


def query_vector_path(set_key: str, digest: str) -> Path:
    """Where the vector of a query image from outside the dataset is kept: by the vector set's backbone
    configuration (:func:`simlab.vectors.cache.config_key`) and the file's content digest, so that the
    same upload searched again (other k, index or re-ranking) is never vectorised twice."""
    return cache_dir("queries", set_key) / f"{digest}.npy"


def cached_query_vector(set_key: str, digest: str) -> np.ndarray | None:
    """The kept vector of a query image (see :func:`query_vector_path`), or None."""
    path = query_vector_path(set_key, digest)
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # not there yet, or torn: computed again
        return None
    return vector if vector.ndim == 1 else None


def _keep_query_vector(set_key: str, digest: str, vector: np.ndarray) -> None:
    with atomic_path(query_vector_path(set_key, digest), suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(vector, np.float32))


def _step(progress: Progress, stage: str, steps: int) -> Progress:
    """A Progress for one step of a search: reports the step's place among ``steps``, with its stage."""
    position = SEARCH_STAGES.index(stage)

    def report(done: int, total: int, message: str = "", **fields) -> None:
        progress(position, steps, message, **(fields | {"stage": stage}))

    return report


def search_set(vectors, query, k: int = K, kind: str = "auto", cache_key: tuple[str, str] | None = None,
               index: VectorIndex | None = None,
               progress: Progress = silent) -> tuple[np.ndarray, np.ndarray, VectorIndex]:
    """The ``k`` rows of ``vectors`` nearest to ``query`` (a row number of ``vectors``, or a vector: a kept
    query's), best first: ``(scores, ids, index)``, cosine similarities and row numbers without padding.

    ``index`` is :func:`build_index`'s over ``vectors`` (built here when None, cached by ``cache_key``), the
    same index and order as :func:`search_dataset`'s."""
    if index is None:
        index = build_index(vectors, kind, cache_key=cache_key, progress=progress)
    vector = vectors[query] if isinstance(query, (int, np.integer)) else query
    scores, ids = index.search(vector, k)
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep], index


def neighbour_rows(ids, scores, paths, groups, same=(), probs=None) -> list[dict]:
    """The results as :class:`SearchResult` holds them: rank, index, path, group, score, same_file (``ids``
    in ``same`` hold the query's own bytes) and, re-ranked, prob."""
    same = set(same)
    rows = []
    for rank, (i, s) in enumerate(zip(ids, scores), 1):
        row = {"rank": rank, "index": int(i), "path": paths[i], "group": str(groups[i]), "score": float(s),
               "same_file": int(i) in same}
        if probs is not None:
            row["prob"] = float(probs[rank - 1])
        rows.append(row)
    return rows


def local_query(position: int | None, set_key: str, digest: str | None, rerank: str | None = None):
    """What a search can run on in this process, without a model: the query's row of the vector set
    (``position``) or its kept vector (an image searched before, by ``digest``); None when a "search" job
    must run it (a query never vectorised with this set, or a re-rank, which refits a classifier)."""
    if rerank:
        return None
    if position is not None:
        return int(position)
    return cached_query_vector(set_key, digest) if digest else None


def search_in_process(position: int | None, set_key: str, digest: str | None, rerank: str | None = None) -> bool:
    """The routing rule: in process when the query's vector is at hand and there is no re-rank, else a job."""
    return local_query(position, set_key, digest, rerank) is not None


@dataclass(frozen=True)
class NeighbourSet:
    """A dataset's vectors for one backbone or a fusion "a+b", with their paths, groups and an exact index:
    what Inspect looks up an image's nearest neighbours in."""

    vectors: np.ndarray
    paths: list[str]
    groups: list[str]
    index: VectorIndex

    def nearest(self, path: str, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` images most like the image at ``path`` (itself left out): (path, group, cosine), best first;
        none when ``path`` has no vector."""
        try:
            row = self.paths.index(path)
        except ValueError:
            return []
        return [(self.paths[j], self.groups[j], s) for j, s in neighbours_of(self.vectors, row, k, self.index)]


def neighbour_set(dataset, backbone: str, weights: str) -> NeighbourSet:
    """The dataset's vectors for ``backbone`` (a fused name: each backbone's vectors of the images they all read,
    concatenated), from the vector cache, with an exact index over them."""
    from simlab.merge import fuse

    sets = {name: vectorize(dataset, name, weights) for name in split_backbone(backbone)}
    paths, groups, vectors = common_images(sets)
    fused = np.ascontiguousarray(fuse([vectors[name] for name in sets]), np.float32)
    return NeighbourSet(fused, list(paths), list(groups), build_index(fused, "flat"))


def neighbours_of(vectors, row: int, k: int = 10, index: VectorIndex | None = None) -> list[tuple[int, float]]:
    """The ``k`` rows nearest to row ``row`` of ``vectors`` (itself left out), as (row, cosine), best first;
    ``index`` an index over ``vectors`` (default an exact flat one)."""
    n = len(vectors)
    if not 0 <= row < n:
        return []
    scores, ids, _ = search_set(vectors, int(row), min(n, k + 1), "flat", index=index)
    return [(int(i), float(s)) for i, s in zip(ids, scores) if i != row][:k]


def search_dataset(dataset, query: str, backbone: str | None = None, weights: str | None = None, k: int = K,
                   rerank: str | None = None, kind: str = "auto", shortlist: int | None = None,
                   progress: Progress | None = None, should_stop: ShouldStop | None = None,
                   store: Store | None = None) -> SearchResult:
    """The ``k`` images of ``dataset`` most like the image at ``query``, best first.

    Uses the dataset's cached vectors (computed if missing) and a cached index. A query outside the
    dataset is vectorised alone with the same backbone. ``rerank`` (a run id of ``store``) re-orders a
    shortlist of ``shortlist`` neighbours (default 3k) by that run's pair classifier's P(same scene).
    ``progress`` hears each step (:data:`SEARCH_STAGES`) and a vectorisation of the dataset, if one is needed.
    """
    progress = progress or silent
    steps = len(SEARCH_STAGES) if rerank else SEARCH_STAGES.index("search") + 1
    step = functools.partial(_step, progress, steps=steps)
    t0 = time.perf_counter()
    settings = run_spec(rerank, store) if rerank else None
    if settings:
        if backbone and backbone != settings.backbone:
            raise ValueError(f"Run {rerank} was trained on {settings.backbone} vectors; search with "
                             f"--backbone {settings.backbone} (or leave --backbone out).")
        if weights and weights != settings.protocol.weights:
            raise ValueError(f"Run {rerank} was trained on {settings.protocol.weights} weights; search with "
                             f"--weights {settings.protocol.weights} (or leave --weights out).")
        backbone, weights = settings.backbone, settings.protocol.weights
    backbone = backbone or DEFAULT_BACKBONE
    if not os.path.isfile(query):  # before any vectorising
        raise FileNotFoundError(f"Query image not found: {query}")
    step("load")(0, 1, f"Loading the {backbone} vectors of {dataset.spec}")
    vs = vectorize(dataset, backbone, weights, progress=progress, should_stop=should_stop)
    if len(vs.vectors) == 0:
        raise ValueError(f"None of the images of {dataset.spec} could be vectorised.")
    position = query_position(vs.paths, query)
    digest = vs.digests[position] if position is not None else file_digest(query)
    same = {i for i, d in enumerate(vs.digests) if d == digest}  # the query's own bytes, wherever they lie
    if position is not None:
        query_vector = vs.vectors[position]
    elif same:  # a copy of a dataset image: its vector is already there
        query_vector = vs.vectors[min(same)]
    elif (kept := cached_query_vector(vs.key, digest)) is not None:
        query_vector = kept
    else:
        step("query")(0, 1, f"Vectorising the query image with {backbone}")
        vecs, errors = compute_vectors([query], backbone, vs.weights)
        if errors[0]:
            raise ValueError(f"Cannot read the query image {query}: {errors[0]}")
        query_vector = vecs[0]
        _keep_query_vector(vs.key, digest, query_vector)
    index = build_index(vs.vectors, kind, cache_key=(vs.key, dataset.fingerprint), progress=step("index"))
    depth = max(k, shortlist or 3 * k) if settings else k
    step("search")(0, 1, "Searching")
    scores, ids, _ = search_set(vs.vectors, query_vector, depth, index=index)
    probs, close = None, None
    if settings:
        cell = run_classifier(rerank, store, progress=step("refit"))
        step("rerank")(0, 1, f"Re-ranking {len(ids)} neighbours with run {rerank}")
        probs = pair_probabilities(cell, query_vector, vs.vectors[ids])
        order = np.lexsort((-scores, -probs))  # by probability, then similarity
        ids, scores, probs = ids[order][:k], scores[order][:k], probs[order][:k]
        if len(ids):
            both = np.vstack([query_vector, vs.vectors[ids]])
            cos = cosines(both, np.zeros(len(ids), int), np.arange(1, len(ids) + 1))
            close = cell.close_match(float(probs.max()), float(cos.max()))
    results = neighbour_rows(ids, scores, vs.paths, vs.groups, same, probs)
    return SearchResult(query=str(query), query_group=str(vs.groups[position]) if position is not None else None,
                        backbone=backbone, weights=vs.weights, kind=index.kind, results=results, rerank=rerank,
                        seconds=time.perf_counter() - t0, close_match=close)
