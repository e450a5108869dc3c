"""Fine-tuning for retrieval: the multi-similarity loss, batches of scenes, learned whitening chosen on
validation, and the best epoch picked by validation mAP, on real Keras models and a real store."""

import numpy as np
import pytest

from helpers import simlab_cache_at, write_group_folder
from simlab.evaluate import retrieval_map
from simlab.finetune.config import FinetuneConfig
from simlab.finetune.data import PairData
from simlab.finetune.layers import (
    BatchRecall,
    BestCheckpoint,
    GroupBatches,
    multi_similarity_loss,
    projection,
)
from simlab.finetune.models import SHRINKAGES, build_siamese_models, choose_whitening, learned_whitening
from simlab.finetune.validation import (
    KeptEpoch,
    Scores,
    bootstrap_se,
    describe_gain,
    gain_over,
    query_aps,
    recall_at_1,
    run_story,
)
from simlab.pairs import Pairs


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


LABELS = np.array([0, 0, 1, 1, 2, 2], np.float32)
# Two views of each of three scenes: well ranked (views of a scene close, scenes apart) ...
RANKED = unit([[1, 0.1, 0], [1, -0.1, 0], [0, 1, 0.1], [0, 1, -0.1], [0.1, 0, 1], [-0.1, 0, 1]])
# ... and the same points with the scenes' second views swapped: each image's nearest is another scene.
MIXED = RANKED[[0, 3, 2, 5, 4, 1]]


def test_multi_similarity_loss_is_lower_for_a_correctly_ranked_batch():
    loss = multi_similarity_loss()
    ranked = np.asarray(loss(LABELS, RANKED))
    mixed = np.asarray(loss(LABELS, MIXED))
    assert ranked.shape == mixed.shape == (6,)
    assert ranked.mean() < 0.05 < mixed.mean()
    assert (ranked < mixed).all()


def reference_multi_similarity(labels, e, alpha=2.0, beta=50.0, base=0.5, mining=0.1):
    """The loss written out image by image, as in the paper."""
    sim = e.astype(np.float64) @ e.T.astype(np.float64)
    out = []
    for i in range(len(e)):
        pos = [j for j in range(len(e)) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(len(e)) if labels[j] != labels[i]]
        if not pos:
            out.append(0.0)
            continue
        kept_neg = [j for j in neg if sim[i, j] + mining > min(sim[i, pos])]
        kept_pos = [j for j in pos if not neg or sim[i, j] - mining < max(sim[i, neg])]
        out.append(np.log1p(sum(np.exp(-alpha * (sim[i, j] - base)) for j in kept_pos)) / alpha
                   + np.log1p(sum(np.exp(beta * (sim[i, j] - base)) for j in kept_neg)) / beta)
    return np.array(out)


def test_multi_similarity_loss_matches_the_paper_image_by_image():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 16).astype(np.float32)
    labels[-1] = 9  # alone with its scene: adds nothing
    e = unit(rng.normal(size=(16, 3)))  # low dimension: similarities spread, so mining keeps and drops pairs
    value = np.asarray(multi_similarity_loss()(labels, e))
    expected = reference_multi_similarity(labels, e)
    assert expected[-1] == 0 and (expected[:-1] > 0).any()
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)


def test_batch_recall_counts_nearest_neighbours_of_the_same_scene():
    metric = BatchRecall()
    metric.update_state(LABELS, RANKED)
    assert float(metric.result()) == 1.0
    metric.reset_state()
    metric.update_state(LABELS, MIXED)
    assert float(metric.result()) == 0.0
    metric.reset_state()
    # An image alone with its scene in the batch is not counted either way.
    angles = np.radians([0, 10, 15])  # image 0's nearest is 1 (a hit), image 1's is 2 (a miss)
    metric.update_state(np.array([0, 0, 1], np.float32), np.column_stack([np.cos(angles), np.sin(angles)]))
    assert float(metric.result()) == 0.5


def test_group_batches_hold_whole_scenes_with_steady_sizes():
    codes = np.repeat(np.arange(6), [5, 3, 2, 1, 4, 2])  # scene 3 has one image: nothing to learn from it
    images = np.arange(len(codes))
    source = np.arange(len(codes), dtype=np.float32)[:, None]
    batches = GroupBatches(source, images, codes, batch_size=5, per_group=3, seed=0)
    assert batches.n_rows == 3 + 3 + 2 + 3 + 2 and batches.batch_sizes() == [5, 5, 3]
    for _ in range(3):
        rows = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))]).astype(int)
        ys = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert len(rows) == 13 and len(set(rows)) == 13 and 10 not in rows  # the lone image is left out
        np.testing.assert_array_equal(ys, codes[rows])
        assert np.bincount(codes[rows]).max() <= 3
        # scenes come whole (their images adjacent), not scattered over the epoch
        assert (np.diff(codes[rows]) != 0).sum() == 4
        batches.on_epoch_end()
    fixed = GroupBatches(source, images, codes, batch_size=5)
    first = [fixed[i][0].copy() for i in range(len(fixed))]
    fixed.on_epoch_end()
    for i, b in enumerate(first):
        np.testing.assert_array_equal(fixed[i][0], b)
    assert len(GroupBatches(source, images, codes, batch_size=5, seed=0, max_batches=2)) == 2


def test_best_checkpoint_on_validation_map_keeps_the_highest_even_if_loss_rises(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = BestCheckpoint(model, tmp_path / "best.keras", monitor="val_map")
    best.set_model(model)
    best.offer(0, {"val_map": 0.5, "val_loss": 0.1}, model)
    model.set_weights([w + 1 for w in model.get_weights()])
    kept = [w.copy() for w in model.get_weights()]
    best.on_epoch_end(0, {"val_map": 0.7, "val_loss": 0.9})  # higher mAP, worse loss: kept
    model.set_weights([w + 1 for w in model.get_weights()])
    best.on_epoch_end(1, {"val_map": 0.7, "val_loss": 0.05})  # a tie: the earlier epoch stays
    best.on_epoch_end(2, {"val_map": 0.6, "val_loss": 0.01})
    assert (best.best_epoch, best.best) == (1, 0.7)
    best.on_train_end()
    for a, b in zip(kept, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def scenes(n_groups=12, per_group=3, dim=16, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    nuisance = rng.normal(size=(1, dim)) * 3  # one direction that views of a scene vary along
    vectors = np.repeat(centres, per_group, axis=0) + noise * rng.normal(size=(n_groups * per_group, dim))
    vectors += rng.normal(size=(n_groups * per_group, 1)) * nuisance
    groups = np.repeat(np.arange(n_groups), per_group).astype(str)
    return vectors.astype(np.float32), groups


def pairs_within(images, groups):
    left, right, label = [], [], []
    for i in images:
        for j in images:
            if i < j:
                left.append(i), right.append(j), label.append(int(groups[i] == groups[j]))
    return Pairs(np.array(left), np.array(right), np.array(label))


def test_whitening_shrinkage_is_the_one_that_retrieves_best_on_validation():
    vectors, groups = scenes()
    train = pairs_within(np.arange(24), groups)
    val_images = np.arange(24, 36)
    (kernel, bias), chosen, scores = choose_whitening(vectors, train, val_images, groups, 16)
    assert set(scores) == set(SHRINKAGES) and scores[chosen] == max(scores.values())
    assert chosen == max(s for s in SHRINKAGES if scores[s] == scores[chosen])  # ties: the most regularised
    x = unit(vectors)
    for s, value in scores.items():  # scored as validation mAP is measured: every validation image a query
        k, b = learned_whitening(vectors, train, 16, s)
        assert value == pytest.approx(query_aps(x[val_images] @ k + b, groups[val_images]).mean)
    np.testing.assert_allclose(kernel, learned_whitening(vectors, train, 16, chosen)[0])
    # Full size: the map keeps every direction (invertible), so nothing is thrown away.
    assert np.linalg.matrix_rank(kernel) == 16
    # And it beats raw cosine on these scenes, whose views vary along one direction.
    assert scores[chosen] > query_aps(x[val_images], groups[val_images]).mean


def test_the_siamese_tower_embeds_to_unit_vectors_of_the_backbone_size():
    vectors, groups = scenes(dim=12)
    data = PairData(np.array([f"{i}.jpg" for i in range(36)]), groups, [str(i) for i in range(36)], {}, vectors,
                    pairs_within(np.arange(24), groups), pairs_within(np.arange(24, 30), groups),
                    pairs_within(np.arange(30, 36), groups), np.arange(30, 36))
    built = build_siamese_models(FinetuneConfig(weights="random"), data, None)
    assert built.info["whitening_shrinkage"] in SHRINKAGES
    out = np.asarray(built.embedder.predict(vectors, verbose=0))
    assert out.shape == (36, 12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert built.trainer.output_shape == (None, 12)  # multi-similarity trains on single images' embeddings
    # A random projection and an explicit size are unit vectors too.
    out = np.asarray(projection(12, 5)(vectors))
    assert out.shape == (36, 5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_config_defaults_and_refusals():
    c = FinetuneConfig(weights="random").validate()
    assert (c.loss, c.selection, c.group_batches) == ("multi-similarity", "val_map", True)
    assert c.embedding_size(1280) == 1280 and FinetuneConfig(init="random").embedding_size(1280) == 128
    assert FinetuneConfig(mode="head", weights="random").validate().selection == "val_loss"
    with pytest.raises(ValueError, match="val_map needs embeddings"):
        FinetuneConfig(mode="head", select="val_map", weights="random").validate()
    with pytest.raises(ValueError, match="select must be one of"):
        FinetuneConfig(select="val_acc", weights="random").validate()


def test_a_small_fine_tune_records_its_start_its_noise_and_a_kept_epoch_beyond_noise(tmp_path):
    from simlab.data import load_dataset
    from simlab.finetune.data import prepare_data
    from simlab.finetune.train import run_finetune
    from simlab.progress import silent
    from simlab.store import Store
    from simlab.vectors import vectorize

    spec = f"folder:{write_group_folder(tmp_path / 'ds', n_groups=16, per_group=3)}"
    with simlab_cache_at(tmp_path / "cache"):
        store = Store(tmp_path / "cache" / "simlab.db")
        # A projection from random weights has everything to learn (learned whitening, fitted on these few
        # training scenes, separates them all at once: its loss is 0 from the start).
        config = FinetuneConfig(dataset=spec, weights="random", init="random", epochs=4, batch_size=8,
                                learning_rate=3e-3, patience=4)
        result = run_finetune(config, store)
        curves = store.curves(result["run_id"])
        assert curves[curves.name == "loss"].value.iloc[0] > 0
        val_map = curves[curves.name == "val_map"].set_index("epoch").value
        noise = curves[curves.name == "val_map_se"].set_index("epoch").value
        epochs = list(range(0, result["epochs_run"] + 1))
        assert list(val_map.index) == epochs and list(noise.index) == epochs  # epoch 0: the starting point
        assert (noise >= 0).all() and noise.iloc[0] > 0  # the validation scenes resolve something
        assert val_map.max() - val_map.min() > 0  # the curve moves when the projection learns
        kept = result["best_epoch"]
        # The kept epoch is the start, or an epoch that beat it; never one that only ties it.
        assert kept == 0 or val_map[kept] > val_map[0]
        assert result["best_val_map"] == pytest.approx(val_map[kept])
        assert result["val_start"] == pytest.approx(val_map[0])
        assert result["val_gain_se"] >= 0 and result["noise"]
        assert result["val_start"] + result["val_gain"] == pytest.approx(val_map.max())
        assert result["map_start"] > 0 and result["map_gain_se"] >= 0 and result["map"] > 0
        if kept == 0:  # the test scenes are scored with the starting point's weights
            assert result["map"] == pytest.approx(result["map_start"])
        lines = run_story(result)
        assert lines[0].startswith("Validation mAP: start ") and "noise" in lines[0]
        assert result["train_loss_max"] > 0 and not any(line.startswith("Training loss 0") for line in lines)
        assert lines[1].startswith("Test scenes' mAP: start ") and "over the frozen vectors" in lines[1]
        # The tower that was kept is that epoch's: its vectors retrieve the validation scenes exactly as measured.
        vs = vectorize(load_dataset(spec), result["tuned_backbone"], "random")
        assert vs.computed == 0
        data = prepare_data(config, load_dataset(spec), lambda t: None, silent, None)
        assert list(vs.digests) == list(data.digests)
        assert query_aps(vs.vectors[data.val_images], data.groups[data.val_images]).mean == pytest.approx(
            result["best_val_map"], abs=1e-5)


# --------------------------------------------------------------------------- noise and the kept epoch


def test_query_aps_with_one_query_per_scene_is_retrieval_map():
    vectors, groups = scenes()
    _, first = np.unique(groups, return_index=True)
    assert query_aps(vectors, groups, np.sort(first)).mean == pytest.approx(retrieval_map(vectors, groups))
    every = query_aps(vectors, groups)
    assert len(every.values) == 36 and set(every.clusters) == set(range(12))  # every image is a query
    assert 0 < every.mean <= 1
    assert recall_at_1(RANKED, LABELS) == 1.0 and recall_at_1(MIXED, LABELS) == 0.0


def test_bootstrap_standard_error_is_over_scenes():
    rng = np.random.default_rng(0)
    scene_means = rng.normal(size=200)
    values = np.repeat(scene_means, 3)  # three items per scene, equal within it: only scenes vary
    clusters = np.repeat(np.arange(200), 3)
    expected = scene_means.std(ddof=1) / np.sqrt(200)
    assert bootstrap_se(values, clusters) == pytest.approx(expected, rel=0.15)
    # Treating the 600 items as independent would claim sqrt(3) times less noise than there is.
    assert bootstrap_se(values, np.arange(600)) < 0.75 * bootstrap_se(values, clusters)
    assert bootstrap_se(values[:3], clusters[:3]) == 0.0  # one scene: nothing to resample
    assert bootstrap_se(values, clusters) == bootstrap_se(values, clusters)  # seeded


def test_the_kept_epoch_moves_only_for_a_gain_beyond_its_noise():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(40), 3)
    start = Scores(rng.uniform(0.3, 0.9, 120), clusters)
    assert 0.01 < start.se < 0.05
    steady = Scores(start.values + start.se / 2, clusters)  # better on every item, by half the noise
    rule = KeptEpoch()
    assert rule.offer(0, start) and rule.epoch == 0
    small = gain_over(steady, start)
    assert small.gain == pytest.approx(start.se / 2) and small.se == start.se and not small.beyond_noise
    assert not rule.offer(1, steady) and rule.epoch == 0 and rule.since == 1
    better = Scores(start.values + 2 * start.se, clusters)  # twice the noise: kept
    assert rule.offer(2, better) and rule.epoch == 2 and rule.since == 0
    assert not rule.offer(3, better) and rule.since == 1  # a tie keeps the earlier epoch
    losses = KeptEpoch(higher_is_better=False)  # a loss: lower is better
    assert losses.offer(0, Scores(np.r_[1.0, 1.2, 0.8, 1.0], np.arange(4)))
    assert losses.offer(1, Scores(np.full(4, 0.5), np.arange(4))) and losses.epoch == 1


def test_best_checkpoint_ignores_a_sub_noise_rise_of_validation_map(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    clusters = np.repeat(np.arange(10), 2)
    start = Scores(np.linspace(0.2, 0.9, 20), clusters)
    lucky = Scores(start.values + start.se / 3, clusters)  # a higher mean, by a third of the noise
    current = {}
    best = BestCheckpoint(model, tmp_path / "best.keras", monitor="val_map", scores=lambda: current["s"], patience=2)
    best.set_model(model)
    current["s"] = start
    best.offer(0, {"val_map": start.mean}, model)
    current["s"] = lucky
    best.on_epoch_end(0, {"val_map": lucky.mean})
    assert lucky.mean > start.mean and best.best_epoch == 0 and not getattr(model, "stop_training", False)
    best.on_epoch_end(1, {"val_map": lucky.mean})
    assert best.best_epoch == 0 and model.stop_training  # patience 2: no kept epoch for 2 epochs
    assert set(best.measured) == {0, 1, 2}


def test_the_words_say_what_came_from_the_start_and_what_from_training():
    assert describe_gain(0.778, 0.782, 0.005, "Validation mAP") == (
        "Validation mAP: start .778, training +0.004 ± 0.005: within noise")
    assert describe_gain(0.5, 0.6, 0.01).endswith("better, beyond noise")
    assert describe_gain(0.5, 0.4, 0.01, "Validation loss", higher_is_better=False).endswith("better, beyond noise")
    assert describe_gain(0.5, 0.6, None).endswith("training +0.100")
    lines = run_story({"selected_by": "val_map", "val_start": 0.741, "val_gain": 0.004, "val_gain_se": 0.006,
                       "val_top_epoch": 3, "noise": "bootstrap", "best_epoch": 0, "map_frozen": 0.732,
                       "map_start": 0.778, "map": 0.778, "map_gain_se": 0.0, "map_start_gain_se": 0.01,
                       "whitening_shrinkage": 0.3})
    assert run_story({"selected_by": "val_map", "val_start": 0.9, "val_gain": 0.0, "val_gain_se": 0.0,
                      "noise": "bootstrap", "best_epoch": 0, "train_loss_max": 0.0})[1].startswith(
        "Training loss 0 in every epoch")
    assert lines == ["Validation mAP: start .741, training +0.004 ± 0.006: within noise (its best epoch, 3); "
                     "the start is kept (epoch 0)",
                     "Test scenes' mAP: whitening start .778 (+0.046 ± 0.010 over the frozen vectors' .732), "
                     "training +0.000 ± 0.000: within noise (kept epoch against the start)"]
