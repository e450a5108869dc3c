"""Trained Siamese towers as backbones: the scheme behind every ``siamese-<run id>`` name.

Importing this module (``import simlab.finetune`` does) registers the ``siamese-`` scheme with
:func:`simlab.backbones.register_scheme`; the registry never imports it, so whoever may meet such a
name (the CLI, the job worker, the pages) imports :mod:`simlab.finetune` first. A tower is resolved
lazily: ``cache/runs/<run id>/tower.json`` is read only when such a name is asked for, and the folder
is scanned only when backbones are listed. Light on purpose: Keras loads only when a tower is built.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from simlab.backbones import Backbone, get_backbone, register_scheme
from simlab.finetune.config import preprocess_fn
from simlab.paths import cache_dir

log = logging.getLogger(__name__)

TUNED_PREFIX = "siamese-"
_towers: dict[str, Backbone] = {}  # tower folder -> its backbone entry, read once
_lock = threading.Lock()


def tuned_name(run_id: str) -> str:
    return f"{TUNED_PREFIX}{run_id}"


def run_folder(run_id: str) -> Path:
    """Where a run keeps its checkpoint (best.keras), and for Siamese runs its tower (created)."""
    return cache_dir("runs", run_id)


def _tower_entry(folder: Path) -> Backbone:
    """The backbone entry of the tower saved in ``folder`` (tower.json + tower.keras)."""
    run_id = folder.name
    meta = json.loads((folder / "tower.json").read_text())
    base = meta["preprocess"]
    version = "1" if base == "unit" else get_backbone(base).preprocessing_version

    def build(weights: str | None = None):
        # The tower carries its own trained weights; ``weights`` only names those of the base it grew from.
        from simlab.finetune.layers import load_checkpoint  # imports Keras: only when a tower is built

        return load_checkpoint(folder / "tower.keras")

    return Backbone(
        name=tuned_name(run_id), input_size=int(meta["input_size"]), dim=int(meta["dim"]), build=build,
        preprocess=preprocess_fn(base),
        description=f"Siamese tower of fine-tune run {run_id}: {meta['base']} + {meta['loss']} "
                    f"-> {meta['dim']}-d (trained here, works offline)",
        bundled=True, preprocessing_version=f"{version}-tuned",
        options={"tuned": True, "run_id": run_id, "folder": str(folder), "base": meta["base"],
                 "base_weights": meta["base_weights"]})


def _known(folder: Path, reread: bool = False) -> Backbone:
    key = str(folder)
    with _lock:
        entry = None if reread else _towers.get(key)
    if entry is None:
        entry = _tower_entry(folder)
        with _lock:
            _towers[key] = entry
    return entry


def register_tuned(run_id: str) -> Backbone:
    """The Siamese tower of a run, just saved, as the backbone ``siamese-<run id>``."""
    return _known(run_folder(run_id), reread=True)


# --------------------------------------------------------------------------- the backbone scheme


def find_backbone(name: str) -> Backbone | None:
    """``siamese-<run id>`` -> that run's tower, if the current cache holds one; else None."""
    if not name.startswith(TUNED_PREFIX):
        return None
    run_id = name[len(TUNED_PREFIX):]
    if not run_id or Path(run_id).name != run_id:
        return None
    folder = cache_dir("runs") / run_id
    if not (folder / "tower.json").is_file():
        return None
    try:
        return _known(folder)
    except Exception:  # an unreadable tower is not a backbone; never fatal to the registry
        log.warning("Skipping the unreadable tower in %s", folder, exc_info=True)
        return None


def discover_backbones() -> list[Backbone]:
    """Every tower under ``cache/runs/*/tower.json`` (unreadable ones skipped, with a warning)."""
    found = []
    for meta in sorted(cache_dir("runs").glob("*/tower.json")):
        try:
            found.append(_known(meta.parent))
        except Exception:  # as above: skipped, never fatal
            log.warning("Skipping the unreadable tower in %s", meta.parent, exc_info=True)
    return found


register_scheme(TUNED_PREFIX, find_backbone, discover_backbones)
