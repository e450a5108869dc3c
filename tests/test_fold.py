"""Batch norms folded into the convolutions before them: same outputs, the original model untouched."""

import keras
import numpy as np
import pytest

from simlab.backbones import get_backbone
from simlab.vectors.fold import fold_batchnorm


def randomise_batchnorms(model, seed=0):
    """Give every batch norm statistics far from the identity, so folding is really tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "xception"])
def test_folded_model_gives_the_same_vectors(name, tmp_cache):
    bb = get_backbone(name)
    model = bb.build("random")
    randomise_batchnorms(model)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    x = bb.preprocess(np.random.default_rng(1).integers(0, 256, (4, bb.input_size, bb.input_size, 3)).astype("float32"))
    before = keras.ops.convert_to_numpy(model(x, training=False))

    folded = fold_batchnorm(model)
    assert folded is not model and n_bn > 30
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    out = keras.ops.convert_to_numpy(folded(x, training=False))
    np.testing.assert_allclose(out, before, atol=1e-5 * np.abs(before).max())
    # the original keeps its batch norms and gives what it gave
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == n_bn
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)), before)


def test_a_model_without_batch_norm_is_returned_as_is():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    assert fold_batchnorm(model) is model


def test_a_batch_norm_after_an_activation_or_a_shared_output_is_left_alone():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, activation="relu", name="act_conv")(inputs)
    a = keras.layers.BatchNormalization(name="after_act")(a)
    b = keras.layers.Conv2D(4, 3, name="shared_conv")(inputs)
    c = keras.layers.BatchNormalization(name="after_shared")(b)
    d = keras.layers.Conv2D(4, 3, name="plain_conv")(inputs)
    d = keras.layers.BatchNormalization(name="foldable")(d)
    model = keras.Model(inputs, keras.layers.Concatenate()([a, b, c, d]))
    randomise_batchnorms(model)
    folded = fold_batchnorm(model)
    names = {layer.name: layer for layer in folded.layers}
    assert isinstance(names["after_act"], keras.layers.BatchNormalization)
    assert isinstance(names["after_shared"], keras.layers.BatchNormalization)
    assert not isinstance(names["foldable"], keras.layers.BatchNormalization)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x)), keras.ops.convert_to_numpy(model(x)),
                               atol=1e-5)
