"""Benchmark of simlab's FAISS indexes: build time, queries per second and recall@10 against exact search.

    python benchmarks/search.py                 # 1,000,000 synthetic 1,280-d float32 vectors (~5 GB)
    python benchmarks/search.py --n 200000 --json

The vectors are synthetic but shaped like image embeddings (see ``synthetic``): scenes with views
around them in a low-dimensional subspace, L2-normalised. Queries are fresh views of random scenes
(not in the index). ``--npz FILE`` benchmarks real vectors instead (``python -m simlab vectorize
--out FILE``), with 500 of them held out as queries. The exact
top-10 comes from the flat index, which is also the first row. Each index is built by
``simlab.search.build_index`` (as the app does, without the disk cache) and freed before the next.
Peak memory is about twice the vectors (the vectors plus one index's copy of them).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simlab.search import build_index, normalised  # noqa: E402

DIM = 1280
K = 10


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0, per_scene: int = 20,
              latent: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries), float32, L2-normalised, built in chunks.

    Shaped like CNN embeddings rather than isotropic noise: scene centres live in a ``latent``-d
    subspace (embeddings have a low intrinsic dimension), and each view is its scene's centre
    plus a view-specific offset (cosine to the centre about 0.8) and a little full-rank noise.
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    scenes = max(1, n // per_scene)
    centres = rng.standard_normal((scenes, latent), dtype=np.float32)

    def views(m: int) -> np.ndarray:
        z = centres[rng.integers(0, scenes, m)] + 0.7 * rng.standard_normal((m, latent), dtype=np.float32)
        return z @ basis + 0.15 * rng.standard_normal((m, dim), dtype=np.float32)

    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        out[start:start + m] = views(m)
    return normalised_inplace(out), normalised(views(n_queries))


def normalised_inplace(x: np.ndarray) -> np.ndarray:
    import faiss

    faiss.normalize_L2(x)
    return x


def timed_queries(index, queries: np.ndarray, truth: np.ndarray | None,
                  min_seconds: float) -> tuple[float, float, np.ndarray]:
    """(queries per second, recall@10, ids): every query once, repeated until min_seconds have passed."""
    index.search(queries[:10], K)  # warm up
    done, t0, ids_all = 0, time.perf_counter(), []
    while True:
        batch = queries[done % len(queries):][:100]
        _, ids = index.search(batch, K)
        if done < len(queries):
            ids_all.append(ids)
        done += len(batch)
        if done >= len(queries) and time.perf_counter() - t0 >= min_seconds:
            break
    qps = done / (time.perf_counter() - t0)
    ids = np.concatenate(ids_all)[: len(queries)]
    recall = 1.0 if truth is None else float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth)]))
    return qps, recall, ids


def measure(x: np.ndarray, queries: np.ndarray, kind: str, truth: np.ndarray | None,
            min_seconds: float = 2.0) -> tuple[list[dict], np.ndarray]:
    """Rows for one index kind (IVF: one per nprobe tried, the default marked) and the first row's ids."""
    t0 = time.perf_counter()
    index = build_index(x, kind)
    build = time.perf_counter() - t0
    settings, knob = [None], None  # the default first, then a faster and a more exact setting
    if kind in ("ivf", "ivfpq"):
        nlist, default, knob = index.params["nlist"], index.params["nprobe"], "nprobe"
        settings = [default] + sorted({max(1, nlist // 32), min(nlist, nlist // 4)} - {default})
    elif kind == "hnsw":
        default, knob = index.params["ef_search"], "ef_search"
        settings = [default] + sorted({default // 2, default * 4} - {default})
    rows, first_ids = [], None
    for value in settings:
        if knob:
            index.set_search_params(**{knob: value})
        qps, recall, ids = timed_queries(index, queries, truth, min_seconds)
        first_ids = ids if first_ids is None else first_ids
        params = dict(index.params)
        if knob:
            params["default"] = value == settings[0]
        rows.append({"index": kind, "n": len(x), "build_s": round(build, 2), "qps": round(qps, 1),
                     "recall@10": round(recall, 4), **params})
    del index
    gc.collect()
    return rows, first_ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the index (default 1,000,000)")
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--queries", type=int, default=500, help="query vectors (not in the index), default 500")
    p.add_argument("--hnsw-n", type=int, default=100_000,
                   help="HNSW is built on the first this many vectors only (default 100,000): its build is "
                        "~O(n log n) graph insertions, about an hour per million 1,280-d vectors on 2 cores")
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--npz", help="real vectors (a vectorize --out file) instead of synthetic ones")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    import faiss

    def log(*a):
        print(*a, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    if args.npz:
        with np.load(args.npz) as z:
            allv = normalised(z["vectors"])
        held = np.random.default_rng(0).permutation(len(allv))
        queries, x = allv[held[: args.queries]], allv[np.sort(held[args.queries:])]
        args.n, args.dim = x.shape
    else:
        log(f"generating {args.n:,} x {args.dim} float32 vectors ({args.n * args.dim * 4 / 2**30:.1f} GiB)")
        x, queries = synthetic(args.n, args.dim, args.queries)
    gb = args.n * args.dim * 4 / 2**30
    log(f"  {args.n:,} vectors ready in {time.perf_counter() - t0:.0f} s; faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads")
    rows, truth = [], None
    full = [k for k in args.kinds if k != "hnsw" or args.hnsw_n >= len(x)]
    kinds = (["flat"] if full else []) + [k for k in args.kinds if k != "flat"]  # the exact answer first
    for kind in kinds:
        log(f"{kind}: building and querying…")
        if kind == "hnsw" and args.hnsw_n < len(x):  # a subset, against the exact answer on that subset
            sub = x[: args.hnsw_n]
            _, sub_truth = measure(sub, queries, "flat", None, min_seconds=0)
            new, _ = measure(sub, queries, kind, sub_truth)
        else:
            new, ids = measure(x, queries, kind, truth)
            if kind == "flat":
                truth = ids
        if kind in args.kinds:
            rows.extend(new)
        for row in new:
            log(f"  {row}")
    result = {"data": args.npz or "synthetic", "n": args.n, "dim": args.dim, "queries": len(queries), "k": K,
              "vectors_gib": round(gb, 2),
              "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "rows": rows}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.n:,} {'synthetic ' if not args.npz else ''}vectors x {args.dim} (float32, {gb:.1f} GiB), "
              f"{len(queries)} queries, "
              f"recall@{K} against exact search, {result['threads']} threads")
        cols = ["index", "n", "build_s", "qps", "recall@10", "params"]
        table = [{**{c: f"{r[c]:,}" if c == "n" else r[c] for c in cols[:-1]},
                  "params": ", ".join(f"{k}={v}" + (" (default)" if k in ("nprobe", "ef_search") and r.get("default")
                                                     else "")
                                      for k, v in r.items() if k not in cols + ["default"])} for r in rows]
        widths = {c: max(len(c), *(len(str(t[c])) for t in table)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for t in table:
            print("  ".join(str(t[c]).ljust(widths[c]) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
