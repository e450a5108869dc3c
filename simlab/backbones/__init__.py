"""Registry of image backbones: one entry each, listed by the app and the CLI.

A backbone maps a batch of RGB images (float32, 0..255, ``size x size``) to one vector per
image. Its ``preprocess`` runs inside the input pipeline, its model only does the forward pass.

Backbones come from the modules of this folder, imported by name once, on first use: each registers
its fixed entries with :func:`register`. A new backbone is one module here that calls :func:`register`.

Backbones whose entries come and go (towers trained by a higher layer) are routed by name prefix, as
timm routes names by scheme: the layer that owns them calls :func:`register_scheme` when it is
imported, with ``find(name) -> Backbone | None`` (asked for names with that prefix that are not
registered) and ``discover() -> list[Backbone]`` (asked when backbones are listed). The registry never
imports such a layer: whoever may meet its names (the CLI, the job worker, the pages) imports it first.

The names are handed to :mod:`simlab.options` (option ``backbone``), so they are validated and offered
like every other choice.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from simlab import options
from simlab.paths import cache_dir

log = logging.getLogger(__name__)

WEIGHTS_CHOICES = ("imagenet", "random")
DEFAULT_BACKBONE = "efficientnet_lite0"


def provider_paths() -> list[str]:
    """Every module of this folder, in name order."""
    here = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [f"{__name__}.{name}" for name in here]


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
    # how simlab.explain splits a pair's cosine over image regions: "pooled" (the model ends with a global
    # average pooling: its input is the map), "tokens" (ViT patch tokens), "bit_grid" (hash bits on a grid),
    # "bits" (hash bits, no spatial map), "" (none)
    explain: str = ""


@dataclass(frozen=True)
class Scheme:
    """Backbones named ``<prefix>...`` that a higher layer owns and resolves (see :func:`register_scheme`)."""

    prefix: str
    find: Callable[[str], Backbone | None]
    discover: Callable[[], list[Backbone]] | None = None


BACKBONES: dict[str, Backbone] = {}
SCHEMES: dict[str, Scheme] = {}
_providers: list[ModuleType] = []
_lock = threading.RLock()


def register(backbone: Backbone) -> Backbone:
    BACKBONES[backbone.name] = backbone
    return backbone


def register_scheme(prefix: str, find: Callable[[str], Backbone | None],
                    discover: Callable[[], list[Backbone]] | None = None) -> Scheme:
    """Route names starting with ``prefix`` to ``find(name) -> Backbone | None``; ``discover()`` lists
    those that exist now. Called by the module that owns such backbones, when it is imported (again: the
    newer functions win)."""
    if not prefix:
        raise ValueError("A backbone scheme needs a non-empty name prefix.")
    scheme = Scheme(prefix, find, discover)
    with _lock:
        SCHEMES[prefix] = scheme
    return scheme


def scheme_modules() -> list[str]:
    """The modules that registered the schemes in use, by dotted path: a fresh process (a Ray worker)
    imports them to resolve the same names as this one."""
    with _lock:
        return sorted({s.find.__module__ for s in SCHEMES.values()})


def providers() -> list[ModuleType]:
    """The modules of this folder, imported by name on the first call."""
    with _lock:
        if not _providers:
            _providers.extend([importlib.import_module(path) for path in provider_paths()])
    return list(_providers)


def _scheme_of(name: str) -> Scheme | None:
    """The scheme of the longest prefix ``name`` starts with."""
    with _lock:
        matches = [s for prefix, s in SCHEMES.items() if name.startswith(prefix)]
    return max(matches, key=lambda s: len(s.prefix), default=None)


def list_backbones() -> list[Backbone]:
    """Every backbone: the registered ones, then those the schemes discover; bundled ones first."""
    providers()
    found = list(BACKBONES.values())
    with _lock:
        schemes = list(SCHEMES.values())
    for scheme in schemes:
        if scheme.discover is not None:
            found += [b for b in scheme.discover() if b.name not in BACKBONES]
    return sorted(found, key=lambda b: not b.bundled)


def backbone_names() -> list[str]:
    """The names of :func:`list_backbones`: the choices of option ``backbone``."""
    return [b.name for b in list_backbones()]


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``: a registered one, else the one its name's scheme finds."""
    providers()
    if name in BACKBONES:
        return BACKBONES[name]
    scheme = _scheme_of(name)
    if scheme is not None and (found := scheme.find(name)) is not None:
        return found
    names = ", ".join(backbone_names())
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


options.register_choices("backbone", backbone_names)
