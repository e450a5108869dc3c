"""Registry of image backbones: one entry each, listed by the app and the CLI.

A backbone maps a batch of RGB images (float32, 0..255, ``size x size``) to one vector per
image. Its ``preprocess`` runs inside the input pipeline, its model only does the forward pass.

Backbones come from providers, imported by name once, on first use (the registry imports no
provider itself): every module of this folder, then the modules named by dotted path in
:data:`PROVIDERS`. A new backbone is one module here that calls :func:`register`. A provider registers fixed
entries with :func:`register` when imported; one whose entries come and go (towers trained here)
also defines ``find_backbone(name) -> Backbone | None``, asked for names not registered, and
``discover_backbones() -> list[Backbone]``, asked when backbones are listed.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from simlab.paths import cache_dir

log = logging.getLogger(__name__)

WEIGHTS_CHOICES = ("imagenet", "random")
DEFAULT_BACKBONE = "efficientnet_lite0"

#: Providers that live outside this folder, by dotted path.
PROVIDERS = (
    "simlab.finetune.towers",  # Siamese towers trained here: siamese-<run id>, from cache/runs/<id>/tower.json
)


def provider_paths() -> list[str]:
    """Every module of this folder (in name order), then :data:`PROVIDERS`."""
    here = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [f"{__name__}.{name}" for name in here] + list(PROVIDERS)


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    dim: int
    build: Callable[[str], object]  # build(weights) -> keras.Model taking preprocessed images
    preprocess: Callable  # tensor float32 0..255 (N, s, s, 3) -> model input
    description: str
    bundled: bool = False  # weights ship with simlab: works offline
    weights_file: str | None = None  # file name under cache/weights/ once downloaded or converted
    preprocessing_version: str = "1"  # bump when preprocess changes: it keys the vector cache
    options: dict = field(default_factory=dict)
    # whether the weights are on disk, for backbones whose weights are not one file under cache/weights/
    weights_present: Callable[[], bool] | None = None


BACKBONES: dict[str, Backbone] = {}
_providers: list[ModuleType] = []
_lock = threading.RLock()


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def providers() -> list[ModuleType]:
    """The provider modules, imported by name on the first call."""
    with _lock:
        if not _providers:
            _providers.extend([importlib.import_module(path) for path in provider_paths()])
    return list(_providers)


def list_backbones() -> list[Backbone]:
    """Every backbone: the registered ones, then those providers discover; bundled ones first."""
    loaded = providers()
    found = list(BACKBONES.values())
    for provider in loaded:
        if discover := getattr(provider, "discover_backbones", None):
            found += [b for b in discover() if b.name not in BACKBONES]
    return sorted(found, key=lambda b: not b.bundled)


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``: a registered one, else one a provider finds."""
    loaded = providers()
    if name in BACKBONES:
        return BACKBONES[name]
    for provider in loaded:
        find = getattr(provider, "find_backbone", None)
        if find is not None and (found := find(name)) is not None:
            return found
    names = ", ".join(b.name for b in list_backbones())
    raise ValueError(f"Unknown backbone {name!r}. Choose one of: {names}")


def weights_status(name: str) -> str:
    """'bundled' (ship with simlab), 'cached' (on disk), or 'download' (needs the internet on first use)."""
    bb = get_backbone(name)
    if bb.bundled:
        return "bundled"
    if bb.weights_present is not None:
        present = bb.weights_present()
    else:
        present = bool(bb.weights_file) and (cache_dir("weights") / bb.weights_file).exists()
    return "cached" if present else "download"
