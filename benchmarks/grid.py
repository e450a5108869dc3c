"""Wall time of a full grid on Holidays-sized data, with a per-classifier breakdown.

Every backbone is already vectorised: synthetic vectors with group structure (1,491 images in
500 groups, 2,072 positive pairs, like INRIA Holidays) for five backbones (512, 4096 and three
2048-d sets) are written to the vector cache of an isolated benchmark cache; then
``simlab.experiment.run_grid`` itself runs every merge (dot, l1, l2) with every classifier of the
registry, writing runs and predictions to that cache's store (pages.py reads it afterwards).

    .venv/bin/python benchmarks/grid.py [--classifiers a,b] [--merges dot,l1] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root first; and not this folder, which Python puts first and whose script names
# (pages, grid, ...) would shadow the app's own modules.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from benchmarks._common import (  # noqa: E402
    GRID_BACKBONES,
    emit,
    log,
    machine,
    prepare_grid_vectors,
    table,
    use_bench_cache,
    verdict,
)

GOAL_S = 300.0


def run(classifiers: list[str] | None = None, merges: list[str] | None = None,
        backbones: list[str] | None = None, fresh_store: bool = True) -> dict:
    cache = use_bench_cache()
    # simlab sets OMP_WAIT_POLICY before scikit-learn loads the OpenMP runtime; a scikit-learn
    # imported earlier would make that a no-op (and XGBoost's threads spin)
    openmp_policy_applies = "sklearn" not in sys.modules and "xgboost" not in sys.modules
    from simlab.classifiers import CLASSIFIERS
    from simlab.experiment import GridConfig, grid_workers, run_grid
    from simlab.store import Store

    t_prep = time.perf_counter()
    spec, dims = prepare_grid_vectors()
    t_prep = time.perf_counter() - t_prep
    db = cache / "simlab.db"
    if fresh_store:  # the benchmark's own store: one grid in it, not one per run of this script
        for f in cache.glob("simlab.db*"):
            f.unlink()
    config = GridConfig(dataset=spec, backbones=backbones or list(GRID_BACKBONES), weights="random",
                        classifiers=classifiers or list(CLASSIFIERS))
    config.merges = merges or config.merges  # the declared default merges (simlab.options)
    n_cells = len(config.cells())
    log(f"grid benchmark: {n_cells} cells ({len(config.backbones)} backbones x {len(config.merges)} merges x "
        f"{len(config.classifiers)} classifiers) on {spec}")
    cells = []
    setup: list[float] = []  # wall and CPU time when the first cells started training (run_grid's first "train")

    def progress(done, total, message="", **fields):
        if fields.get("stage") == "train" and not setup:
            setup.extend([time.perf_counter() - start, time.process_time() - cpu_start])

    start, cpu_start = time.perf_counter(), time.process_time()
    for summary in run_grid(config, store=Store(db), progress=progress):
        # each cell's own wall time (merge, fit, predict): cells overlap, so these add up to more than the total
        cells.append({"backbone": summary["backbone"], "dim": dims[summary["backbone"]], "merge": summary["merge"],
                      "classifier": summary["classifier"], "wall_s": summary["seconds"],
                      "accuracy": round(summary["accuracy"], 4)})
        log(f"  {len(cells)}/{n_cells} {summary['backbone']:12s} {summary['merge']:4s} {summary['classifier']:8s} "
            f"{summary['seconds']:6.2f} s  acc {summary['accuracy']:.3f}")
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    by_clf, cell_sum = [], sum(c["wall_s"] for c in cells) or 1.0
    for name in config.classifiers:
        mine = [c for c in cells if c["classifier"] == name]
        walls = [c["wall_s"] for c in mine]
        by_clf.append({"classifier": name, "cells": len(mine), "total_s": round(sum(walls), 2),
                       "mean_s": round(sum(walls) / len(walls), 2), "max_s": round(max(walls), 2),
                       "share": f"{100 * sum(walls) / cell_sum:.0f}%",
                       "mean_acc": round(sum(c["accuracy"] for c in mine) / len(mine), 3)})
    return {"benchmark": "grid", "dataset": spec, "cells": n_cells, "total_s": round(total, 2),
            "cpu_s": round(total_cpu, 1), "workers": grid_workers(),
            "backbones": {b: dims[b] for b in config.backbones},
            "setup_s": round(setup[0], 2) if setup else None, "setup_cpu_s": round(setup[1], 2) if setup else None,
            "prepare_vectors_s": round(t_prep, 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "openmp_policy_applies": openmp_policy_applies, "store": str(db), "by_classifier": by_clf, "runs": cells,
            "goal_s": GOAL_S, "goal_met": total < GOAL_S, "machine": machine()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifiers", default=None, help="comma-separated (default: every one in the registry)")
    ap.add_argument("--merges", default=None, help="comma-separated (default: the grid's, dot,l1,l2)")
    ap.add_argument("--backbones", default=None, help=f"comma-separated subset of {','.join(GRID_BACKBONES)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    split = lambda s: s.split(",") if s else None  # noqa: E731
    out = run(split(args.classifiers), split(args.merges), split(args.backbones))
    text = (f"Grid: {out['cells']} runs on Holidays-sized synthetic vectors "
            f"({', '.join(f'{b} {d}-d' for b, d in out['backbones'].items())}), "
            f"{out['machine']['device']}, load {out['machine'].get('load_avg')}\n\n"
            + table(out["by_classifier"], floatfmt="{:.2f}")
            + f"\n\nsetup (vectors from cache, pairs, mAP): {out['setup_s']} s (cpu {out['setup_cpu_s']} s)"
            + f"\ncells' own times add up to {sum(c['wall_s'] for c in out['runs']):.1f} s; "
            f"{out['workers']} cells train at once"
            + f"\ntotal wall time: {out['total_s']:.1f} s, cpu time (this process, all threads): {out['cpu_s']:.0f} s"
            + f"\ngoal < {GOAL_S:.0f} s wall: {verdict(out['goal_met'])}")
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
