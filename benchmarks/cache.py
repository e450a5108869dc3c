"""The vector cache: how fast a Holidays-sized cached set loads and a repeated vectorize answers.

A Holidays-shaped dataset (1,491 tiny JPEGs in 500 groups) and a 1,491 x 2,048 float32 vector
set written for its fingerprint, in an isolated benchmark cache. Timed in-process (process
start-up excluded), median and worst of ``--repeat`` calls:

- ``read cached file``: the cached ``.npz`` read and checked (``simlab.vectors.cache.read_path``);
- ``vectorize (dataset in memory)``: ``vectorize(ds, backbone)`` answered from the cache;
- ``load_dataset + vectorize``: a repeated request from the spec alone (what a job does);
- ``cached_sets()``: the listing the Vectorize page shows.

    .venv/bin/python benchmarks/cache.py [--repeat 20] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root first; and not this folder, which Python puts first and whose script names
# (pages, grid, ...) would shadow the app's own modules.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import time  # noqa: E402

from benchmarks._common import (  # noqa: E402
    emit,
    log,
    machine,
    make_holidays,
    median,
    synthetic_vectors,
    table,
    use_bench_cache,
    verdict,
    write_vector_cache,
)

BACKBONE, WEIGHTS, DIM = "resnet50", "random", 2048
GOAL_LOAD_S = 0.1
GOAL_REPEAT_S = 1.0


def _times(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    use_bench_cache("cache-bench")  # not the grid's: its resnet50 set is another one
    from simlab.data import load_dataset
    from simlab.vectors import cached_sets, vectorize
    from simlab.vectors.cache import read_path

    spec = f"holidays:{make_holidays()}"
    t0 = time.perf_counter()
    ds = load_dataset(spec)
    first_load = time.perf_counter() - t0
    target = write_vector_cache(ds, BACKBONE, WEIGHTS, synthetic_vectors(ds.groups, DIM, noise=1.0, seed=0))
    log(f"cache benchmark: {ds.n_images} images, {DIM}-d, {target.stat().st_size / 2**20:.1f} MB at {target}")

    def read_file():
        return read_path(target)

    def repeat_vectorize():
        vs = vectorize(ds, BACKBONE, WEIGHTS)
        assert vs.computed == 0 and vs.vectors.shape == (ds.n_images, DIM)

    def from_spec():
        vs = vectorize(load_dataset(spec), BACKBONE, WEIGHTS)
        assert vs.computed == 0

    checks = [("read cached file", read_file, GOAL_LOAD_S),
              ("vectorize (dataset in memory)", repeat_vectorize, GOAL_REPEAT_S),
              ("load_dataset + vectorize", from_spec, GOAL_REPEAT_S),
              ("cached_sets()", cached_sets, None)]
    for _, fn, _ in checks:  # warm: imports, OS file cache, the datasets memo
        fn()
    rows = []
    for name, fn, goal in checks:
        ts = _times(fn, args.repeat)
        rows.append({"step": name, "median_s": round(median(ts), 4), "max_s": round(max(ts), 4),
                     "goal_s": goal if goal is not None else "-",
                     "verdict": verdict(max(ts) < goal) if goal is not None else "-"})
    out = {"benchmark": "cache", "images": ds.n_images, "dim": DIM, "file_mb": round(target.stat().st_size / 2**20, 2),
           "first_load_dataset_s": round(first_load, 3), "repeat": args.repeat, "steps": rows,
           "goals": {"load<0.1s": rows[0]["max_s"] < GOAL_LOAD_S, "repeat<1s": rows[2]["max_s"] < GOAL_REPEAT_S},
           "machine": machine()}
    text = (f"Vector cache: {ds.n_images} x {DIM} float32 ({out['file_mb']} MB), {args.repeat} calls each, "
            f"in-process ({out['machine']['device']}, load {out['machine'].get('load_avg')})\n\n"
            + table(rows, floatfmt="{:.4f}"))
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
