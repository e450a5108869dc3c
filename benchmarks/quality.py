"""How good each backbone's vectors are on one dataset, and what they cost: one row per backbone.

For every backbone whose weights are here (bundled, weight-free or cached; ``--backbones`` to choose),
on a dataset spec (default ``demo``), with simlab's own functions:

- ``auc_all``: ROC AUC of cosine similarity over every pair of images (same group or not), no training;
- ``map_all``: retrieval mAP over all images, every image a query ranking all the others by cosine similarity
  (groups of one image have nothing to find and are left out); ``p_at_1``: how often a query's nearest other
  image is of its group;
- ``cosine_auc``: ROC AUC of the grid's ``dot + cosine`` cell (one similarity threshold, no training)
  on the test pairs; ``cosine_acc`` its accuracy;
- ``map_test``: retrieval mAP of the vectors on the test scenes (``Protocol.test_images``: each held-out
  scene's query ranks the other held-out images), as fine-tuning reports it;
- the best grid cell (merge x classifier) from ``simlab.experiment.run_grid`` over ``--merges`` x
  ``--classifiers`` on a group split, chosen as simlab chooses a threshold: on validation scenes carved
  from the training scenes (``val_acc``: its accuracy there at its best threshold; ties: higher validation
  AUC), never on the test pairs; then its test accuracy with its 95% bootstrap interval;
- ``img_s``: vectorising speed, simlab's own rate (decode + forward pass, after the model is built)
  over ``--speed-images`` images vectorised into a scratch vector cache (0: not measured).

The dataset's vectors come from (and go to) the normal vector cache; grid runs go to a throw-away
store, so the user's run list is never touched.

    .venv/bin/python benchmarks/quality.py [--dataset demo] [--backbone a b] [--merges ...]
        [--classifiers ...] [--speed-images 256] [--json]
    .venv/bin/python benchmarks/quality.py --dataset folder:../shared/evalsets/realworld \
        --backbone efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 phash --json
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root first; and not this folder, whose script names would shadow the app's modules.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks._common import emit, log, machine, table  # noqa: E402

COLUMNS = ["backbone", "weights", "dim", "auc_all", "map_all", "p_at_1", "cosine_auc", "map_test", "best_cell",
           "val_acc", "best_acc", "best_ci", "img_s", "grid_s"]


def present_backbones() -> list[str]:
    """Backbones that run here without a download: bundled, weight-free or cached (tuned towers left out)."""
    from simlab.backbones import list_backbones, weights_status

    return [b.name for b in list_backbones()
            if not b.options.get("tuned") and weights_status(b.name) in ("bundled", "cached")]


@contextlib.contextmanager
def scratch_cache():
    """A temporary simlab cache that shares the real one's converted weights (so no weights are
    converted or fetched again) but has an empty vector cache: every image is computed."""
    from simlab.paths import cache_dir

    weights = cache_dir("weights")
    old = os.environ.get("SIMLAB_CACHE")
    with tempfile.TemporaryDirectory(prefix="simlab-quality-") as tmp:
        (Path(tmp) / "weights").symlink_to(weights, target_is_directory=True)
        os.environ["SIMLAB_CACHE"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("SIMLAB_CACHE", None)
            else:
                os.environ["SIMLAB_CACHE"] = old


def speed(dataset, backbone: str, weights: str, n: int) -> dict:
    """simlab's vectorising rate (img/s) over the first ``n`` images, all computed (scratch vector cache)."""
    from simlab.vectors import vectorize

    n = min(n, dataset.n_images)
    subset = dataclasses.replace(dataset, paths=dataset.paths[:n], groups=dataset.groups[:n],
                                 digests=dataset.digests[:n], problems=[], queries=None,
                                 fingerprint=f"{dataset.fingerprint}-first{n}")
    rates: list[float] = []

    def progress(done, total, message="", **fields):
        if fields.get("rate"):
            rates.append(float(fields["rate"]))

    with scratch_cache():
        t0 = time.perf_counter()
        vs = vectorize(subset, backbone, weights, progress=progress)
        wall = time.perf_counter() - t0
    return {"img_s": round(rates[-1], 2) if rates else None, "speed_images": vs.computed,
            "speed_wall_s": round(wall, 2)}


def all_pairs_auc(vectors, groups) -> float:
    """ROC AUC of cosine similarity over every pair of images: same group (1) against different (0)."""
    from sklearn.metrics import roc_auc_score

    from simlab.merge import l2_normalise

    v = l2_normalise(np.asarray(vectors, np.float32))
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    i, j = np.triu_indices(len(v), k=1)
    same = codes[i] == codes[j]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, np.einsum("nd,nd->n", v[i], v[j])))


def retrieval_all(vectors, groups) -> dict:
    """Every image a query over all the others (cosine): mAP (simlab's ``retrieval_map``) and P@1."""
    from simlab.evaluate import retrieval_map
    from simlab.merge import l2_normalise

    groups = np.asarray(groups)
    v = l2_normalise(np.asarray(vectors, np.float32))
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    codes = np.unique(groups, return_inverse=True)[1]
    has_mate = np.bincount(codes)[codes] > 1
    hit = codes[np.argmax(sims, axis=1)] == codes
    return {"map_all": retrieval_map(v, groups, queries=np.arange(len(v))),
            "p_at_1": float(hit[has_mate].mean()) if has_mate.any() else float("nan")}


def validation_scores(config, vectors, groups) -> dict:
    """Each (merge, classifier) cell's (accuracy, ROC AUC) on the validation scenes simlab chooses a run's
    threshold on (``validation_pairs``): fitted on the rest of the training scenes, scored at the threshold
    best there. Empty when the training scenes are too few to carve validation scenes from."""
    from sklearn.metrics import roc_auc_score

    from simlab.evaluate import best_threshold
    from simlab.fitting import fit_classifier
    from simlab.merge import merge_pairs
    from simlab.protocol import validation_pairs

    protocol = config.protocol
    validation = validation_pairs(protocol, protocol.pairs(groups), groups, vectors)
    if validation is None:
        return {}
    inner, val = validation.train_pairs, validation.test_pairs
    scores = {}
    for merge in config.merges:
        X_inner = merge_pairs(vectors, inner.left, inner.right, merge)
        X_val = merge_pairs(vectors, val.left, val.right, merge)
        for clf in config.classifiers:
            prob = fit_classifier(clf, X_inner, inner.label, config.seed).predict_proba(X_val)[:, 1]
            threshold = best_threshold(val.label, prob)
            scores[merge, clf] = (float(np.mean((prob >= threshold) == (val.label == 1))),
                                  float(roc_auc_score(val.label, prob)))
    return scores


def best_cell(cells: list[dict], val: dict | None = None) -> dict:
    """The cell with the highest validation accuracy (ties: the higher validation AUC, then the first); without
    validation scores, the highest test accuracy (ties: the higher test AUC)."""
    if val:
        return max(cells, key=lambda c: tuple(round(x, 12) for x in val[c["merge"], c["classifier"]]))
    return max(cells, key=lambda c: (round(c["accuracy"], 12), round(c["auc"], 12)))


def measure(spec: str, backbone: str, merges: list[str], classifiers: list[str], weights: str | None,
            speed_images: int, seed: int, store) -> dict:
    """One backbone's row: its grid on ``spec``, mAP on the test scenes, cosine AUC and speed."""
    from simlab.backbones import get_backbone, weights_status
    from simlab.data import load_dataset
    from simlab.evaluate import retrieval_map_on
    from simlab.experiment import GridConfig, run_grid
    from simlab.vectors import default_weights, vectorize

    weights = weights or default_weights(backbone)
    dataset = load_dataset(spec)
    t0 = time.perf_counter()
    vs = vectorize(dataset, backbone, weights)
    log(f"{backbone}: {len(vs.vectors)} vectors ({vs.computed} computed) in {time.perf_counter() - t0:.1f} s")
    config = GridConfig(dataset=spec, backbones=[backbone], merges=merges, classifiers=classifiers,
                        weights=weights, seed=seed).validate()
    t0 = time.perf_counter()
    cells = []
    for summary in run_grid(config, store=store):
        cells.append(summary)
        log(f"  {backbone} {summary['merge']:6s} {summary['classifier']:8s} acc {summary['accuracy']:.3f} "
            f"[{summary['accuracy_lo']:.3f}, {summary['accuracy_hi']:.3f}] auc {summary['auc']:.3f}")
    grid_s = time.perf_counter() - t0
    cosine = next(c for c in cells if (c["merge"], c["classifier"]) == ("dot", "cosine"))
    val = validation_scores(config, vs.vectors, vs.groups)
    best = best_cell(cells, val)
    map_test = retrieval_map_on(vs.vectors, vs.groups, config.protocol.test_images(vs.groups))
    retrieval = retrieval_all(vs.vectors, vs.groups)
    row = {"backbone": backbone, "weights": weights, "status": weights_status(backbone),
           "dim": int(vs.vectors.shape[1]), "images": len(vs.vectors), "groups": len(set(vs.groups)),
           "auc_all": round(all_pairs_auc(vs.vectors, vs.groups), 4), "map_all": round(retrieval["map_all"], 4),
           "p_at_1": round(retrieval["p_at_1"], 4), "map_queries": round(cosine["map"], 4),
           "cosine_auc": round(cosine["auc"], 4), "cosine_acc": round(cosine["accuracy"], 4),
           "map_test": round(map_test, 4), "chosen_on": "validation" if val else "test",
           "val_acc": round(val[best["merge"], best["classifier"]][0], 4) if val else None,
           "best_cell": f"{best['merge']} + {best['classifier']}", "best_merge": best["merge"],
           "best_classifier": best["classifier"], "best_acc": round(best["accuracy"], 4),
           "best_lo": round(best["accuracy_lo"], 4), "best_hi": round(best["accuracy_hi"], 4),
           "best_ci": f"[{best['accuracy_lo']:.3f}, {best['accuracy_hi']:.3f}]", "best_auc": round(best["auc"], 4),
           "n_test": best["n_test"], "cells": len(cells), "grid_s": round(grid_s, 1),
           "input_size": get_backbone(backbone).input_size}
    if speed_images > 0:
        row |= speed(dataset, backbone, weights, speed_images)
    return row


def run(spec: str = "demo", backbones: list[str] | None = None, merges: list[str] | None = None,
        classifiers: list[str] | None = None, weights: str | None = None, speed_images: int = 256,
        seed: int = 0) -> dict:
    from simlab.classifiers import CLASSIFIERS
    from simlab.merge import MERGES
    from simlab.store import Store

    backbones = backbones or present_backbones()
    merges = list(dict.fromkeys(["dot", *(merges or MERGES)]))  # dot + cosine: the baseline every row reports
    classifiers = list(dict.fromkeys(["cosine", *(classifiers or CLASSIFIERS)]))
    log(f"quality: {', '.join(backbones)} on {spec}: {len(merges)} merges x {len(classifiers)} classifiers each")
    rows = []
    with tempfile.TemporaryDirectory(prefix="simlab-quality-store-") as tmp:
        store = Store(Path(tmp) / "simlab.db")
        for name in backbones:
            rows.append(measure(spec, name, merges, classifiers, weights, speed_images, seed, store))
    base = next((r for r in rows if r["backbone"] == "efficientnet_lite0"), None)
    for r in rows:  # cost relative to Lite0, the default backbone's time per image
        if base and r.get("img_s") and base.get("img_s"):
            r["time_vs_lite0"] = round(base["img_s"] / r["img_s"], 2)
    return {"benchmark": "quality", "dataset": spec, "merges": merges, "classifiers": classifiers, "seed": seed,
            "speed_images": speed_images, "rows": rows, "machine": machine()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="demo", help="dataset spec (default demo)")
    ap.add_argument("--backbone", "--backbones", dest="backbones", nargs="+", default=None,
                    help="backbone names (default: every one whose weights are here, tuned towers left out)")
    ap.add_argument("--merges", nargs="+", default=None, help="default: every merge (dot always included)")
    ap.add_argument("--classifiers", nargs="+", default=None,
                    help="default: every classifier of the registry (cosine always included)")
    ap.add_argument("--weights", default=None, help="imagenet | random (default: each backbone's own)")
    ap.add_argument("--speed-images", type=int, default=256,
                    help="images vectorised from scratch to time each backbone (0: skip; default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    out = run(args.dataset, args.backbones, args.merges, args.classifiers, args.weights, args.speed_images,
              args.seed)
    columns = COLUMNS + (["time_vs_lite0"] if any("time_vs_lite0" in r for r in out["rows"]) else [])
    text = (f"Quality: {out['dataset']}, {len(out['merges'])} merges x {len(out['classifiers'])} classifiers per "
            f"backbone, seed {out['seed']}; img/s over {out['speed_images']} images "
            f"({out['machine']['device']}, load {out['machine'].get('load_avg')})\n\n"
            + table(out["rows"], columns, floatfmt="{:.3f}"))
    emit(out, args.json, text)
    return out


if __name__ == "__main__":
    main()
