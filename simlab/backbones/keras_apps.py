"""The study's backbones from ``keras.applications``: ImageNet weights download on first use."""

from __future__ import annotations

import importlib
import itertools
import logging
import shutil
from pathlib import Path

from simlab.backbones import Backbone, register
from simlab.paths import cache_dir

log = logging.getLogger(__name__)

# name -> (keras.applications module, constructor, input size, pooled dim, weights file, description)
_APPS = {
    "vgg16": ("vgg16", "VGG16", 224, 512, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "VGG16 (2014), 138M params; the study used its fc2 layer (vgg16_fc2)."),
    "vgg19": ("vgg19", "VGG19", 224, 512, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "VGG19 (2014), deeper VGG; the study used fc2 (vgg19_fc2)."),
    "resnet50": ("resnet50", "ResNet50", 224, 2048, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "ResNet50 (2015), 2048-d pooled vector."),
    "inceptionv3": ("inception_v3", "InceptionV3", 299, 2048,
                    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    "InceptionV3 (2015), 299 px; the study's best backbone."),
    "xception": ("xception", "Xception", 299, 2048, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "Xception (2016), 299 px, 2048-d."),
}
# The original study's VGG vectors: the 4096-d fc2 layer of the full network.
_FC2 = {
    "vgg16_fc2": ("vgg16", "VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    "vgg19_fc2": ("vgg19", "VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels.h5"),
}
# Approximate sizes of the ImageNet weight files downloaded on first use (Backbone.options["download_mb"]).
_DOWNLOAD_MB = {"vgg16": 59, "vgg19": 80, "vgg16_fc2": 553, "vgg19_fc2": 575, "resnet50": 95,
                "inceptionv3": 88, "xception": 84}
_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/{module}/{file}"
RANDOM_SEED = 1234  # --weights random: the same network in every process (the vector cache keys it as one)


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be downloaded (offline?); the message says which file to put where."""


def _keras_cache_file(file: str) -> Path:
    return Path.home() / ".keras" / "models" / file


def fetch_weights(module: str, file: str) -> Path:
    """Return the local weights file, downloading it into cache/weights/ on first use."""
    target = cache_dir("weights") / file
    if target.exists():
        return target
    if _keras_cache_file(file).exists():  # already downloaded by Keras itself
        shutil.copyfile(_keras_cache_file(file), target)
        return target
    import keras

    origin = _ORIGIN.format(module={"resnet50": "resnet"}.get(module, module), file=file)
    log.info("Downloading ImageNet weights %s from %s", file, origin)
    try:
        got = keras.utils.get_file(file, origin, cache_dir=str(cache_dir()), cache_subdir="weights")
    except Exception as exc:  # network errors come in many types: re-raised with what to do
        raise WeightsUnavailable(
            f"Could not download ImageNet weights {file} ({type(exc).__name__}: {exc}). "
            f"simlab needs the internet once per backbone. On an offline machine, download\n  {origin}\n"
            f"elsewhere and put it at\n  {target}\nor use the bundled backbone efficientnet_lite0."
        ) from exc
    return Path(got)


def _builder(module: str, cls: str, size: int, file: str, fc2: bool = False):
    def build(weights: str = "imagenet"):
        if weights not in ("imagenet", "random"):
            raise ValueError(f"weights must be 'imagenet' or 'random', not {weights!r}")
        import keras

        app = getattr(importlib.import_module(f"keras.applications.{module}"), cls)
        if fc2:
            full = app(weights=None, include_top=True, input_shape=(size, size, 3))
            load_or_seed(full, weights, module, file)
            return keras.Model(full.input, full.get_layer("fc2").output, name=f"{cls.lower()}_fc2")
        model = app(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
        load_or_seed(model, weights, module, file)
        return model

    return build


def load_or_seed(model, weights: str, module: str, file: str) -> None:
    """ImageNet weights from their file, or every random weight drawn again with a fixed seed."""
    if weights == "imagenet":
        model.load_weights(fetch_weights(module, file))
    else:
        seed_random_weights(model)


def seed_random_weights(model, seed: int = RANDOM_SEED) -> int:
    """Draw every randomly initialised weight of ``model`` again from its layer's own initialiser, seeded
    by ``seed`` and the weight's place in the model (layers in model order, initialisers in config order).

    Keras' applications leave their initialisers unseeded, so each draws a seed from the process's own
    random state: without this the same ``--weights random`` backbone is another network in every process.
    Weights whose initialiser is not random (zeros, ones: biases, batch-norm statistics) are already the
    same everywhere. Returns how many weights were drawn; a random initialiser whose weight cannot be
    found is an error, never skipped.
    """
    import keras

    seeds = itertools.count(seed)
    drawn = 0
    for layer in _layers(model):
        used: set[str] = set()
        for key, spec in layer.get_config().items():
            if not (key.endswith("_initializer") and isinstance(spec, dict)
                    and "seed" in (spec.get("config") or {})):
                continue  # not an initialiser, or one that draws nothing at random
            variable = _variable_of(layer, key.removesuffix("_initializer"), used)
            initializer = keras.initializers.deserialize(spec | {"config": spec["config"] | {"seed": next(seeds)}})
            if variable is not None:  # None: a weight the layer does not use (a bias with use_bias=False)
                variable.assign(initializer(variable.shape, variable.dtype))
                drawn += 1
    return drawn


def _layers(model):
    for layer in model.layers:
        yield from _layers(layer) if hasattr(layer, "layers") else (layer,)


def _variable_of(layer, base: str, used: set[str]):
    """The weight an initialiser ``<base>_initializer`` fills: ``<base>``, ``<base>_kernel``, or (a depthwise
    convolution's) ``kernel``."""
    for attr in (base, f"{base}_kernel", "kernel"):
        if attr not in used and hasattr(layer, attr):
            used.add(attr)
            return getattr(layer, attr)
    raise RuntimeError(f"Cannot seed {layer.name}: no weight for its {base}_initializer.")


def _preprocessor(module: str):
    def preprocess(x):
        return importlib.import_module(f"keras.applications.{module}").preprocess_input(x)

    return preprocess


for _name, (_module, _cls, _size, _dim, _file, _desc) in _APPS.items():
    register(Backbone(name=_name, input_size=_size, dim=_dim, build=_builder(_module, _cls, _size, _file),
                      preprocess=_preprocessor(_module), description=_desc, weights_file=_file,
                      options={"download_mb": _DOWNLOAD_MB[_name]}, explain="pooled"))  # pooling="avg"
for _name, (_module, _cls, _file) in _FC2.items():
    register(Backbone(name=_name, input_size=224, dim=4096, build=_builder(_module, _cls, 224, _file, fc2=True),
                      preprocess=_preprocessor(_module), weights_file=_file,
                      description=f"{_cls} fc2 layer (4096-d), as in the 2017 study.",
                      options={"download_mb": _DOWNLOAD_MB[_name]}))
