"""``--weights random`` is one network everywhere: two fresh processes build every Keras application and
every bundled backbone with random weights and vectorise the same images, and their vectors agree bit for
bit (the vector cache keys random vectors by the backbone's name alone, so another process must compute
the very same ones)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simlab.backbones import keras_apps, list_backbones

ROOT = Path(__file__).resolve().parent.parent
KERAS_APPS = [*keras_apps._APPS, *keras_apps._FC2]

# One fresh process: each backbone built with random weights, then one batch of two images at its input
# size (the same pixels in every process), one at a time so that a single big model is in memory at once.
VECTORISE = """
import gc, json, sys
import numpy as np
from simlab.backbones import get_backbone
names, out = json.loads(sys.argv[1]), sys.argv[2]
vectors = {}
for name in names:
    bb = get_backbone(name)
    model = bb.build("random")
    pixels = np.random.default_rng(0).integers(0, 256, (2, bb.input_size, bb.input_size, 3)).astype("float32")
    vectors[name] = np.asarray(model(bb.preprocess(pixels), training=False), dtype=np.float32)
    del model
    gc.collect()
np.savez(out, **vectors)
"""


def bundled_backbones() -> list[str]:
    return [b.name for b in list_backbones() if b.bundled and not b.options.get("tuned")]


def vectorise_in_fresh_processes(tmp_path: Path, backbones: list[str]) -> list[dict]:
    """Two fresh processes at once, each with its own empty cache."""
    runs = []
    for run in ("first", "second"):
        env = os.environ | {"SIMLAB_CACHE": str(tmp_path / run), "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = tmp_path / f"{run}.npz"
        runs.append((out, subprocess.Popen([sys.executable, "-c", VECTORISE, json.dumps(backbones), str(out)],
                                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)))
    vectors = []
    for out, process in runs:
        log, _ = process.communicate(timeout=1800)
        assert process.returncode == 0, log[-3000:]
        with np.load(out) as saved:
            vectors.append(dict(saved))
    return vectors


# InceptionV3's random vectors were the ones seen to differ between processes; ResNet50 stands for the other
# Keras applications (every one of them goes through the same seeding, which the test below checks layer by
# layer), the bundled ones for theirs. Building all twelve twice costs minutes of the suite for no more cover.
CROSS_PROCESS = ["inceptionv3", "resnet50", "efficientnet_lite0", "efficientnet_lite2", "phash", "dhash"]


def test_random_weights_give_the_same_vectors_in_every_process(tmp_path):
    backbones = CROSS_PROCESS
    assert set(backbones) <= set(KERAS_APPS + bundled_backbones())
    first, second = vectorise_in_fresh_processes(tmp_path, backbones)
    for name in backbones:
        assert first[name].shape[0] == 2 and np.isfinite(first[name]).all(), name
        assert first[name].std() > 0, name  # a network that computes something, not zeros
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_every_random_weight_of_a_keras_application_is_seeded():
    """The seeding covers every randomly initialised weight: a layer's own initialiser, redrawn with a seed;
    zeros and ones (biases, batch-norm statistics) are left as they are."""
    keras = pytest.importorskip("keras")

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.SeparableConv2D(4, 3, name="separable")(x)
    x = keras.layers.DepthwiseConv2D(2, use_bias=False, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, bias_initializer="he_normal", name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    before = {w.path: np.asarray(w).copy() for w in model.weights}
    # conv kernel, separable depthwise + pointwise kernels, depthwise kernel, dense kernel + bias
    assert keras_apps.seed_random_weights(model) == 6
    after = {w.path: np.asarray(w) for w in model.weights}
    changed = sorted(p for p in before if not np.array_equal(before[p], after[p]))
    assert changed == ["conv/kernel", "dense/bias", "dense/kernel", "depthwise/kernel",
                       "separable/depthwise_kernel", "separable/pointwise_kernel"]
    keras_apps.seed_random_weights(model)
    assert all(np.array_equal(after[w.path], np.asarray(w)) for w in model.weights)  # the same draw again
