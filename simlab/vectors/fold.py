"""Inference copies of Keras models with batch normalisation folded into the layer before it.

At inference a BatchNormalization is a fixed per-channel affine map, ``y = (x - mean) * s + beta``
with ``s = gamma / sqrt(var + eps)``. When it directly follows a convolution (or a Dense layer)
whose only consumer it is, the map can be moved into that layer's kernel and bias: same result up
to float rounding, one pass over the activations fewer per block. TensorFlow's graph optimiser does
not do this for Keras 3 models (their batch norm is plain arithmetic, not a fused op): folding made
EfficientNet-Lite0 1.9x and ResNet50 1.2x faster on 2 CPU cores, ResNet50 1.6x on an H200
(benchmarks/README.md).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

# layer class name -> the weight the batch norm's scale multiplies, and the axis of its output channels
_FOLDABLE = {"Conv2D": "kernel", "DepthwiseConv2D": "kernel", "SeparableConv2D": "pointwise_kernel",
             "Dense": "kernel"}


def _producer(layer):
    """The layer whose output ``layer`` takes, when it takes exactly one tensor from one layer."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        return None
    parents = nodes[0].parent_nodes
    return parents[0].operation if len(parents) == 1 else None


def _foldable_pairs(model) -> dict:
    """{producer layer: batch-norm layer} for every batch norm that can be folded."""
    pairs = {}
    for bn in model.layers:
        if type(bn).__name__ != "BatchNormalization" or bn.axis not in (-1, len(bn.input.shape) - 1):
            continue
        prev = _producer(bn)
        if (prev is None or type(prev).__name__ not in _FOLDABLE or len(prev._outbound_nodes) != 1
                or len(prev._inbound_nodes) != 1 or getattr(prev, "activation", None) is None
                or prev.activation.__name__ != "linear"):
            continue
        pairs[prev] = bn
    return pairs


@functools.lru_cache(maxsize=1)
def _passthrough_class():
    """A layer returning its input: what stands in for a folded batch norm (keras imported on use)."""
    import keras

    class Passthrough(keras.layers.Layer):
        def call(self, x, training=None, mask=None):
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

    return Passthrough


def _np(variable) -> np.ndarray:
    from keras import ops

    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def _folded_weights(layer, bn) -> tuple[np.ndarray, np.ndarray]:
    """(scaled weight, bias) for ``layer`` with ``bn`` folded in."""
    mean, var = _np(bn.moving_mean), _np(bn.moving_variance)
    gamma = _np(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = _np(bn.beta) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    weight = _np(getattr(layer, _FOLDABLE[type(layer).__name__]))
    if type(layer).__name__ == "DepthwiseConv2D":  # (kh, kw, in, multiplier): output channel = in * m + j
        weight = weight * scale.reshape(weight.shape[2], weight.shape[3])
    else:  # the output channels are the last axis
        weight = weight * scale
    bias = _np(layer.bias) if layer.use_bias else np.zeros_like(mean)
    return weight.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def fold_batchnorm(model):
    """An inference copy of ``model`` with its foldable batch norms folded (``model`` is untouched).

    Layers that change nothing are shared with ``model`` (no copy of their weights); a model with
    nothing to fold, or one the cloning cannot handle (nested models, custom layers), is returned as is.
    """
    import keras

    pairs = _foldable_pairs(model) if isinstance(model, keras.Model) else {}
    if not pairs:
        return model
    folded_bns = {bn.name for bn in pairs.values()}
    replaced = {}

    def clone(layer):
        if layer.name in folded_bns:
            return _passthrough_class()(name=layer.name)
        if layer in pairs:
            new = type(layer).from_config(layer.get_config() | {"use_bias": True})
            replaced[new.name] = layer
            return new
        return layer  # shared, weights and all

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except Exception as exc:  # an unusual graph: keep the model unfolded, it still works
        log.warning("Batch norms of %s left unfolded (the model could not be cloned: %s)", model.name, exc,
                    exc_info=True)
        return model
    for layer in copy.layers:
        if layer.name in replaced:
            old = replaced[layer.name]
            weight, bias = _folded_weights(old, pairs[old])
            getattr(layer, _FOLDABLE[type(layer).__name__]).assign(weight)
            if type(layer).__name__ == "SeparableConv2D":
                layer.depthwise_kernel.assign(old.depthwise_kernel)
            layer.bias.assign(bias)
    return copy
