"""One vector per image: :func:`vectorize` answers from the vector cache where it can and computes
the rest (decoding in a pool ahead of the forward pass, or on a Ray cluster).

The cache is keyed by content (:class:`simlab.vectors.cache.VectorCache`, the one owner of its
layout): one folder per backbone configuration, one file per dataset fingerprint holding the
images' content digests. A repeated request is one file read; a dataset that grew reuses the
vectors of the images it already had and computes only the new ones. Finished batches are kept
on disk as they complete (:mod:`simlab.vectors.keep`): a killed run, started again, computes only
the rest, and a full disk stops it with one line (:class:`DiskFull`) that keeps what was written.

Several backbones (:func:`vectorize_many`: ``vectorize --backbone A B C``, a grid) decode each
image once and feed every backbone from that decode (:func:`simlab.vectors.embed.compute_many`).

    simlab.vectors          vectorize(), vectorize_many(), VectorSet, default_weights
    simlab.vectors.cache    VectorCache, cached_sets, read_path, config_key
    simlab.vectors.embed    load_model, compute_vectors, compute_many (the forward pass)
    simlab.vectors.decoders the decoder seam: pillow, nvimgcodec; choose_decoder ($SIMLAB_DECODE)
    simlab.vectors.decode   Pillow: decode_mode, decode_workers (thread and process pools), load_sizes
    simlab.vectors.nvimgcodec  nvImageCodec on the GPU (imported only when used)
    simlab.vectors.keep     finished batches kept as parts of the set, DiskFull
    simlab.vectors.fold     batch norms folded for inference
    simlab.vectors.ray      the same on a Ray cluster (imported only when asked for)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from simlab.vectors.decoders import DECODERS, Decoder, DecoderUnavailable, choose_decoder
from simlab.vectors.embed import (
    DecodeStats,
    Job,
    compute_many,
    compute_vectors,
    default_batch_size,
    load_model,
    report_progress,
)
from simlab.vectors.keep import SAVE_EVERY_S, DiskFull, Keeper

__all__ = ["DECODERS", "FITS", "PIPELINE_VERSION", "CachedVectors", "CorruptCache", "DecodeStats", "Decoder",
           "common_images",
           "DecoderUnavailable", "DiskFull", "Job", "VectorCache", "VectorSet", "cached_sets", "choose_decoder",
           "compute_many", "compute_vectors", "config_key", "decode_mode", "decode_workers",
           "default_batch_size", "default_weights", "load_model", "read_path", "vectorize", "vectorize_many"]

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
    return vectorize_many(dataset, [backbone], weights, fit, batch_size, lambda _: progress, should_stop, ray,
                          save_every)[backbone]


def vectorize_many(dataset: Dataset, backbones: list[str], weights: str | None = None, fit: str = "crop",
                   batch_size: int | None = None, progress_for: Callable[[str], Progress | None] | None = None,
                   should_stop: ShouldStop | None = None, ray: str | None = None,
                   save_every: float = SAVE_EVERY_S, stats: list[DecodeStats] | None = None,
                   ) -> dict[str, VectorSet]:
    """:func:`vectorize` for several backbones, each image decoded once for all of them.

    Each backbone answers from its own cache where it can; the images missing from any of them are
    decoded once (:func:`simlab.vectors.decoders.choose_decoder`; with Pillow, once per JPEG draft
    scale) and fed to every backbone that misses them (:func:`simlab.vectors.embed.compute_many`),
    each keeping its finished batches as parts of its own set. ``progress_for(backbone)``: that
    backbone's progress report. ``stats``, when given, gets the decoding's :class:`DecodeStats`
    appended. On Ray, the backbones run one after another.
    """
    backbones = list(dict.fromkeys(backbones))
    progress_for = progress_for or (lambda _: None)
    address = ray_address(ray)
    decoder = DECODERS["pillow"] if address else choose_decoder()  # Ray's workers decode with Pillow
    plans = {b: _Plan(dataset, b, weights or default_weights(b), fit, decoder.name, save_every)
             for b in backbones}
    todo = [p for p in plans.values() if p.result is None and p.todo]
    if todo and address:
        from simlab.vectors.ray import ray_vectorize  # Ray is heavy: loaded only when asked for

        for p in todo:
            p.take(*ray_vectorize([dataset.paths[i] for i in p.todo], p.backbone, p.weights, fit, address=address,
                                  batch_size=batch_size, progress=progress_for(p.backbone), should_stop=should_stop))
    elif todo:
        jobs = [Job(p.backbone, p.weights, p.todo, progress_for(p.backbone), p.keeper.add) for p in todo]
        try:
            results, decoding = compute_many(dataset.paths, jobs, fit, batch_size, should_stop, decoder)
        except DiskFull:
            raise
        except BaseException:  # stopped, interrupted or failed: keep the finished batches, then go on failing
            for p in todo:
                p.keeper.flush_quietly()
            raise
        if stats is not None:
            stats.append(decoding)
        for p, (vecs, errors) in zip(todo, results):
            p.take(vecs, errors)
    out = {}
    for b, p in plans.items():
        if p.result is None and not p.todo:
            n = len(dataset.paths)
            report_progress(progress_for(b), n, n, b, 0.0, 0.0)
        out[b] = p.finish()
    return out


class _Plan:
    """One backbone's vectorisation of a dataset: the cached answer, or what is known, failed and to do."""

    def __init__(self, dataset: Dataset, backbone: str, weights: str, fit: str, decoder: str, save_every: float):
        self.dataset, self.backbone, self.weights = dataset, backbone, weights
        self.cache = VectorCache(backbone, weights, fit, decoder, dim=get_backbone(backbone).dim)
        self.result: VectorSet | None = None
        self.todo: list[int] = []
        if self.cache.has(dataset.fingerprint):
            try:
                self.result = _load_hit(self.cache.read(dataset.fingerprint), dataset, backbone, weights,
                                        self.cache.key)
                return
            except (FileNotFoundError, CorruptCache) as exc:  # gone since, or torn: a miss
                log.warning("Recomputing %s: %s", self.cache.path(dataset.fingerprint), exc)
        self.known = self.cache.bank(dataset.digests)
        self.bad = {d: e for d, e in self.cache.parts(dataset.fingerprint).bad.items() if d not in self.known}
        self.todo = [i for i, d in enumerate(dataset.digests) if d not in self.known and d not in self.bad]
        self.keeper = Keeper(self.cache, dataset.fingerprint, [dataset.digests[i] for i in self.todo],
                             len(dataset.paths), kept=sum(d in self.known for d in dataset.digests),
                             save_every=save_every)

    def take(self, vecs: np.ndarray, errors: list[str]) -> None:
        for i, v, err in zip(self.todo, vecs, errors):
            if not err and not np.isfinite(v).all():  # kept, it would spoil the set on every read
                err = "the backbone gave non-finite values (NaN or infinity)"
            if err:
                self.bad[self.dataset.digests[i]] = err
            else:
                self.known[self.dataset.digests[i]] = v

    def finish(self) -> VectorSet:
        if self.result is not None:
            return self.result
        ds = self.dataset
        result = _assemble(ds, self.backbone, self.weights, self.cache.key, self.known, self.bad,
                           computed=len(self.todo))
        with self.keeper.room(self.cache.path(ds.fingerprint)):
            self.cache.write(ds.fingerprint, result.vectors, result.digests, self.bad)
        return result


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


def common_images(sets: dict[str, VectorSet]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Paths and groups of the images every backbone vectorised, and each backbone's vectors for them."""
    first = next(iter(sets.values()))
    keep = set(first.digests).intersection(*(s.digests for s in sets.values()))
    idx = [i for i, d in enumerate(first.digests) if d in keep]
    digests = [first.digests[i] for i in idx]
    vectors = {}
    for name, s in sets.items():
        pos = {d: i for i, d in enumerate(s.digests)}
        vectors[name] = s.vectors[[pos[d] for d in digests]]
    return [first.paths[i] for i in idx], [first.groups[i] for i in idx], vectors
