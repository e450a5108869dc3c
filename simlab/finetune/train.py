"""One fine-tuning run, start to finish: train, checkpoint, score; and the ``finetune`` job kind.

Per-batch loss and per-epoch loss and accuracy go to the store as they happen; a stop request ends
the run after the current batch, and the best checkpoint is still scored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from simlab.backbones import get_backbone
from simlab.classifiers import SimilarityThreshold, make_classifier
from simlab.data import load_dataset
from simlab.evaluate import pair_metrics, retrieval_map
from simlab.finetune.config import FinetuneConfig
from simlab.finetune.data import PairData, decode_images, prepare_data
from simlab.finetune.layers import (
    BestCheckpoint,
    GroupBatches,
    IndexBatches,
    LiveCurves,
    ValidationScores,
    map_measure,
    save_model,
)
from simlab.finetune.models import BUILDERS, Built
from simlab.finetune.towers import register_tuned, run_folder, tuned_name
from simlab.finetune.validation import Scores, gain_over, query_aps
from simlab.merge import merge_pairs
from simlab.paths import atomic_path
from simlab.progress import Cancelled, Progress, ShouldStop, silent
from simlab.provenance import git_commit, library_versions
from simlab.store import Store, new_id
from simlab.vectors.cache import VectorCache

log = logging.getLogger(__name__)

Echo = Callable[[str], None]  # one line of the run's log, for people


def run_finetune(config: FinetuneConfig, store=None, progress: Progress | None = None,
                 should_stop: ShouldStop | None = None, job_id: str | None = None,
                 echo: Echo | None = None) -> dict:
    """Train, checkpoint and score one fine-tuning run; curves, metrics and predictions go to the store.

    Returns a summary (run_id, mode, backbone, accuracy, auc, epochs_run, status, ...). A stop
    request ends training after the current batch: the best checkpoint is scored and the run is
    stored as ``cancelled``. ``echo`` receives the run's log lines (default: this module's logger).
    """
    config.validate()
    store = store or Store()
    progress = progress or silent
    echo = echo or log.info
    progress(0, 0, "Loading the dataset", stage="load")
    dataset = load_dataset(config.dataset)
    run_id = new_id("f")
    store.add_run(id=run_id, kind="finetune", dataset=config.dataset, fingerprint=dataset.fingerprint,
                  backbone=config.backbone_label, merge=config.merge_label, classifier=config.classifier_label,
                  split=config.split, seed=config.seed, config=asdict(config), versions=library_versions(),
                  git=git_commit(), job_id=job_id, artifacts={"folder": str(run_folder(run_id))})
    try:
        return _train_and_score(config, dataset, store, run_id, progress, should_stop, echo)
    except Cancelled as exc:
        store.update_run(run_id, status="cancelled", error=str(exc), finished=time.time())
        raise
    except BaseException as exc:
        store.update_run(run_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
        raise


def finetune_job(params: dict, store, progress: Progress, should_stop, job_id: str | None = None) -> dict:
    """The ``finetune`` job kind (params: a FinetuneConfig as a dict)."""
    config = FinetuneConfig.from_params(params).validate()
    return run_finetune(config, store, progress, should_stop, job_id=job_id, echo=lambda t: print(t, flush=True))


@dataclass
class _Fitted:
    """What training left: its callbacks (curves, best checkpoint), the artifacts and the clock."""

    curves: LiveCurves
    best: BestCheckpoint
    artifacts: dict
    clock: dict = field(default_factory=dict)
    start_test: Scores | None = None  # Siamese: the starting point's test APs (one query per test scene)


def _train_and_score(config: FinetuneConfig, dataset, store, run_id: str, progress: Progress,
                     should_stop: ShouldStop | None, echo: Echo) -> dict:
    t_start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, dataset, echo, progress, should_stop)
    images = None
    if config.on_images:
        size = config.cnn_size if config.uses_small_cnn else get_backbone(config.backbone).input_size
        images = decode_images(data.paths, size, should_stop, progress)
    echo(f"Run {run_id}: {config.mode} on {len(data.train)} training, {len(data.val)} validation and "
         f"{len(data.test)} test pairs ({'pixels' if images is not None else 'cached frozen vectors'})")
    built = _build(config, data, images, progress)
    if built.info.get("whitening_val_map"):
        echo(f"Learned whitening: shrinkage {built.info['whitening_shrinkage']:g} chosen on validation mAP "
             f"({', '.join(f'{k}: {v:.4f}' for k, v in built.info['whitening_val_map'].items())})")
    fitted = _fit(config, built, data, store, run_id, progress, should_stop, echo)
    fitted.clock["start"] = t_start
    progress(0, 0, "Scoring the best checkpoint on the test pairs", stage="score")
    metrics, prob, extra = _score(config, built, data, dataset, run_id, fitted.start_test)
    return _finish(config, data, store, run_id, fitted, metrics, prob, extra, progress, echo)


def _build(config: FinetuneConfig, data: PairData, images: np.ndarray | None, progress: Progress) -> Built:
    progress(0, 0, "Building the model", stage="build")
    keras.utils.set_random_seed(config.seed)  # the same initial weights whatever ran before
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # distances and thresholds need float32, even on a GPU
    try:
        return BUILDERS[config.mode](config, data, images)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _batches(config: FinetuneConfig, built: Built, data: PairData):
    """Training and validation batches: of scenes (multi-similarity), else of pairs or triplets."""
    if config.group_batches:  # training batches of neighbouring scenes (by the frozen vectors) where known
        codes = built.train_y
        return (GroupBatches(built.source, data.train_images, codes, config.batch_size, seed=config.seed,
                             max_batches=config.steps_per_epoch, similar=data.vectors),
                GroupBatches(built.source, data.val_images, codes, config.batch_size))
    return (IndexBatches(built.source, built.train_x, built.train_y, config.batch_size, seed=config.seed,
                         max_batches=config.steps_per_epoch),
            IndexBatches(built.source, built.val_x, built.val_y, config.batch_size))


def _fit(config: FinetuneConfig, built: Built, data: PairData, store, run_id: str, progress: Progress,
         should_stop: ShouldStop | None, echo: Echo) -> _Fitted:
    """Validate the starting point, then fit with live curves, the kept epoch and early stopping, all on the
    selection metric (validation mAP of the embeddings, or validation loss) and its noise."""
    folder = run_folder(run_id)
    train_batches, val_batches = _batches(config, built, data)
    artifacts = {"folder": str(folder), "steps_per_epoch": len(train_batches)}  # the page's x axis needs it
    store.update_run(run_id, artifacts=artifacts)
    curves = LiveCurves(store, run_id, train_batches.batch_sizes(), config.epochs, progress, should_stop, echo)
    monitor = config.selection
    measure = _validation_measure(config, built, data)
    scores = None if measure is None else ValidationScores(measure)
    best = BestCheckpoint(built.scorer, folder / "best.keras", monitor=monitor, patience=config.patience,
                          scores=None if scores is None else (lambda: scores.latest))
    callbacks = [curves, best] if scores is None else [scores, curves, best]  # scores first: the others read it
    built.trainer.compile(optimizer=keras.optimizers.Adam(config.rate), loss=built.loss, metrics=built.metrics)
    progress(0, 0, "Validating the starting point", stage="validate")
    logs = {f"val_{name}": value for name, value in
            built.trainer.evaluate(val_batches, verbose=0, return_dict=True).items()}
    if scores is not None:
        logs |= scores.score()
    start = curves.record(0, logs)
    best.offer(0, start, built.trainer)
    start_test = _test_aps(built, data) if built.embedder is not None else None
    echo("Before training: " + " · ".join(f"{k} {v:.4f}" for k, v in sorted(start.items())))
    t_fit = time.perf_counter()
    built.trainer.fit(train_batches, validation_data=val_batches, epochs=config.epochs, shuffle=False, verbose=0,
                      callbacks=callbacks)
    t_scored = time.perf_counter()
    if best.best_epoch is None:  # no finite validation score: keep the last weights
        save_model(built.scorer, folder / "best.keras")
    return _Fitted(curves, best, artifacts, {"fit": t_fit, "scored": t_scored}, start_test)


def _validation_measure(config: FinetuneConfig, built: Built, data: PairData):
    """What measures the selection metric item by item (so that its noise is known), or None (the loss of
    triplet and multi-similarity runs, which Keras averages over batches: no noise estimate)."""
    if config.selection == "val_map":
        val_images = data.val_images
        return map_measure(lambda: _predict(built.embedder, built.source, [val_images]), data.groups[val_images],
                           recall=config.group_batches)
    if config.mode == "siamese" and config.loss != "contrastive":
        return None
    left, right, label = data.val.left, data.val.right, data.val.label.astype(np.float64)
    clusters = data.groups[left]  # the scene of each pair's first image

    def measure():
        out = _predict(built.scorer, built.source, [left, right])
        if config.mode == "head":  # sparse categorical cross-entropy, pair by pair
            p = np.where(label == 1, out[:, 1], out[:, 0])
            losses = -np.log(np.clip(p, 1e-7, 1.0))
        else:  # contrastive, pair by pair
            d = out[:, 0]
            losses = label * d ** 2 + (1 - label) * np.maximum(config.margin - d, 0.0) ** 2
        return "val_loss", Scores(losses, clusters), {}

    return measure


def _test_aps(built: Built, data: PairData) -> Scores:
    """AP of each test scene's query (its first image) among the test images, with the current weights."""
    test_img = data.test_images
    embedded = _predict(built.embedder, built.source, [test_img])
    return query_aps(embedded, data.groups[test_img], queries=first_of_each_scene(data.groups[test_img]))


def first_of_each_scene(groups) -> np.ndarray:
    """Index of the first image of each scene (the Holidays protocol's queries, as ``retrieval_map`` picks them)."""
    _, first = np.unique(np.asarray(groups), return_index=True)
    return np.sort(first)


def _selection_summary(config: FinetuneConfig, best: BestCheckpoint, curves: LiveCurves) -> dict:
    """The starting point's validation score, the best epoch's gain over it (whether kept or not) and the
    noise of that gain."""
    monitor = config.selection
    start = curves.history.get(0, {})
    out = {"val_start": start.get(monitor), "val_start_se": start.get(f"{monitor}_se"),
           "noise": "bootstrap over the validation scenes" if best.scores is not None else None}
    losses = [curves.history[e]["loss"] for e in sorted(curves.history) if e > 0 and "loss" in curves.history[e]]
    if losses:
        out["train_loss_max"] = float(max(losses))  # 0: the loss found nothing to learn from in any epoch
    measured = best.measured
    if 0 in measured and len(measured) > 1:
        top = max(sorted(measured), key=lambda e: best.sign * measured[e].mean)  # the earliest of the best
        gain = gain_over(measured[top], measured[0], best.sign > 0)
        out |= {"val_top_epoch": top, "val_gain": best.sign * gain.gain, "val_gain_se": gain.se}
    return out


def _finish(config: FinetuneConfig, data: PairData, store, run_id: str, fitted: _Fitted, metrics: dict,
            prob: np.ndarray, extra: dict, progress: Progress, echo: Echo) -> dict:
    """Store the metrics, predictions, timings and artifacts; return the run's summary."""
    curves, best, artifacts, clock = fitted.curves, fitted.best, fitted.artifacts, fitted.clock
    status = "cancelled" if curves.stopped else "done"
    n_epochs = len(curves.epoch_seconds)
    kept = curves.history.get(best.best_epoch, {}) if best.best_epoch is not None else {}
    metrics |= {"n_train": len(data.train), "n_val": len(data.val), "epochs_run": n_epochs,
                "best_epoch": best.best_epoch, "selected_by": config.selection,
                "best_val_loss": kept.get("val_loss"), "stopped": curves.stopped} | extra
    metrics |= _selection_summary(config, best, curves)
    if best.best_epoch is not None:
        metrics["best_val_accuracy"] = kept.get("val_accuracy")
        if "val_map" in kept:
            metrics["best_val_map"] = kept["val_map"]
    t_end = time.perf_counter()
    timings = {"total": t_end - clock["start"], "prepare": clock["fit"] - clock["start"],
               "train": clock["scored"] - clock["fit"], "score": t_end - clock["scored"],
               "epochs": curves.epoch_seconds,
               "per_epoch": float(np.mean(curves.epoch_seconds)) if curves.epoch_seconds else None}
    left, right = data.test.left, data.test.right
    predictions = pd.DataFrame({"left_path": data.paths[left], "right_path": data.paths[right],
                                "left_group": data.groups[left], "right_group": data.groups[right],
                                "label": data.test.label.astype(int), "prob": prob})
    folder = Path(artifacts["folder"])
    artifacts["checkpoint"] = str(folder / "best.keras")
    if "tuned_backbone" in extra:
        artifacts["tower"] = str(folder / "tower.keras")
    store.finish_run(run_id, metrics, predictions, status=status, timings=timings, artifacts=artifacts)
    summary = (f"test accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f} "
               f"(best epoch {best.best_epoch} of {n_epochs}, {timings['total']:.0f} s)")
    progress(1, 1, f"{'Stopped and scored' if curves.stopped else 'Done'}: {summary}", stage="done")
    echo(f"Run {run_id} {status}: {summary}")
    return {"run_id": run_id, "mode": config.mode, "backbone": config.backbone_label, "merge": config.merge_label,
            "classifier": config.classifier_label, "status": status, **metrics,
            "seconds": round(timings["total"], 2),
            "seconds_per_epoch": None if timings["per_epoch"] is None else round(timings["per_epoch"], 2)}


# --------------------------------------------------------------------------- scoring


def _predict(model, source, columns, batch_size: int = 256) -> np.ndarray:
    return np.asarray(model.predict(IndexBatches(source, columns, batch_size=batch_size), verbose=0), np.float64)


def _score(config: FinetuneConfig, built: Built, data: PairData, dataset, run_id: str,
           start_test: Scores | None = None) -> tuple[dict, np.ndarray, dict]:
    """Test metrics of the restored best weights; for Siamese runs, the threshold chosen on
    validation, retrieval mAP on the held-out images (and what of it the starting point already had),
    and the tower saved and registered."""
    test_cols = [data.test.left, data.test.right]
    test_img = data.test_images
    queries = first_of_each_scene(data.groups[test_img])
    frozen = None if data.vectors is None else query_aps(data.vectors[test_img], data.groups[test_img], queries)
    extra = {} if data.vectors is None else {
        "map_frozen": frozen.mean,
        "map_scope": "test images" if config.split == "group" else "all images",
        "accuracy_cosine": cosine_baseline(data, config.seed)}
    extra |= {k: v for k, v in built.info.items() if k == "whitening_shrinkage"}
    if config.mode == "head":
        prob = _predict(built.scorer, built.source, test_cols)[:, 1]
        return pair_metrics(data.test.label, prob, seed=config.seed), prob, extra

    d_val = _predict(built.scorer, built.source, [data.val.left, data.val.right])[:, 0]
    d_test = _predict(built.scorer, built.source, test_cols)[:, 0]
    # Threshold on the (negated) distance, tuned on validation pairs; probabilities are a logistic of it.
    rule = SimilarityThreshold().fit(-d_val[:, None], data.val.label)
    prob = rule.predict_proba(-d_test[:, None])[:, 1]
    metrics = pair_metrics(data.test.label, prob, seed=config.seed)
    extra |= {"distance_threshold": float(-rule.threshold_) if rule.sign_ > 0 else None, "margin": config.margin}

    embeddings = np.asarray(_predict(built.embedder, built.source, [np.arange(len(built.source))]), np.float32)
    extra["map"] = retrieval_map(embeddings[test_img], data.groups[test_img])
    if start_test is not None:  # the test mAP split into what the start had and what training added (and noise)
        extra |= {"map_start": start_test.mean, "map_gain_se": start_test.se}
        if frozen is not None and len(frozen.values) == len(start_test.values):
            extra["map_start_gain_se"] = frozen.se
    extra["map_scope"] = "test images" if config.split == "group" else "all images"
    name = _save_tower(config, built, data, run_id, int(embeddings.shape[1]))
    extra["tuned_backbone"] = name
    extra["vector_key"] = _write_vector_cache(name, config.weights, dataset, data, embeddings)
    return metrics, prob, extra


def cosine_baseline(data: PairData, seed: int = 0) -> float | None:
    """Test accuracy of the grid's ``dot + cosine`` cell on the frozen vectors: one similarity threshold
    fitted on the grid's training pairs, scored on the same test pairs as the run (what fine-tuning must beat)."""
    if data.vectors is None or data.grid_train is None:
        return None
    train, test = data.grid_train, data.test
    rule = make_classifier("cosine", random_state=seed).fit(
        merge_pairs(data.vectors, train.left, train.right, "dot"), train.label)
    prob = rule.predict_proba(merge_pairs(data.vectors, test.left, test.right, "dot"))[:, 1]
    return float(np.mean((prob >= 0.5) == (test.label == 1)))


def _save_tower(config: FinetuneConfig, built: Built, data: PairData, run_id: str, dim: int) -> str:
    """Save the trained tower (preprocessed image -> embedding) and register it as a backbone."""
    tower, size, pre_name = built.tower, built.input_size, built.preprocess
    if data.vectors is not None and built.input_size == 0:  # frozen: the tower is the backbone + projection
        bb = get_backbone(config.backbone)
        base = bb.build(config.weights)
        pre_in = keras.Input((bb.input_size, bb.input_size, 3), name="preprocessed")
        tower = keras.Model(pre_in, built.tower(base(pre_in, training=False)), name="tower")
        size, pre_name = bb.input_size, bb.name
    folder = run_folder(run_id)
    save_model(tower, folder / "tower.keras")
    meta = {"run_id": run_id, "base": config.backbone_label, "base_weights": config.weights,
            "input_size": size, "dim": dim, "preprocess": pre_name, "loss": config.loss, "created": time.time()}
    with atomic_path(folder / "tower.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    register_tuned(run_id)
    return tuned_name(run_id)


def _write_vector_cache(name: str, weights: str, dataset, data: PairData, embeddings: np.ndarray) -> str:
    """Put the tower's vectors into the vector cache, so ``vectorize(dataset, name)`` is a cache hit."""
    cache = VectorCache(name, weights)
    cache.write(dataset.fingerprint, embeddings.astype(np.float32), data.digests, data.bad)
    return cache.key
