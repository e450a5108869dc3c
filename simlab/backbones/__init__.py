"""Registry of image backbones: one entry each, listed by the app and the CLI.

A backbone maps a batch of RGB images (float32, 0..255, ``size x size``) to one vector per
image. Its ``preprocess`` runs inside the input pipeline, its model only does the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from simlab.paths import cache_dir

WEIGHTS_CHOICES = ("imagenet", "random")


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    dim: int
    build: Callable[[str], "object"]  # build(weights) -> keras.Model taking preprocessed images
    preprocess: Callable  # tensor float32 0..255 (N, s, s, 3) -> model input
    description: str
    bundled: bool = False  # weights ship with simlab: works offline
    weights_file: str | None = None  # file name under cache/weights/ once downloaded or converted
    preprocessing_version: str = "1"  # bump when preprocess changes: it keys the vector cache
    options: dict = field(default_factory=dict)


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def _load_entries() -> None:
    # Imported for their side effect of registering (once: imports are cached); the bundled
    # backbone first, so that it lists first.
    from simlab.backbones import efficientnet_lite0  # noqa: F401
    from simlab.backbones import keras_apps  # noqa: F401
    from simlab.finetune import sync_tuned_backbones  # Siamese towers trained here: cache/runs/*/tower.json

    sync_tuned_backbones()


def list_backbones() -> list[Backbone]:
    _load_entries()
    return sorted(BACKBONES.values(), key=lambda b: not b.bundled)


def get_backbone(name: str) -> Backbone:
    _load_entries()
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}. Choose one of: {', '.join(BACKBONES)}") from None


DEFAULT_BACKBONE = "efficientnet_lite0"


def weights_status(name: str) -> str:
    """'bundled', 'cached', or 'download' (needs the internet on first use)."""
    bb = get_backbone(name)
    if bb.bundled:
        return "bundled"
    if bb.weights_file and (cache_dir("weights") / bb.weights_file).exists():
        return "cached"
    return "download"
