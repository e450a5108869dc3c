"""One vector per image: :func:`vectorize` answers from the vector cache where it can and computes
the rest (decoding in a pool ahead of the forward pass, or on a Ray cluster).

The cache is keyed by content (:class:`simlab.vectors.cache.VectorCache`, the one owner of its
layout): one folder per backbone configuration, one file per dataset fingerprint holding the
images' content digests. A repeated request is one file read; a dataset that grew reuses the
vectors of the images it already had and computes only the new ones. Finished batches are kept
on disk as they complete (:mod:`simlab.vectors.keep`): a killed run, started again, computes only
the rest, and a full disk stops it with one line (:class:`DiskFull`) that keeps what was written.

    simlab.vectors          vectorize(), VectorSet, default_weights
    simlab.vectors.cache    VectorCache, cached_sets, read_path, config_key
    simlab.vectors.embed    load_model, compute_vectors (the forward pass)
    simlab.vectors.decode   decode_mode, decode_workers (thread and process pools)
    simlab.vectors.keep     finished batches kept as parts of the set, DiskFull
    simlab.vectors.fold     batch norms folded for inference
    simlab.vectors.ray      the same on a Ray cluster (imported only when asked for)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simlab.backbones import DEFAULT_BACKBONE, get_backbone
from simlab.data import Dataset, Problem
from simlab.distributed import ray_address
from simlab.paths import atomic_path
from simlab.progress import Progress, ShouldStop
from simlab.vectors.cache import (
    FITS,
    PIPELINE_VERSION,
    CachedVectors,
    CorruptCache,
    VectorCache,
    cached_sets,
    config_key,
    read_path,
)
from simlab.vectors.decode import decode_mode, decode_workers
from simlab.vectors.embed import compute_vectors, default_batch_size, load_model, report_progress
from simlab.vectors.keep import SAVE_EVERY_S, DiskFull, Keeper

__all__ = ["FITS", "PIPELINE_VERSION", "CachedVectors", "CorruptCache", "DiskFull", "VectorCache", "VectorSet",
           "cached_sets", "compute_vectors", "config_key", "decode_mode", "decode_workers",
           "default_batch_size", "default_weights", "load_model", "read_path", "vectorize"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "imagenet"


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
    """The weights a backbone is used with when none are named: its registry entry's
    ``options["default_weights"]`` if it declares one, else ImageNet's (every backbone today)."""
    return get_backbone(backbone).options.get("default_weights", DEFAULT_WEIGHTS)


def vectorize(dataset: Dataset, backbone: str = DEFAULT_BACKBONE, weights: str | None = None,
              fit: str = "crop", batch_size: int | None = None, progress: Progress | None = None,
              should_stop: ShouldStop | None = None, ray: str | None = None,
              save_every: float = SAVE_EVERY_S) -> VectorSet:
    """One vector per image of the dataset, from the cache where possible.

    ``progress(done, total, message, stage="vectorize", backbone=..., rate=..., eta=...)`` reports
    the images done; a ``should_stop()`` that answers True raises :class:`simlab.progress.Cancelled`.
    ``ray``: a Ray address (``local``, ``auto``, ``HOST:6379``...; default ``$SIMLAB_RAY_ADDRESS``)
    to compute the missing vectors on a Ray cluster; they land in the same cache under the same key.

    Finished batches are written to the cache every ``save_every`` seconds (0: after each batch)
    and when the computation stops or fails, so a run started again computes only the rest (on
    Ray the set is written once, at the end). A full disk raises :class:`DiskFull` (an OSError
    and a ValueError) naming the path and how many images are kept.
    """
    weights = weights or default_weights(backbone)
    cache = VectorCache(backbone, weights, fit)
    if cache.has(dataset.fingerprint):
        try:
            return _load_hit(cache.read(dataset.fingerprint), dataset, backbone, weights, cache.key)
        except (FileNotFoundError, CorruptCache) as exc:  # gone since, or torn: a miss
            log.warning("Recomputing %s: %s", cache.path(dataset.fingerprint), exc)
    known = cache.bank(dataset.digests)
    bad = {d: e for d, e in cache.parts(dataset.fingerprint).bad.items() if d not in known}
    todo = [i for i, d in enumerate(dataset.digests) if d not in known and d not in bad]
    n = len(dataset.paths)
    keeper = Keeper(cache, dataset.fingerprint, [dataset.digests[i] for i in todo], n,
                    kept=sum(d in known for d in dataset.digests), save_every=save_every)
    if todo:
        vecs, errors = _compute([dataset.paths[i] for i in todo], backbone, weights, fit, batch_size, progress,
                                should_stop, ray, keeper)
        for i, v, err in zip(todo, vecs, errors):
            if err:
                bad[dataset.digests[i]] = err
            else:
                known[dataset.digests[i]] = v
    else:
        report_progress(progress, n, n, backbone, 0.0, 0.0)
    result = _assemble(dataset, backbone, weights, cache.key, known, bad, computed=len(todo))
    with keeper.room(cache.path(dataset.fingerprint)):
        cache.write(dataset.fingerprint, result.vectors, result.digests, bad)
    return result


def _compute(paths: list[str], backbone: str, weights: str, fit: str, batch_size: int | None,
             progress: Progress | None, should_stop: ShouldStop | None, ray: str | None,
             keeper: Keeper) -> tuple[np.ndarray, list[str]]:
    """The vectors of the images not cached, here (finished batches kept by ``keeper``) or on Ray."""
    if address := ray_address(ray):
        from simlab.vectors.ray import ray_vectorize  # Ray is heavy: loaded only when asked for

        return ray_vectorize(paths, backbone, weights, fit, address=address, batch_size=batch_size,
                             progress=progress, should_stop=should_stop)
    try:
        return compute_vectors(paths, backbone, weights, fit, batch_size=batch_size, progress=progress,
                               should_stop=should_stop, on_batch=keeper.add)
    except DiskFull:
        raise
    except BaseException:  # stopped, interrupted or failed: keep the finished batches, then go on failing
        keeper.flush_quietly()
        raise


def _problems(dataset: Dataset, bad: dict[str, str]) -> list[Problem]:
    return [Problem(p, f"could not be vectorised: {bad[d]}") for p, d in zip(dataset.paths, dataset.digests)
            if d in bad]


def _load_hit(cached: CachedVectors, dataset: Dataset, backbone: str, weights: str, key: str) -> VectorSet:
    """The cached set for this dataset's fingerprint. The file holds the vectors in dataset order
    (failed images left out), so the usual answer is the array as stored, with no per-image work."""
    vectors, digests, bad = cached.vectors, cached.digests, cached.bad
    keep = [i for i, d in enumerate(dataset.digests) if d not in bad]
    if len(keep) == len(digests) and all(dataset.digests[i] == d for i, d in zip(keep, digests)):
        return VectorSet(vectors, [dataset.paths[i] for i in keep], [dataset.groups[i] for i in keep],
                         digests, backbone, weights, key, _problems(dataset, bad), 0)
    return _assemble(dataset, backbone, weights, key, dict(zip(digests, vectors)), bad, computed=0)


def _assemble(dataset: Dataset, backbone: str, weights: str, key: str, known: dict, bad: dict,
              computed: int) -> VectorSet:
    keep = [i for i, d in enumerate(dataset.digests) if d in known]
    dim = get_backbone(backbone).dim
    vectors = np.stack([known[dataset.digests[i]] for i in keep]).astype(np.float32, copy=False) if keep \
        else np.zeros((0, dim), np.float32)
    return VectorSet(vectors, [dataset.paths[i] for i in keep], [dataset.groups[i] for i in keep],
                     [dataset.digests[i] for i in keep], backbone, weights, key, _problems(dataset, bad), computed)
