"""Shared fixtures: an isolated cache, and tiny generated image datasets made of real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def tmp_cache(tmp_path_factory, monkeypatch) -> Path:
    """Point ``SIMLAB_CACHE`` at a fresh temporary folder for this test; returns that folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """Point ``SIMLAB_CACHE`` at a fresh temporary folder for a whole module (``pytestmark =
    pytest.mark.usefixtures("module_cache")``); returns that folder."""
    cache = tmp_path_factory.mktemp("module_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMLAB_CACHE", str(cache))
        yield cache


def scene_image(group: int, view: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB picture whose content clearly depends on ``group`` (colours, shapes, layout)
    and only slightly on ``view`` (a small shift and brightness change)."""
    w, h = size
    rng = np.random.default_rng(1000 + group)
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    im = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(im)
    dx, dy = (view % 3) - 1, (view % 2)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x0 + dx, y0 + dy, x1 + dx, y1 + dy], fill=colour)
        else:
            draw.ellipse([x0 + dx, y0 + dy, x1 + dx, y1 + dy], fill=colour)
    if view:
        arr = np.asarray(im, dtype=np.int16) + 6 * view
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im


def make_holidays(directory, sizes, size: tuple[int, int] = (64, 48), first_group: int = 1000) -> list[Path]:
    """Write a tiny Holidays folder: ``sizes[i]`` JPEG views for group ``first_group + i``, named
    ``GGGGVV.jpg``. Returns the written paths in dataset order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(sizes):
        for v in range(n):
            p = directory / f"{first_group + i:04d}{v:02d}.jpg"
            scene_image(i, v, size).save(p, "JPEG", quality=90)
            paths.append(p)
    return paths


def make_folder(directory, sizes, size: tuple[int, int] = (64, 48), ext: str = "png") -> list[Path]:
    """Write a tiny one-subfolder-per-group dataset (``g0/v0.png`` ...). Returns the written paths."""
    directory = Path(directory)
    paths = []
    for i, n in enumerate(sizes):
        gdir = directory / f"g{i}"
        gdir.mkdir(parents=True, exist_ok=True)
        for v in range(n):
            p = gdir / f"v{v}.{ext}"
            scene_image(i, v, size).save(p)
            paths.append(p)
    return paths


@pytest.fixture(name="make_holidays")
def _make_holidays_fixture():
    """The :func:`make_holidays` helper as a fixture: ``def test_x(make_holidays, tmp_path): ...``
    (or ``from conftest import make_holidays``)."""
    return make_holidays


@pytest.fixture(name="make_folder")
def _make_folder_fixture():
    """The :func:`make_folder` helper as a fixture."""
    return make_folder


@pytest.fixture
def holidays_dir(tmp_path) -> Path:
    """A ready tiny Holidays folder: 6 groups of sizes 3, 2, 1, 4, 2, 3 (15 JPEGs, 64x48)."""
    d = tmp_path / "holidays"
    make_holidays(d, [3, 2, 1, 4, 2, 3])
    return d


# --------------------------------------------------------------------------- the demo, made once per session

DEMO_SEED_BACKBONES = ("efficientnet_lite0", "phash")  # the backbones the demo-backed fixtures run grids on


@pytest.fixture(scope="session")
def demo_seed(tmp_path_factory) -> Path:
    """A cache folder holding the generated demo dataset and its vectors for ``DEMO_SEED_BACKBONES``, made by the
    CLI once per test session and shared by the pytest-xdist processes (the first one makes it under a file
    lock; the others wait and read it). Copy it into a fixture's fresh cache with :func:`seed_cache`: the
    fixture then skips generating the demo and vectorising its 419 photos, which the tests of vectorising do
    on their own."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, shared by its processes
    seed = root / "demo_seed"
    with FileLock(str(root / "demo_seed.lock")):
        if not (seed / "complete").exists():
            env = dict(os.environ, SIMLAB_CACHE=str(seed), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
            out = subprocess.run([sys.executable, "-m", "simlab", "vectorize", "--dataset", "demo", "--backbone",
                                  *DEMO_SEED_BACKBONES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, out.stderr[-3000:]
            (seed / "complete").touch()
    return seed


def seed_cache(cache: Path, seed: Path) -> Path:
    """Copy the demo and its vectors from ``seed`` (the :func:`demo_seed` folder) into ``cache``; returns it."""
    for part in ("datasets", "vectors"):
        shutil.copytree(seed / part, Path(cache) / part, dirs_exist_ok=True)
    return Path(cache)
