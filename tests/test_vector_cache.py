"""VectorCache: the one reader and writer of the cached vector files."""

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_group_folder
from simlab.data import load_dataset
from simlab.vectors import cached_sets, vectorize
from simlab.vectors.cache import CachedVectors, CorruptCache, VectorCache, config_key, read_path

BACKBONE = "efficientnet_lite0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def digests(n: int) -> list[str]:
    return [f"{i:016x}" for i in range(n)]


def test_write_then_read_round_trip(cache):
    vc = VectorCache(BACKBONE, "random")
    assert vc.key == config_key(BACKBONE, "random") and vc.folder == cache / "vectors" / vc.key
    vectors = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert not vc.has("abc")
    path = vc.write("abc", vectors, digests(5), bad={"ffff": "not an image"})
    assert path == vc.path("abc") == vc.folder / "abc.npz" and vc.has("abc")
    got = vc.read("abc")
    assert isinstance(got, CachedVectors)
    np.testing.assert_array_equal(got.vectors, vectors)
    assert got.vectors.dtype == np.float32 and got.digests == digests(5) and got.bad == {"ffff": "not an image"}
    assert read_path(path).digests == digests(5)
    listed, = cached_sets()
    assert (listed["key"], listed["fingerprint"], listed["images"], listed["dim"]) == (vc.key, "abc", 5, 8)
    assert (listed["backbone"], listed["weights"]) == (BACKBONE, "random")
    # the bank finds vectors by digest across the configuration's sets
    vc.write("other", vectors[:2] + 1, ["aaaa", digests(5)[0]])
    bank = vc.bank({digests(5)[3], "aaaa", "missing"})
    assert set(bank) == {digests(5)[3], "aaaa"}
    np.testing.assert_array_equal(bank[digests(5)[3]], vectors[3])


def test_fit_is_checked_and_keys_the_folder(cache):
    with pytest.raises(ValueError, match="fit must be one of"):
        VectorCache(BACKBONE, "random", fit="stretch")
    assert VectorCache(BACKBONE, "random", "pad").key != VectorCache(BACKBONE, "random", "crop").key


@pytest.mark.parametrize("arrays", [
    {"vectors": np.zeros((299, 4), np.float32), "digests": np.array(digests(300)), "bad": "{}"},
    {"vectors": np.zeros((3, 4), np.float64), "digests": np.array(digests(3)), "bad": "{}"},
    {"vectors": np.zeros(3, np.float32), "digests": np.array(digests(3)), "bad": "{}"},
    {"vectors": np.zeros((3, 4), np.float32), "digests": np.array(digests(3))},
    {"vectors": np.zeros((3, 4), np.float32), "digests": np.array(digests(3)), "bad": "not json"},
])
def test_a_file_that_does_not_fit_together_is_corrupt(cache, arrays):
    vc = VectorCache(BACKBONE, "random")
    np.savez(vc.path("x"), **arrays)
    with pytest.raises(CorruptCache):
        vc.read("x")
    assert issubclass(CorruptCache, ValueError)


def test_a_torn_file_is_corrupt_and_a_missing_one_is_not_found(cache):
    vc = VectorCache(BACKBONE, "random")
    vc.write("x", np.zeros((3, 4), np.float32), digests(3))
    vc.path("x").write_bytes(vc.path("x").read_bytes()[:100])
    with pytest.raises(CorruptCache, match="unreadable"):
        vc.read("x")
    with pytest.raises(FileNotFoundError):
        vc.read("never-written")
    assert vc.bank(digests(3)) == {}  # skipped, never fatal


def test_write_refuses_rows_that_do_not_match_the_digests(cache):
    with pytest.raises(ValueError, match="300 digests"):
        VectorCache(BACKBONE, "random").write("x", np.zeros((299, 4), np.float32), digests(300))


def test_a_299_row_file_for_300_images_is_recomputed(tmp_path, cache):
    """A cached file with one row fewer than its digests (as a bad writer could leave) is a miss:
    vectorize computes the set again and overwrites it with a good one. (pHash: the cache is the same for every
    backbone, and 600 images through a CNN would only add time.)"""
    ds = load_dataset(f"folder:{write_group_folder(tmp_path / 'ds', 100, 3, size=32)}")
    assert ds.n_images == 300
    first = vectorize(ds, "phash", "imagenet")
    vc = VectorCache("phash", "imagenet")
    np.savez(vc.path(ds.fingerprint), vectors=first.vectors[:299], digests=np.array(first.digests), bad="{}")
    again = vectorize(ds, "phash", "imagenet")
    assert again.computed == 300
    np.testing.assert_allclose(again.vectors, first.vectors, rtol=1e-5, atol=1e-5)
    assert len(vc.read(ds.fingerprint).vectors) == 300


@pytest.mark.parametrize("fingerprint", ["fp", "new"])
def test_a_killed_write_leaves_no_partial_file(cache, fingerprint):
    """The writer dies (``os._exit``) halfway through the file: nothing partial is left under the
    set's name, a set written there before is untouched, and the stray temp file is not listed."""
    vc = VectorCache(BACKBONE, "random")
    before = np.ones((4, 3), np.float32)
    vc.write("fp", before, digests(4))
    code = ("import os, numpy as np\n"
            "from simlab.vectors.cache import VectorCache\n"
            "def dying_savez(path, **arrays):\n"
            "    open(path, 'wb').write(b'PK half a zip')\n"
            "    os._exit(9)\n"
            "np.savez = dying_savez\n"
            f"VectorCache({BACKBONE!r}, 'random').write({fingerprint!r}, np.zeros((4, 3), np.float32),"
            f" {digests(4)!r})\n")
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": os.getcwd()}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 9, res.stderr[-2000:]
    assert len(list(vc.folder.iterdir())) == 2  # the set, and the dead writer's temp file beside it
    np.testing.assert_array_equal(vc.read("fp").vectors, before)
    assert not vc.has("new")
    assert [s["fingerprint"] for s in cached_sets()] == ["fp"]
    assert set(vc.bank(digests(4))) == set(digests(4))


def test_parts_are_banked_not_listed_and_go_with_the_full_set(cache):
    """A vectorisation in progress keeps parts of a set: the bank finds their vectors, the listing
    does not show them, an unreadable part is skipped, and writing the full set removes them."""
    vc = VectorCache(BACKBONE, "random")
    rows = np.random.default_rng(1).normal(size=(6, 8)).astype(np.float32)
    first = vc.write_part("fp", rows[:3], digests(3))
    second = vc.write_part("fp", rows[3:5], digests(6)[3:5], bad={digests(6)[5]: "not an image"})
    assert first != second and {first.name, second.name} <= {f.name for f in vc.folder.iterdir()}
    assert first.name.startswith("fp.part-") and not vc.has("fp") and cached_sets() == []
    kept = vc.parts("fp")
    assert sorted(kept.digests) == digests(5) and kept.bad == {digests(6)[5]: "not an image"}
    np.testing.assert_array_equal(vc.bank(digests(6))[digests(6)[4]], rows[4])
    other = vc.write_part("other", rows[:1], ["aaaa"])
    (vc.folder / "fp.part-torn.npz").write_bytes(b"PK torn")
    assert sorted(vc.parts("fp").digests) == digests(5)  # the torn part skipped
    vc.write("fp", rows[:5], digests(5), bad={digests(6)[5]: "not an image"})
    assert sorted(f.name for f in vc.folder.iterdir()) == ["fp.npz", other.name]  # another set's part stays
    assert [s["fingerprint"] for s in cached_sets()] == ["fp"]
    assert vc.parts("fp").digests == [] and vc.parts("fp").vectors.shape == (0, 1280)
