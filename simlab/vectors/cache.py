"""The on-disk vector cache: the one module that knows its layout.

One folder per backbone configuration (:func:`config_key`: backbone, weights, image size, fit,
pooling, preprocessing and pipeline versions, and the decoder when it is not Pillow) under
``cache/vectors/``, holding one ``.npz`` per dataset fingerprint with three arrays:

- ``vectors``: float32 ``(N, D)``, the dataset's images in order, those that failed left out;
- ``digests``: the ``N`` images' content digests, row for row;
- ``bad``: a JSON object ``{digest: reason}`` for the images that could not be vectorised.

A vectorisation in progress keeps its finished batches as *part* files beside the set,
``<fingerprint>.part-<digest>.npz`` (same three arrays, a few images each; the digest is of the
part's image digests): :meth:`VectorCache.bank` reads them like any set, so a run killed half-way
computes only the rest when started again. Writing the full set removes its parts; parts are never
listed as sets.

Everyone else goes through :class:`VectorCache` (or :func:`cached_sets` / :func:`read_path` for
what is listed). Files are written atomically, and a file that does not hold what it should
raises :class:`CorruptCache`: the caller treats it as a miss and computes the vectors again. "What it
should" includes finite values and, for a cache opened with ``dim``, vectors of that width (a set of
10-d vectors under a 1280-d backbone's key is not that backbone's vectors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simlab.backbones import get_backbone
from simlab.paths import atomic_path, cache_dir
from simlab.vectors.decoders import preferred_decoder

log = logging.getLogger(__name__)

PIPELINE_VERSION = "1"  # bump when decoding or resizing changes: it keys the cache
FITS = ("crop", "pad")
PART = ".part-"  # between a fingerprint and a part's digest in a part file's name


class CorruptCache(ValueError):
    """A cached vector file that cannot be read or does not hold what it should: recompute it."""


@dataclass
class CachedVectors:
    vectors: np.ndarray  # (N, D) float32
    digests: list[str]  # N content digests, row for row
    bad: dict[str, str] = field(default_factory=dict)  # digest -> why it could not be vectorised


def config_key(backbone: str, weights: str, fit: str = "crop", decoder: str | None = None) -> str:
    """The cache folder name of one backbone configuration: readable, plus a digest of all of it.

    ``decoder``: the one that makes the vectors (default: the one this machine uses,
    :func:`simlab.vectors.decoders.preferred_decoder`). Pillow's sets keep the key they always had;
    another decoder's pixels differ by a grey level or so, so its vectors get their own sets rather
    than mix with Pillow's in one."""
    bb = get_backbone(backbone)
    decoder = decoder or preferred_decoder()
    config = {"backbone": bb.name, "weights": weights, "size": bb.input_size, "fit": fit, "pooling": "avg",
              "preprocess": bb.preprocessing_version, "pipeline": PIPELINE_VERSION}
    if decoder != "pillow":
        config["decoder"] = decoder
    digest = hashlib.blake2b(json.dumps(config, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"{bb.name}-{weights}-{bb.input_size}-{fit}-{'' if decoder == 'pillow' else decoder + '-'}{digest}"


class VectorCache:
    """The cached vector sets of one backbone configuration, one file per dataset fingerprint.

    >>> cache = VectorCache("efficientnet_lite0", "imagenet")
    >>> cache.write(dataset.fingerprint, vectors, dataset.digests)
    >>> cache.read(dataset.fingerprint).vectors
    """

    def __init__(self, backbone: str, weights: str, fit: str = "crop", decoder: str | None = None,
                 dim: int | None = None):
        """``dim``: the width every vector read back must have (the backbone's dimension); a set of
        another width is :class:`CorruptCache`. None: any width (the file's arrays are still checked)."""
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
        self.backbone, self.weights, self.fit, self.dim = backbone, weights, fit, dim
        self.decoder = decoder or preferred_decoder()
        self.key = config_key(backbone, weights, fit, self.decoder)

    def __repr__(self) -> str:
        return f"VectorCache({self.key!r})"

    @property
    def folder(self) -> Path:
        return cache_dir("vectors", self.key)

    def path(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.npz"

    def has(self, fingerprint: str) -> bool:
        return self.path(fingerprint).exists()

    def read(self, fingerprint: str) -> CachedVectors:
        """The set cached for this fingerprint. Raises FileNotFoundError when there is none,
        :class:`CorruptCache` when the file is unreadable or its arrays do not fit together."""
        return read_path(self.path(fingerprint), self.dim)

    def write(self, fingerprint: str, vectors: np.ndarray, digests, bad: dict[str, str] | None = None) -> Path:
        """Store a set (atomically: a killed process leaves no partial file under its name), then
        remove the parts a vectorisation of this fingerprint kept on its way (they are in the set)."""
        target = _save(self.path(fingerprint), vectors, digests, bad)
        for part in self._part_files(fingerprint):
            part.unlink(missing_ok=True)
        return target

    def write_part(self, fingerprint: str, vectors: np.ndarray, digests, bad: dict[str, str] | None = None) -> Path:
        """Keep some finished vectors of a set still being computed (atomically, one file per part)."""
        digests = [str(d) for d in digests]
        name = hashlib.blake2b("\n".join([*digests, *sorted(bad or {})]).encode(), digest_size=8).hexdigest()
        return _save(self.folder / f"{fingerprint}{PART}{name}.npz", vectors, digests, bad)

    def parts(self, fingerprint: str) -> CachedVectors:
        """What the parts kept for this fingerprint hold, together (unreadable parts skipped)."""
        vectors, digests, bad = [], [], {}
        for f in self._part_files(fingerprint):
            try:
                part = read_path(f, self.dim)
            except (OSError, CorruptCache) as exc:  # computed again, never fatal
                log.warning("Skipping the unreadable vector cache part %s: %s", f, exc)
                continue
            vectors.append(part.vectors)
            digests.extend(part.digests)
            bad.update(part.bad)
        dim = vectors[0].shape[1] if vectors else get_backbone(self.backbone).dim
        return CachedVectors(np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), digests, bad)

    def _part_files(self, fingerprint: str) -> list[Path]:
        prefix = f"{fingerprint}{PART}"
        return sorted(f for f in _set_files(self.folder) if f.name.startswith(prefix))

    def bank(self, wanted) -> dict[str, np.ndarray]:
        """Vectors for the wanted digests found in any cached set of this configuration."""
        wanted = set(wanted)
        found: dict[str, np.ndarray] = {}
        for f in _set_files(self.folder):
            try:
                cached = read_path(f, self.dim)
            except (OSError, CorruptCache) as exc:  # an unreadable file is skipped, never fatal
                log.warning("Skipping the unreadable vector cache file %s: %s", f, exc)
                continue
            found.update((d, cached.vectors[i]) for i, d in enumerate(cached.digests)
                         if d in wanted and d not in found)
            if len(found) == len(wanted):
                break
        return found


def read_path(path: str | Path, dim: int | None = None) -> CachedVectors:
    """Read and check one cached set file (a path from :func:`cached_sets` or :meth:`VectorCache.path`):
    a 2-D float32 array of finite values, one row per digest, ``dim`` wide when ``dim`` is given."""
    path = Path(path)
    try:
        with np.load(path) as z:
            vectors, digests, bad = z["vectors"], z["digests"].tolist(), json.loads(str(z["bad"]))
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptCache(f"{path}: unreadable vector cache file ({type(exc).__name__}: {exc})") from exc
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise CorruptCache(f"{path}: vectors are {vectors.dtype} {vectors.shape}, not a 2-D float32 array")
    if len(vectors) != len(digests):
        raise CorruptCache(f"{path}: {len(vectors)} vectors for {len(digests)} digests")
    if dim is not None and vectors.shape[1] != dim:
        raise CorruptCache(f"{path}: vectors are {vectors.shape[1]}-d, the backbone's are {dim}-d")
    if not np.isfinite(vectors).all():
        rows = int((~np.isfinite(vectors)).any(axis=1).sum())
        raise CorruptCache(f"{path}: {rows} of {len(vectors)} vectors hold non-finite values (NaN or infinity)")
    if not isinstance(bad, dict):
        raise CorruptCache(f"{path}: 'bad' is not a JSON object")
    return CachedVectors(vectors, [str(d) for d in digests], bad)


def _save(target: Path, vectors: np.ndarray, digests, bad: dict[str, str] | None) -> Path:
    vectors = np.asarray(vectors)
    digests = [str(d) for d in digests]
    if vectors.ndim != 2 or len(vectors) != len(digests):
        raise ValueError(f"{len(digests)} digests for vectors of shape {vectors.shape}")
    with atomic_path(target, suffix=".npz") as tmp:
        np.savez(tmp, vectors=vectors.astype(np.float32, copy=False), digests=np.array(digests),
                 bad=json.dumps(dict(bad or {})))
    return target


def _set_files(folder: Path, parts: bool = True) -> list[Path]:
    """The files in a configuration's folder: sets, and parts unless ``parts=False`` (never the
    ``.NAME.*`` temp file of a write in progress)."""
    return [f for f in folder.glob("*.npz") if not f.name.startswith(".") and (parts or PART not in f.name)]


def _npz_shape(f: Path, name: str = "vectors") -> tuple[int, ...]:
    """Shape of one array in an ``.npz`` from its header alone (the data is not read)."""
    with zipfile.ZipFile(f) as zf, zf.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)[0]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)[0]
    with np.load(f) as z:  # a header version this code does not know: read the array
        return z[name].shape


def cached_sets() -> list[dict]:
    """Every cached vector set: backbone configuration, dataset fingerprint, count, dim, size on disk."""
    out = []
    files = [f for folder in cache_dir("vectors").iterdir() if folder.is_dir() for f in _set_files(folder, parts=False)]
    for f in sorted(files):
        try:
            n, d = _npz_shape(f)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # torn? vectorize recomputes it
            log.warning("Not listing the unreadable vector cache file %s: %s", f, exc)
            continue
        out.append({"key": f.parent.name, "fingerprint": f.stem, "images": n, "dim": d,
                    "mb": round(f.stat().st_size / 2**20, 2), "path": str(f),
                    "backbone": f.parent.name.split("-")[0], "weights": f.parent.name.split("-")[1]})
    return out
