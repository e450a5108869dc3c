"""Vision transformers from KerasHub presets: DINOv2 ViT-S/14 and ViT-B/14, the image towers of CLIP
ViT-B/16 and SigLIP2 B/16.

One table, :data:`ENTRIES`: each row names the KerasHub preset, the image tower's hyper-parameters (as in
the preset's ``config.json``, so ``--weights random`` builds the same network with no download), the
input normalisation of the preset's image converter, and which output becomes the vector:

- DINOv2: the CLS token of the last layer (after the final layer norm), as DINOv2's retrieval evaluations;
- CLIP: the model's own image embedding (CLS token, post layer norm, the visual projection to 512-d);
- SigLIP2: the model's own pooled output (the attention-pooling head over all patch tokens).

Every vector is L2-normalised inside the model.

Pretrained weights (``--weights imagenet``: the preset's weights; the name is shared with the other
backbones) come from the preset's Kaggle handle on first use, into ``cache/weights/keras_hub/<preset>/``,
like Keras' ImageNet weights. A folder with the preset's files (``config.json``, ``model.weights.h5``)
can also be put there by hand, or in ``$SIMLAB_KERAS_HUB_DIR/<preset>/`` (looked at first): KerasHub
loads a preset from a local folder. Offline with neither, building stops with
:class:`PresetUnavailable`: one message naming the preset, its files and these two folders.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from simlab.backbones import Backbone, register
from simlab.paths import cache_dir

if TYPE_CHECKING:  # annotations only: listing the registry imports neither Keras nor KerasHub
    import keras

log = logging.getLogger(__name__)

ENV_DIR = "SIMLAB_KERAS_HUB_DIR"  # a folder of preset folders, looked at before the cache
CACHE_SUBDIR = "keras_hub"  # under cache/weights/
PRESET_FILES = ("config.json", "model.weights.h5")  # what loading the backbone reads (plus metadata.json)
RANDOM_SEED = 1234  # random weights are the same in every process: the vector cache relies on it
_SEEDING = threading.Lock()  # one seeded build at a time: two would interleave their draws
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Entry:
    name: str  # simlab's registry name
    title: str
    preset: str  # KerasHub preset name (also the local folder's name)
    handle: str  # where KerasHub downloads it from
    family: str  # "dinov2" | "clip" | "siglip": which KerasHub classes build it
    tower: dict  # the image tower's constructor arguments, as in the preset's config.json
    embedding: str  # what the vector is, in words
    dim: int
    input_size: int
    mean: tuple[float, float, float]  # of pixels scaled to 0..1, per RGB channel
    std: tuple[float, float, float]
    download_mb: int  # the whole preset (KerasHub presets of image-text models hold both towers)
    projection_dim: int = 0  # CLIP: the visual projection after the pooled CLS token

    @property
    def kaggle_handle(self) -> str:
        return self.handle.removeprefix("kaggle://")


def _vit(patch: int, hidden: int, layers: int, heads: int, mlp: int, **more) -> dict:
    return {"patch_size": patch, "hidden_dim": hidden, "num_layers": layers, "num_heads": heads,
            "intermediate_dim": mlp, **more}


# DINOv2's presets keep the 518 px position grid of facebook/dinov2-*; KerasHub interpolates it to the
# input size once when the model is built (224 px: 16 x 16 patches of 14 px).
_DINOV2 = {"layer_scale_init_value": 1.0, "position_embedding_shape": (518, 518, 3)}
ENTRIES = {
    e.name: e
    for e in (
        Entry("dinov2_small", "DINOv2 ViT-S/14", "dinov2_small", "kaggle://keras/dinov2/keras/dinov2_small/1",
              "dinov2", _vit(14, 384, 12, 6, 1536, **_DINOV2), "CLS token (final layer norm)", 384, 224,
              IMAGENET_MEAN, IMAGENET_STD, 90),
        Entry("dinov2_base", "DINOv2 ViT-B/14", "dinov2_base", "kaggle://keras/dinov2/keras/dinov2_base/1",
              "dinov2", _vit(14, 768, 12, 12, 3072, **_DINOV2), "CLS token (final layer norm)", 768, 224,
              IMAGENET_MEAN, IMAGENET_STD, 350),
        Entry("clip_vit_b16", "CLIP ViT-B/16 image tower", "clip_vit_base_patch16",
              "kaggle://keras/clip/keras/clip_vit_base_patch16/3", "clip",
              _vit(16, 768, 12, 12, 3072, intermediate_activation="quick_gelu"),
              "CLIP image embedding (CLS token, post layer norm, visual projection)", 512, 224,
              CLIP_MEAN, CLIP_STD, 600, projection_dim=512),
        Entry("siglip2_b16", "SigLIP2 B/16 image tower", "siglip2_base_patch16_224",
              "kaggle://keras/siglip/keras/siglip2_base_patch16_224/1", "siglip",
              _vit(16, 768, 12, 12, 3072, intermediate_activation="gelu_approximate", layer_norm_epsilon=1e-6),
              "SigLIP2 pooled output (attention-pooling head over the patch tokens)", 768, 224,
              (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1500),
    )
}


class PresetUnavailable(RuntimeError):
    """A preset's weights are neither on disk nor downloadable; the message says what to put where."""


def entry(name: str) -> Entry:
    if name not in ENTRIES:
        raise ValueError(f"Unknown KerasHub backbone {name!r}. Choose one of: {', '.join(ENTRIES)}")
    return ENTRIES[name]


# --------------------------------------------------------------------------- where the weights are


def cache_preset_dir(name: str) -> Path:
    """Where the preset is downloaded to: ``cache/weights/keras_hub/<preset>/`` (may not exist)."""
    return cache_dir("weights", CACHE_SUBDIR) / entry(name).preset


def candidate_dirs(name: str) -> list[Path]:
    """The folders looked at, in order: ``$SIMLAB_KERAS_HUB_DIR/<preset>/``, then the cache's."""
    first = [Path(os.environ[ENV_DIR]).expanduser() / entry(name).preset] if os.environ.get(ENV_DIR) else []
    return [*first, cache_preset_dir(name)]


def is_preset_dir(folder: Path) -> bool:
    """A local KerasHub preset: ``config.json`` and the weights (one file, or sharded with an index)."""
    return (folder / "config.json").is_file() and (
        (folder / "model.weights.h5").is_file() or (folder / "model.weights.json").is_file())


def local_preset(name: str) -> Path | None:
    """The first folder of :func:`candidate_dirs` holding the preset, or None."""
    return next((d for d in candidate_dirs(name) if is_preset_dir(d)), None)


def _missing_message(e: Entry, why: str) -> str:
    env = os.environ.get(ENV_DIR)
    shared = f"{Path(env).expanduser() / e.preset}/ (from ${ENV_DIR})" if env else f"${ENV_DIR}/{e.preset}/"
    return (
        f"The KerasHub preset {e.preset} ({e.title}, about {e.download_mb} MB) for backbone {e.name} is not on "
        f"this machine and could not be downloaded from {e.handle} ({why}). simlab needs the internet once per "
        f"preset. On an offline machine, download the preset's folder ({', '.join(PRESET_FILES)}, metadata.json "
        f"and the rest) elsewhere, e.g. python -c \"import kagglehub; "
        f"kagglehub.model_download('{e.kaggle_handle}', output_dir='{e.preset}')\", and put its files in "
        f"{cache_preset_dir(e.name)}/ or in {shared}. "
        f"--weights random needs no download (meaningless vectors, for tests)."
    )


def _why(exc: Exception) -> str:
    """A short reason: no connection (requests' errors are OSErrors), else the error's first words."""
    if isinstance(exc, OSError) and type(exc).__module__.startswith(("requests", "urllib3", "socket")):
        return f"no connection: {type(exc).__name__}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def fetch_preset(name: str) -> Path:
    """The local preset folder of ``name``, downloading it into the cache on first use."""
    e = entry(name)
    if (found := local_preset(name)) is not None:
        return found
    target = cache_preset_dir(name)
    try:
        import kagglehub  # a dependency of keras-hub
    except ImportError as exc:
        raise PresetUnavailable(_missing_message(e, f"kagglehub is not installed: {exc}")) from exc
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{e.preset}.partial-"))
    log.info("Downloading the KerasHub preset %s (about %d MB) from %s", e.preset, e.download_mb, e.handle)
    try:
        got = Path(kagglehub.model_download(e.kaggle_handle, output_dir=str(partial)))
        if not is_preset_dir(got):
            raise PresetUnavailable(_missing_message(e, f"the download in {got} has no {' / '.join(PRESET_FILES)}"))
        if target.exists():  # a broken folder from before: replaced by the complete download
            shutil.rmtree(target)
        os.replace(got, target)
    except PresetUnavailable:
        raise
    except Exception as exc:  # network errors come in many types: one message with what to do
        raise PresetUnavailable(_missing_message(e, _why(exc))) from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def weights_present(name: str) -> bool:
    return local_preset(name) is not None


# --------------------------------------------------------------------------- the network


def preprocess_for(e: Entry):
    """RGB 0..255 -> ``(x / 255 - mean) / std``, as the preset's image converter (numpy or tensors)."""
    scale = np.asarray([1.0 / (255.0 * s) for s in e.std], np.float32)
    offset = np.asarray([-m / s for m, s in zip(e.mean, e.std, strict=True)], np.float32)

    def preprocess(x):
        if isinstance(x, np.ndarray):
            return (x.astype(np.float32) * scale + offset).astype(np.float32)
        from keras import ops

        return ops.add(ops.multiply(x, scale), offset)

    return preprocess


def _tower_classes(family: str):
    if family == "dinov2":
        from keras_hub.models import DINOV2Backbone

        return DINOV2Backbone, None
    if family == "clip":
        from keras_hub.models import CLIPBackbone, CLIPVisionEncoder

        return CLIPVisionEncoder, CLIPBackbone
    from keras_hub.models import SigLIPBackbone, SigLIPVisionEncoder

    return SigLIPVisionEncoder, SigLIPBackbone


def _dtype() -> str:
    import keras

    return keras.mixed_precision.global_policy().name  # mixed_float16 while simlab vectorises on a GPU


def _random_tower(e: Entry):
    """The image tower (and CLIP's projection) built from :attr:`Entry.tower`, seeded random weights."""
    import keras

    tower_cls, _ = _tower_classes(e.family)
    with _SEEDING:
        state = random.getstate()
        random.seed(RANDOM_SEED)  # Keras' unseeded initialisers draw their seeds from Python's random
        try:
            tower = tower_cls(**e.tower, image_shape=(e.input_size, e.input_size, 3), dtype=_dtype(),
                              name=f"{e.family}_image_tower")
            projection = keras.layers.Dense(e.projection_dim, use_bias=False, dtype=_dtype(),
                                            name="vision_projection") if e.projection_dim else None
        finally:
            random.setstate(state)
    return tower, projection


def _check_config(e: Entry, tower, folder: Path) -> None:
    """The preset's tower must be the one of the table: else --weights random would build another network."""
    config = tower.get_config()
    wrong = {k: (config.get(k), v) for k, v in e.tower.items()
             if k != "position_embedding_shape" and config.get(k) != v}
    if wrong:
        got = ", ".join(f"{k} {have} (expected {want})" for k, (have, want) in wrong.items())
        raise ValueError(f"The preset folder {folder} does not hold {e.title}: {got}. "
                         f"Put the {e.preset} preset there, or remove the folder to download it again.")


def _pretrained_tower(e: Entry):
    """The image tower (and CLIP's projection) of the preset, loaded from its local folder."""
    folder = fetch_preset(e.name)
    tower_cls, full_cls = _tower_classes(e.family)
    log.info("Loading the KerasHub preset %s from %s", e.preset, folder)
    if full_cls is None:  # DINOv2: the preset is the tower; its position grid is resized to the input size
        tower = tower_cls.from_preset(str(folder), image_shape=(e.input_size, e.input_size, 3), dtype=_dtype())
        projection = None
    else:  # an image-text model: keep the image side
        full = full_cls.from_preset(str(folder), dtype=_dtype())
        tower = full.vision_encoder
        projection = getattr(full, "vision_projection", None) if e.projection_dim else None
    _check_config(e, tower, folder)
    if tuple(tower.image_shape[:2]) != (e.input_size, e.input_size):
        raise ValueError(f"The preset folder {folder} holds {e.preset} at {tower.image_shape[0]} px, "
                         f"not {e.input_size} px: put the {e.preset} preset there.")
    return tower, projection


def build(name: str, weights: str = "imagenet") -> keras.Model:
    """Preprocessed images (``input_size`` px) -> L2-normalised vectors of ``dim``.

    ``weights="imagenet"``: the preset's pretrained weights (downloaded on first use);
    ``"random"``: the same architecture with seeded random weights, no download.
    """
    e = entry(name)
    if weights not in ("imagenet", "random"):
        raise ValueError(f"weights must be 'imagenet' (the preset's) or 'random', not {weights!r}")
    import keras

    tower, projection = _random_tower(e) if weights == "random" else _pretrained_tower(e)
    images = keras.Input((e.input_size, e.input_size, 3), name="image")
    out = tower({"images": images})
    if e.family in ("dinov2", "clip"):  # (batch, tokens, hidden): the CLS token is the first
        out = out[:, 0, :]
    if projection is not None:
        out = projection(out)
    out = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="l2_normalise")(out)
    return keras.Model(images, out, name=name)


for _e in ENTRIES.values():
    register(
        Backbone(
            name=_e.name,
            input_size=_e.input_size,
            dim=_e.dim,
            build=functools.partial(build, _e.name),
            preprocess=preprocess_for(_e),
            description=f"{_e.title} (KerasHub preset {_e.preset}, {_e.dim}-d, {_e.input_size} px); "
                        f"vector: {_e.embedding}, L2-normalised; downloads about {_e.download_mb} MB on first use",
            weights_present=functools.partial(weights_present, _e.name),
            options={"source": "keras_hub", "preset": _e.preset, "handle": _e.handle, "embedding": _e.embedding,
                     "weights_host": "api.kaggle.com", "download_mb": _e.download_mb},
            explain="tokens" if _e.family in ("dinov2", "clip") else "",  # SigLIP2: attention pooling, no map
        )
    )
