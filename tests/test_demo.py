"""The built-in demo: generated once per test session into a temporary cache."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import simlab_cache_at
from simlab.data import DATASET_KINDS, demo, file_digest, load_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """A session-wide cache holding one real demo, generated here (timed)."""
    cache = tmp_path_factory.mktemp("demo-cache")
    with simlab_cache_at(cache):
        t = time.process_time()  # CPU seconds of all threads: a busy machine does not inflate it
        folder = demo.ensure_demo()
        cpu_seconds = time.process_time() - t
        yield cache, folder, cpu_seconds


@pytest.fixture
def demo_ds(demo_cache, monkeypatch):
    cache, folder, _ = demo_cache
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    return load_dataset("demo")


def test_demo_generated_in_cache_and_fast(demo_cache):
    cache, folder, cpu_seconds = demo_cache
    assert folder == cache / "datasets" / "demo"
    assert (folder / demo.MARKER).is_file()
    assert cpu_seconds < 100  # i.e. well under 60 s of wall time on 2 idle cores
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".demo")]
    assert leftovers == []


def test_demo_bounds(demo_ds, demo_cache):
    ds = demo_ds
    assert ds.spec == "demo"
    assert ds.problems == []  # manifest.csv beside the images is not a problem
    assert 30 <= ds.n_groups <= 500
    sizes = Counter(ds.group_sizes().values())
    assert min(sizes) >= 6 and max(sizes) <= 14
    assert ds.queries == ds.query_indices()
    assert [Path(ds.paths[i]).name[4:] for i in ds.queries] == ["00.jpg"] * ds.n_groups
    # several hundred test pairs on a 30% group split: positives alone
    positives = sum(n * (n - 1) // 2 for n in ds.group_sizes().values())
    assert positives * 0.3 >= 200
    longs, aspects = [], []
    for p in ds.paths[::7]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            longs.append(max(im.size))
            aspects.append(im.size[0] / im.size[1])
    assert 320 <= min(longs) and max(longs) <= 640
    assert min(aspects) < 0.9 and max(aspects) > 1.2  # varied aspect, portrait and landscape
    stats = json.loads((demo_cache[1] / demo.MARKER).read_text())
    assert stats["n_groups"] == ds.n_groups and stats["n_images"] == ds.n_images
    assert len(stats["photos"]) >= 8


def manifest_rows(folder: Path) -> list[dict]:
    """manifest.csv read with the csv module alone (not simlab's reader)."""
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_manifest_matches_the_files(demo_cache):
    _, folder, _ = demo_cache
    rows = manifest_rows(folder)
    assert list(rows[0]) == ["path", "group", "source", "x0", "y0", "x1", "y1"]
    images = sorted(p.name for p in folder.glob("*.jpg"))
    assert sorted(r["path"] for r in rows) == images and len(images) == len(rows)
    sources = {f"{pkg}/{rel}" for pkg, rel, _ in demo.PHOTOS.values()}
    for r in rows:
        assert r["group"] == r["path"][:4], r
        assert r["source"] in sources, r
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 and 0 <= y0 < y1, r
    # every group comes from one photo
    assert all(len({r["source"] for r in rows if r["group"] == g}) == 1 for g in {r["group"] for r in rows})
    assert demo.read_manifest(folder)[0]["x0"] == int(rows[0]["x0"])


def test_demo_groups_of_one_photo_never_share_a_pixel(demo_cache):
    """Boxes are half-open pixel ranges [x0, x1) x [y0, y1): two views of different groups cut from one
    photo have no pixel in common; photos whose regions all look alike give one group at most."""
    _, folder, _ = demo_cache
    by_source: dict[str, list[tuple]] = {}
    for r in manifest_rows(folder):
        by_source.setdefault(r["source"], []).append(
            (r["group"], *(int(r[k]) for k in ("x0", "y0", "x1", "y1"))))
    assert len(by_source) >= 8
    for source, boxes in by_source.items():
        for i, (g, x0, y0, x1, y1) in enumerate(boxes):
            for h, a0, b0, a1, b1 in boxes[i + 1:]:
                if g != h:
                    assert min(x1, a1) <= max(x0, a0) or min(y1, b1) <= max(y0, b0), (source, g, h)
    textures = {f"{pkg}/{rel}" for pkg, rel, scenes in demo.PHOTOS.values() if not scenes}
    for source in textures & set(by_source):
        assert len({g for g, *_ in by_source[source]}) == 1, source


def test_demo_has_no_near_blank_image(demo_cache):
    _, folder, _ = demo_cache
    stds = {}
    for p in sorted(folder.glob("*.jpg")):
        with Image.open(p) as im:
            stds[p.name] = float(np.asarray(im.convert("L"), dtype=np.float64).std())
    flat = {name: round(v, 1) for name, v in stds.items() if v < 12}
    assert flat == {}


def test_demo_kind_listed():
    loader, description, example = DATASET_KINDS["demo"]
    assert example == "demo" and "demo" in description.lower()


def test_demo_reused_not_regenerated(demo_cache, monkeypatch):
    cache, folder, _ = demo_cache
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    marker = folder / demo.MARKER
    before = marker.stat().st_mtime_ns
    t = time.perf_counter()
    assert demo.ensure_demo() == folder
    assert time.perf_counter() - t < 0.5
    assert marker.stat().st_mtime_ns == before


def test_demo_deterministic_in_fresh_process(demo_cache, tmp_path):
    """A fresh interpreter (other hash seed, fresh cache) rebuilds the first groups byte for byte."""
    _, folder, _ = demo_cache
    out = tmp_path / "again"
    code = (
        "import dataclasses, sys; from simlab.data import demo; "
        "demo.generate(sys.argv[1], dataclasses.replace(demo.DEFAULT, n_groups=25))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", SIMLAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=tmp_path, timeout=120)
    again = sorted(out.glob("*.jpg"))
    assert len(again) >= 50
    for p in again:
        assert file_digest(p) == file_digest(folder / p.name), p.name
    rows = manifest_rows(out)
    assert len(rows) == len(again) and all(row in manifest_rows(folder) for row in rows)


def test_demo_versioning_and_atomic_dir(tmp_cache):
    small = dataclasses.replace(demo.DEFAULT, n_groups=8)
    folder = demo.ensure_demo(small)
    marker = folder / demo.MARKER
    first = {p.name: file_digest(p) for p in folder.glob("*.jpg")}
    assert 8 * 6 <= len(first) <= 8 * 14
    assert (folder / demo.MANIFEST).is_file()
    assert json.loads(marker.read_text())["config"] == demo.config_key(small)
    # same generator: reused
    stamp = marker.stat().st_mtime_ns
    demo.ensure_demo(small)
    assert marker.stat().st_mtime_ns == stamp
    # a marker from another generator version: regenerated, same content (deterministic)
    info = json.loads(marker.read_text())
    info["version"] = "0-old"
    marker.write_text(json.dumps(info))
    (folder / "999999.jpg").write_bytes(b"stale")
    assert demo.ensure_demo(small) == folder
    assert json.loads(marker.read_text())["version"] == demo.GENERATOR_VERSION
    assert {p.name: file_digest(p) for p in folder.glob("*.jpg")} == first
    # a half-written temp folder from a killed run is not a demo, and is swept once stale
    killed = folder.parent / ".demo-killed"
    killed.mkdir()
    (killed / "100000.jpg").write_bytes(b"half")
    assert demo.ensure_demo(small) == folder
    assert not any(p.name.startswith(".demo-old") for p in folder.parent.iterdir())
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    # a missing marker (e.g. a killed run before the rename) triggers a rebuild
    marker.unlink()
    demo.ensure_demo(small)
    assert marker.is_file()
    assert not killed.exists()
    assert {p.name: file_digest(p) for p in folder.glob("*.jpg")} == first
