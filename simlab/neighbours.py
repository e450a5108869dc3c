"""Nearest neighbours by cosine similarity with FAISS: the one index every search, neighbour list and
hard-negative miner goes through.

>>> index = build_index(vectors, kind="auto", cache_key=(vs.key, dataset.fingerprint))
>>> scores, ids = index.search(query_vectors, k=10)     # cosine similarities, row numbers

Vectors are L2-normalised, so the inner product is the cosine. ``kind="auto"`` is an exact flat index
up to :data:`FLAT_MAX` vectors, then IVF (inverted lists, ``nprobe`` lists searched), then IVF-PQ
(compressed) beyond :data:`IVF_MAX`; ``hnsw`` (a graph) is available on request. A built index is
cached under ``cache/index/<vector set key>/`` keyed by the dataset fingerprint, the kind and the
count, and written atomically. FAISS is imported inside the functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simlab.paths import atomic_path, cache_dir
from simlab.progress import Progress, silent

log = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
FLAT_MAX = 100_000  # exact search up to here (a flat scan of 100k x 1280 floats is ~10 ms a query)
IVF_MAX = 2_000_000  # IVF with full vectors up to here; IVF-PQ (compressed) above
HNSW_M = 32
INDEX_VERSION = "1"  # bump when the way an index is built changes: it keys the cache


def normalised(vectors) -> np.ndarray:
    """float32, C-contiguous, rows of unit L2 norm (zero rows stay zero): what FAISS inner products need."""
    import faiss

    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if x.ndim == 1:
        x = x[None, :]
    faiss.normalize_L2(x)
    return x


# --------------------------------------------------------------------------- the index


def choose_kind(n: int, kind: str = "auto") -> str:
    """The index kind for ``n`` vectors: ``kind`` itself unless it is ``auto``."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if n <= FLAT_MAX else "ivf" if n <= IVF_MAX else "ivfpq"


def ivf_lists(n: int) -> int:
    """Number of inverted lists: about sqrt(n) (1,000 for a million), at least 39 training vectors each.

    FAISS suggests 4-16 sqrt(n); sqrt(n) keeps the k-means training affordable on a few cores.
    """
    return int(max(1, min(np.sqrt(n), n // 39)))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: a tenth of them (at least 16): recall@10 ~0.95+ on embedding-like data."""
    return int(min(nlist, max(16, nlist // 10)))


def _pq_subquantizers(dim: int) -> int:
    """The largest m <= 64 dividing dim (PQ needs dim % m == 0)."""
    return next(m for m in range(min(64, dim), 0, -1) if dim % m == 0)


@dataclass
class VectorIndex:
    """A FAISS index over L2-normalised vectors; ids are row numbers of the vector set."""

    index: object
    kind: str
    n: int
    dim: int
    path: Path | None = None
    from_cache: bool = False
    build_seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row: cosine similarity, highest first; ids of -1 pad short lists."""
        k = max(1, min(int(k), self.n))
        scores, ids = self.index.search(normalised(queries), k)
        return scores, ids

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Speed / recall trade-off: lists searched (IVF) or candidate list size (HNSW)."""
        if nprobe is not None and hasattr(self.index, "nprobe"):
            self.index.nprobe = int(nprobe)
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None and hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)


def _add_in_chunks(index, vectors, chunk: int = 65_536) -> None:
    """Add rows normalised a chunk at a time: memory stays at the vectors plus the index's own copy."""
    for start in range(0, len(vectors), chunk):
        index.add(normalised(vectors[start:start + chunk]))


def _new_index(vectors, kind: str, seed: int = 0):
    import faiss

    n, dim = np.shape(vectors)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        _add_in_chunks(index, vectors)
        return index, {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, ip)
        index.hnsw.efConstruction = 40
        _add_in_chunks(index, vectors)
        index.hnsw.efSearch = 128
        return index, {"M": HNSW_M, "ef_construction": 40, "ef_search": 128}
    nlist = ivf_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        params = {"nlist": nlist}
    else:
        m = _pq_subquantizers(dim)
        nbits = 8 if n >= 39 * 256 else max(1, min(8, int(np.log2(max(2, n // 39)))))  # 2^nbits codes to train
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, ip)
        params = {"nlist": nlist, "m": m, "nbits": nbits}
    index.cp.seed = seed
    index.cp.niter = 10
    sample = min(n, 40 * nlist if kind == "ivf" else max(40 * nlist, 39 * 256))  # FAISS wants >= 39 per list
    rows = np.arange(n) if sample >= n else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    index.train(normalised(np.asarray(vectors)[rows]))
    _add_in_chunks(index, vectors)
    index.nprobe = default_nprobe(nlist)
    params["nprobe"] = index.nprobe
    return index, params


def index_path(set_key: str, fingerprint: str, kind: str, n: int) -> Path:
    """Where the index of a vector set (backbone config key, dataset fingerprint) is cached."""
    return cache_dir("index", set_key) / f"{fingerprint}-{kind}-{n}-v{INDEX_VERSION}.faiss"


def build_index(vectors, kind: str = "auto", cache_key: tuple[str, str] | None = None,
                progress: Progress = silent) -> VectorIndex:
    """A FAISS index over ``vectors`` (N, D); cached on disk when ``cache_key=(set_key, fingerprint)``.

    A second call with the same key and kind loads the file instead of building.
    """
    import faiss

    n, dim = np.shape(vectors)
    if n == 0:
        raise ValueError("No vectors to index: vectorise the dataset first.")
    kind = choose_kind(n, kind)
    path = index_path(*cache_key, kind, n) if cache_key else None
    if path is not None and path.exists():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == n and index.d == dim:
                out = VectorIndex(index, kind, n, dim, path, from_cache=True, params=_params_of(index))
                return out
        except RuntimeError as exc:  # unreadable: build again and overwrite
            log.warning("Rebuilding the unreadable index %s: %s", path, exc)
    progress(0, 1, f"Building the {kind} index of {n} vectors", stage="index")
    t0 = time.perf_counter()
    index, params = _new_index(vectors, kind)
    seconds = time.perf_counter() - t0
    if path is not None:
        with atomic_path(path, suffix=".faiss") as tmp:
            faiss.write_index(index, str(tmp))
    return VectorIndex(index, kind, n, dim, path, from_cache=False, build_seconds=seconds, params=params)


def _params_of(index) -> dict:
    out = {}
    if hasattr(index, "nlist"):
        out["nlist"] = int(index.nlist)
        out["nprobe"] = int(index.nprobe)
    if hasattr(index, "hnsw"):
        out["ef_search"] = int(index.hnsw.efSearch)
    return out
