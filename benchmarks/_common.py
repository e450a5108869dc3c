"""Helpers shared by the benchmark scripts: test photos, timing, tables and JSON output.

Not part of simlab: nothing here is imported by the app or the core.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter would hide the tables

PHOTO_VERSION = "2"
HOLIDAYS_VERSION = "1"
# Benchmark scratch space: <simlab cache>/bench, fixed when this module is imported (before a
# script points SIMLAB_CACHE at its own isolated cache with use_bench_cache()).
BENCH_ROOT = Path(os.environ.get("SIMLAB_CACHE") or REPO_ROOT / "cache") / "bench"

# The grid's synthetic backbones: Holidays-sized vector sets, as if vectorised already.
GRID_BACKBONES = {"vgg16": 512, "vgg16_fc2": 4096, "resnet50": 2048, "inceptionv3": 2048, "xception": 2048}


def bench_dir(*parts: str) -> Path:
    """Scratch space for benchmark inputs (git-ignored, like the rest of cache/)."""
    path = BENCH_ROOT.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def use_bench_cache(name: str = "simlab-cache") -> Path:
    """Point simlab at a benchmark's own cache (vectors, datasets memo, run store), away from the user's.

    grid.py and pages.py share the default one (pages render the grid's runs).
    """
    path = bench_dir(name)
    os.environ["SIMLAB_CACHE"] = str(path)
    return path


def holidays_group_sizes(n_images: int = 1491, n_groups: int = 500, positives: int = 2072,
                         seed: int = 0) -> list[int]:
    """Group sizes with Holidays' totals: 1,491 images, 500 groups, 2,072 positive pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.full(n_groups, 2)
    for g in rng.choice(n_groups, n_images - 2 * n_groups):  # grow random groups one image at a time
        sizes[g] += 1
    pairs = lambda s: int((s * (s - 1) // 2).sum())  # noqa: E731
    while pairs(sizes) < positives:  # move an image from a small group to a large one: more pairs
        small = rng.choice(np.flatnonzero(sizes == sizes[sizes > 2].min()))
        big = rng.choice(np.flatnonzero(sizes >= 3))
        if small != big and sizes[small] > 2:
            sizes[small] -= 1
            sizes[big] += 1
    return sizes.tolist()


def make_holidays(seed: int = 0) -> Path:
    """A Holidays-shaped folder of 1,491 tiny distinct JPEGs (``NNNNNN.jpg``, 500 groups), made once."""
    import numpy as np
    from PIL import Image

    folder = bench_dir(f"holidays-v{HOLIDAYS_VERSION}-{seed}")
    marker = folder / ".complete"
    if marker.exists():
        return folder
    rng = np.random.default_rng(seed)
    for g, size in enumerate(holidays_group_sizes(seed=seed)):
        for k in range(size):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{1000 + g:04d}{k:02d}.jpg", quality=90)
    marker.write_text("ok")
    return folder


def synthetic_vectors(groups: list[str], dim: int, noise: float, seed: int) -> np.ndarray:
    """CNN-like pooled vectors with group structure: a shared scene code per group plus per-view noise,
    through a random projection, so classifiers can learn, but not perfectly.

    Shaped like real pooled features (EfficientNet-Lite0 on the demo: mean 0.17, half the values
    about zero, a heavy tail, dims of different scales): ``c * relu(u) ** 1.5`` of a standardised
    projection ``u``, times a per-dimension log-normal scale.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    latent = 64
    scene = rng.normal(size=(len(codes), latent))
    z = scene[[codes[g] for g in groups]] + noise * rng.normal(size=(len(groups), latent))
    u = z @ (rng.normal(size=(latent, dim)) / np.sqrt(latent * (1 + noise ** 2)))
    scale = 0.4 * rng.lognormal(0.0, 0.5, dim) / np.exp(0.125)
    return (np.maximum(u, 0) ** 1.5 * scale).astype(np.float32)


def write_vector_cache(dataset, backbone: str, weights: str, vectors) -> Path:
    """Write ``vectors`` as simlab's cached set for (dataset, backbone, weights), as vectorize would."""
    from simlab.vectors.cache import VectorCache

    return VectorCache(backbone, weights).write(dataset.fingerprint, vectors, dataset.digests)


def prepare_grid_vectors(weights: str = "random") -> tuple[str, dict]:
    """The grid's input: the Holidays-shaped dataset and, in the current simlab cache, a vector set
    for each of GRID_BACKBONES. Returns (dataset spec, {backbone: dim})."""
    from simlab.data import load_dataset
    from simlab.vectors import vectorize

    spec = f"holidays:{make_holidays()}"
    ds = load_dataset(spec)
    for i, (name, dim) in enumerate(GRID_BACKBONES.items()):
        write_vector_cache(ds, name, weights, synthetic_vectors(ds.groups, dim, noise=1.0 + 0.1 * i, seed=i))
        assert vectorize(ds, name, weights).computed == 0, "the written cache was not used"
    return spec, dict(GRID_BACKBONES)


def make_photos(n: int = 256, seed: int = 0, lo: int = 500, hi: int = 1000) -> list[str]:
    """``n`` photo-like JPEGs, long side between ``lo`` and ``hi`` px, written once and reused.

    Views of scikit-learn's two sample photos (china, flower): a random crop, resized to a random
    size and aspect ratio, with mild sensor-like noise so the files weigh what camera JPEGs of that
    size weigh (about 100-250 kB at quality 90); a quarter are portrait.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder = bench_dir(f"photos-v{PHOTO_VERSION}-{n}-{seed}-{lo}-{hi}")
    paths = [str(folder / f"{i:05d}.jpg") for i in range(n)]
    if all(os.path.exists(p) for p in paths):
        return paths
    sources = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]

    def write(i: int, path: str) -> None:
        rng = np.random.default_rng([seed, i])  # one stream per photo: the same files whatever the threads
        src = sources[i % 2]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        long_side = int(rng.integers(lo, hi + 1))
        short_side = int(long_side * rng.uniform(0.6, 0.8))
        size = (long_side, short_side) if rng.random() > 0.25 else (short_side, long_side)
        im = Image.fromarray(src[y:y + ch, x:x + cw]).resize(size, Image.Resampling.BICUBIC)
        a = np.asarray(im, np.float32) + rng.normal(0, 3.0, (size[1], size[0], 3)).astype(np.float32)
        tmp = path + ".tmp.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp, quality=90)
        os.replace(tmp, path)

    todo = [(i, p) for i, p in enumerate(paths) if not os.path.exists(p)]
    with ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 2))) as pool:
        list(pool.map(lambda item: write(*item), todo))
    return paths


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def median(values) -> float:
    return float(statistics.median(values))


def machine() -> dict:
    """What the numbers were measured on."""
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    try:
        from simlab.device import describe

        info["device"] = describe()
    except Exception as exc:  # noqa: BLE001  (the description must never stop a benchmark; logged)
        log(f"device description failed: {type(exc).__name__}: {exc}")
        info["device"] = f"unknown ({type(exc).__name__})"
    return info


def table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.3g}") -> str:
    """A plain fixed-width text table of dicts."""
    columns = columns or (list(rows[0]) if rows else [])

    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("x%s"))
        return True
    except ValueError:
        return False


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print the readable report, or (``--json``) exactly one JSON object on stdout and the report on stderr."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=_jsonable) + "\n")
        print(text, file=sys.stderr)
    else:
        print(text)
    sys.stdout.flush()


def _jsonable(v):
    try:
        import numpy as np

        if isinstance(v, np.generic):
            return v.item()
    except ImportError:
        pass
    return str(v)


def log(msg: str) -> None:
    """Progress notes go to stderr, so ``--json`` keeps stdout to one JSON object."""
    print(msg, file=sys.stderr, flush=True)
