"""A vectorisation killed, interrupted, stopped or out of disk keeps the batches it finished: started
again, it computes only the rest, and the vectors are those of a run that was never disturbed.

Real processes, real signals, real limits: a child process vectorises a generated dataset of 60
images and is killed (SIGKILL) from its own progress report at a known point; a SIGINT is sent
to the test's own process; a full disk
is a tiny tmpfs where root may mount one, else a file-size limit (``RLIMIT_FSIZE``, ``SIGXFSZ`` ignored).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder

from helpers import ctrl_c_raises, simlab_cache_at
from simlab.data import load_dataset
from simlab.progress import Cancelled
from simlab.vectors import DiskFull, VectorCache, cached_sets, vectorize

BACKBONE, BATCH, IMAGES = "efficientnet_lite0", 8, 60
ROOT = Path(__file__).resolve().parent.parent

# Vectorise folder:ARGV[1] in batches of 8, keeping parts every ARGV[4] seconds; after ARGV[2] images
# send this process the signal named ARGV[3] ("none": go on). A full disk prints its one line, rc 3.
CHILD = f"""
import os, signal, sys
from simlab.data import load_dataset
from simlab.vectors import DiskFull, vectorize
root, at, sig, every = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def progress(done, total, message="", **fields):
    print(done, flush=True)
    if sig != "none" and done >= at:
        os.kill(os.getpid(), getattr(signal, sig))
try:
    vs = vectorize(load_dataset("folder:" + root), {BACKBONE!r}, "random", batch_size={BATCH}, progress=progress,
                   save_every=every)
except DiskFull as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
print("computed", vs.computed)
"""


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "ds"
    make_folder(root, [3] * (IMAGES // 3))
    return root


@pytest.fixture(scope="module")
def clean(dataset_root) -> np.ndarray:
    """The vectors of an undisturbed run, in a cache of their own."""
    with simlab_cache_at(dataset_root.parent / "clean-cache"):
        vs = vectorize(load_dataset(f"folder:{dataset_root}"), BACKBONE, "random", batch_size=BATCH)
    assert vs.computed == IMAGES and len(vs.paths) == IMAGES
    return vs.vectors


def child(root: Path, cache: Path, at: int = 0, sig: str = "none", every: float = 0.0, fsize: int | None = None,
          args: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the vectorising child (or ``python -m simlab ARGS``) with its cache at ``cache``;
    ``fsize``: the largest file it may write, in bytes (beyond: EFBIG, as on a full disk)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
                        "SIMLAB_DECODE": "threads"}
    cmd = [sys.executable, "-m", "simlab", *args] if args else [sys.executable, "-c", CHILD, str(root), str(at),
                                                                 sig, str(every)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          preexec_fn=limit if fsize else None)


def rerun(root: Path, cache: Path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    return vectorize(load_dataset(f"folder:{root}"), BACKBONE, "random", batch_size=BATCH)


def parts(cache: Path) -> list[Path]:
    return sorted(cache.glob("vectors/*/*.part-*.npz"))


def one_line(stderr: str, prefix: str = "disk full: ") -> str:
    """The error line (TensorFlow logs its own start-up lines on stderr too); there is no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    found = [line.split("\r")[-1] for line in stderr.splitlines() if prefix in line]  # (after a progress bar)
    assert len(found) == 1, stderr[-3000:]
    return found[0]


def kept_count(message: str) -> int:
    found = re.search(r"(\d+) of (\d+) images are kept", message)
    assert found and int(found[2]) == IMAGES, message
    return int(found[1])


def test_a_killed_vectorisation_keeps_its_finished_batches(dataset_root, clean, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    res = child(dataset_root, cache, at=24, sig="SIGKILL")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert res.stdout.split() == ["8", "16", "24"]
    monkeypatch.setenv("SIMLAB_CACHE", str(cache))
    assert len(parts(cache)) == 3 and cached_sets() == []  # kept, but not a set anyone lists
    again = rerun(dataset_root, cache, monkeypatch)
    assert again.computed == IMAGES - 24
    assert np.array_equal(again.vectors, clean)
    assert parts(cache) == [] and [s["images"] for s in cached_sets()] == [IMAGES]


def test_an_interrupted_vectorisation_keeps_what_it_computed(dataset_root, clean, tmp_path, monkeypatch):
    """Ctrl-C (a real SIGINT to this process) long before the next timed part: the finished
    batches are kept on the way out."""
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))

    def progress(done, total, message="", **fields):
        if done == 32:
            os.kill(os.getpid(), signal.SIGINT)

    with ctrl_c_raises(), pytest.raises(KeyboardInterrupt):
        vectorize(load_dataset(f"folder:{dataset_root}"), BACKBONE, "random", batch_size=BATCH, progress=progress,
                  save_every=3600)
    assert len(parts(tmp_path / "cache")) == 1
    again = rerun(dataset_root, tmp_path / "cache", monkeypatch)
    assert again.computed == IMAGES - 32
    assert np.array_equal(again.vectors, clean)


def test_a_stopped_vectorisation_keeps_what_it_computed(dataset_root, clean, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    seen = []
    with pytest.raises(Cancelled):
        vectorize(load_dataset(f"folder:{dataset_root}"), BACKBONE, "random", batch_size=BATCH,
                  progress=lambda done, *a, **f: seen.append(done), should_stop=lambda: len(seen) >= 2)
    again = rerun(dataset_root, tmp_path / "cache", monkeypatch)
    assert again.computed == IMAGES - 16
    assert np.array_equal(again.vectors, clean)


def test_the_cli_says_disk_full_in_one_line(dataset_root, tmp_path):
    cache = tmp_path / "cache"
    res = child(dataset_root, cache, fsize=64 * 1024,
                args=["vectorize", "--dataset", f"folder:{dataset_root}", "--backbone", BACKBONE,
                      "--weights", "random"])
    assert res.returncode == 2, res.stderr[-2000:]
    line = one_line(res.stderr)
    assert line.startswith(f"error: disk full: {cache}") and kept_count(line) == 0
    assert issubclass(DiskFull, OSError) and issubclass(DiskFull, ValueError)


@contextlib.contextmanager
def small_disk(path: Path):
    """``(cache folder, file-size limit)``: a 160 kB tmpfs where root may mount one (the disk fills
    after a few parts), else a plain folder and a 128 kB limit per file (the parts, 8 images each,
    fit; the full set of 60 does not)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        yield path, 128 * 1024
        return
    try:
        yield path, None
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def test_a_full_disk_keeps_what_was_written(dataset_root, clean, tmp_path, monkeypatch):
    """The disk fills up: the run stops with one line naming the path and how many images are kept
    (those of the parts written); with room again, the rest is computed and the vectors are a
    clean run's. No torn temp file is left."""
    with small_disk(tmp_path / "small") as (cache, fsize):
        res = child(dataset_root, cache, fsize=fsize)
        assert res.returncode == 3, res.stderr[-2000:]
        line = one_line(res.stderr)
        assert line.startswith(f"disk full: {cache}") and "free space and run again" in line
        kept = kept_count(line)
        assert len(parts(cache)) == -(-kept // BATCH) and (kept == IMAGES if fsize else 0 < kept < IMAGES)
        assert not [f for f in cache.rglob("*") if f.name.startswith(".")]
        if not fsize:
            subprocess.run(["mount", "-o", "remount,size=4m", str(cache)], check=True, timeout=30)
        again = rerun(dataset_root, cache, monkeypatch)
        assert again.computed == IMAGES - kept
        assert np.array_equal(again.vectors, clean)
        assert parts(cache) == []


@pytest.mark.parametrize("poison", ["narrow", "nan"])
def test_a_cached_set_that_is_not_the_backbones_vectors_is_recomputed_with_a_warning(poison, tmp_path, monkeypatch,
                                                                                      caplog):
    """A set of 10-d vectors under the 1280-d backbone's key, or one holding NaN, is computed again (its file
    named in a warning), never handed on as that backbone's vectors."""
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    make_folder(tmp_path / "ds", [2, 2, 2])
    ds = load_dataset(f"folder:{tmp_path / 'ds'}")
    rng = np.random.default_rng(0)
    if poison == "narrow":
        bad = rng.normal(size=(ds.n_images, 10)).astype(np.float32)
    else:
        bad = rng.normal(size=(ds.n_images, 1280)).astype(np.float32)
        bad[3, 7] = np.nan
    cache = VectorCache(BACKBONE, "random")
    path = cache.write(ds.fingerprint, bad, ds.digests)
    with caplog.at_level("WARNING", logger="simlab"):
        vs = vectorize(ds, BACKBONE, "random")
    assert vs.vectors.shape == (ds.n_images, 1280) and np.isfinite(vs.vectors).all()
    assert vs.computed == ds.n_images
    why = "10-d, the backbone's are 1280-d" if poison == "narrow" else "1 of 6 vectors hold non-finite values"
    assert any(str(path) in r.getMessage() and why in r.getMessage() for r in caplog.records), caplog.text
    again = vectorize(ds, BACKBONE, "random")  # the set written back is the backbone's: a plain hit
    assert again.computed == 0 and np.array_equal(again.vectors, vs.vectors)
