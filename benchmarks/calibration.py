"""Are P(same) honest on held-out scenes? Raw classifier scores against simlab's calibrated ones, per cell.

    .venv/bin/python benchmarks/calibration.py --dataset folder:../shared/evalsets/realworld [--json]

For each merge x classifier (one backbone), the run is fitted as the grid fits it (simlab.fitting.fit_run: the
protocol's group split, validation scenes carved from the training scenes, calibration fitted there) and its
test pairs are scored twice: the classifier's raw P(same) and the calibrated one. Printed per cell: test
accuracy at the run's threshold, ECE and Brier score of both, and the highest P(same) any of ``--strangers``
generated pictures (scenes in no dataset) gets against the dataset's images, raw and calibrated. Nothing here
chooses a setting: the calibration is fitted on validation scenes only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def stripes(seed: int, size: int = 320):
    """A picture of no scene: smooth stripes of two random colours (as the tests' strangers)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1000 + seed)
    x = np.linspace(0, rng.uniform(2, 12) * np.pi, size)
    s = (np.sin(x)[None, :] * np.cos(x * rng.uniform(0.2, 2))[:, None] + 1) / 2
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return Image.fromarray((s[..., None] * a + (1 - s[..., None]) * b).astype(np.uint8))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="demo")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--merges", nargs="+", default=["dot", "l1", "concat"])
    p.add_argument("--classifiers", nargs="+", default=["cosine", "logreg", "xgboost", "mlp"])
    p.add_argument("--strangers", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import tempfile

    import numpy as np

    from benchmarks._common import use_bench_cache
    from simlab.data import load_dataset
    from simlab.evaluate import pair_metrics, reliability
    from simlab.fitting import cosines, fit_run
    from simlab.merge import merge_pairs
    from simlab.runspec import RunSpec
    from simlab.vectors import compute_vectors, vectorize

    use_bench_cache()
    dataset = load_dataset(args.dataset)
    vs = vectorize(dataset, args.backbone, "imagenet")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.strangers):
            paths.append(str(Path(tmp) / f"s{i}.png"))
            stripes(i).save(paths[-1])
        strangers, _ = compute_vectors(paths, args.backbone, "imagenet")
    both = np.vstack([strangers, vs.vectors])
    n = len(strangers)
    left, right = np.repeat(np.arange(n), len(vs.vectors)), n + np.tile(np.arange(len(vs.vectors)), n)
    rows = []
    for merge in args.merges:
        for clf in args.classifiers:
            if clf == "cosine" and merge != "dot":
                continue
            spec = RunSpec(args.backbone, merge, clf, dataset=dataset.spec)
            cell = fit_run(spec, vs.vectors, vs.groups)
            test = spec.protocol.pairs(vs.groups).test_pairs
            raw = cell.model.predict_proba(merge_pairs(vs.vectors, test.left, test.right, merge))[:, 1]
            raw_rel, cal_rel = reliability(test.label, raw), reliability(test.label, cell.test_prob)
            strange_raw = cell.model.predict_proba(merge_pairs(both, left, right, merge))[:, 1]
            strange_cal = cell.probability(strange_raw, cosines(both, left, right))
            rows.append({"merge": merge, "classifier": clf, "n_test": len(test), "threshold": cell.threshold,
                         "accuracy": pair_metrics(test.label, cell.test_prob, cell.threshold)["accuracy"],
                         "ece_raw": raw_rel.ece, "ece": cal_rel.ece, "brier_raw": raw_rel.brier,
                         "brier": cal_rel.brier, "stranger_max_raw": float(strange_raw.max()),
                         "stranger_max": float(strange_cal.max())})
    if args.json:
        print(json.dumps({"dataset": dataset.spec, "backbone": args.backbone, "cells": rows}, indent=1))
        return 0
    print(f"{dataset.spec} · {args.backbone} · {rows[0]['n_test'] if rows else 0} test pairs · "
          f"{args.strangers} strangers x {len(vs.vectors)} images")
    head = ["merge", "classifier", "accuracy", "ece_raw", "ece", "brier_raw", "brier", "stranger_max_raw",
            "stranger_max"]
    print("  ".join(f"{h:>16}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>16.3f}" if isinstance(r[h], float) else f"{r[h]:>16}" for h in head))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
