"""One decode for every backbone: several backbones fed from one decode of each image give each
backbone the vectors it gets alone, bit for bit, and read each image once (where their JPEG draft
scales agree; once per scale where they do not), also through the cache, a stop and the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_decode import photo

from helpers import write_group_folder
from simlab.data import load_dataset
from simlab.progress import Cancelled
from simlab.vectors import DECODERS, Job, VectorCache, compute_many, compute_vectors, vectorize, vectorize_many
from simlab.vectors.decode import draft_scales

BACKBONES = ["efficientnet_lite0", "efficientnet_lite2", "phash"]  # 224, 260 and 128 px


@pytest.fixture
def jpeg_decodes(monkeypatch):
    """How many JPEG decodes Pillow runs (its decoder is made once per decode), threads only."""
    import PIL.Image

    monkeypatch.setenv("SIMLAB_DECODE", "threads")
    seen = []
    real = PIL.Image._getdecoder

    def counting(mode, decoder_name, *args, **kwargs):
        if decoder_name == "jpeg":
            seen.append(decoder_name)
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "_getdecoder", counting)
    return seen


def test_one_decode_feeds_every_backbone_with_the_vectors_it_gets_alone(tmp_path, tmp_cache, jpeg_decodes):
    # up to 300 x 225: every backbone's draft scale is 1, so one decode serves all three
    paths = [photo(tmp_path / f"{i}.jpg", (200 + 10 * i, 150 + 7 * i), seed=i, quality=90) for i in range(10)]
    paths.insert(3, str(tmp_path / "gone.jpg"))  # a problem, reported alike to every backbone
    alone = {}
    for b in BACKBONES:
        alone[b] = compute_vectors(paths, b, "random", batch_size=4)  # 3 batches, the last one padded
    assert len(jpeg_decodes) == 10 * len(BACKBONES)
    jpeg_decodes.clear()
    results, stats = compute_many(paths, [Job(b, "random") for b in BACKBONES], batch_size=4)
    assert len(jpeg_decodes) == 10  # each photo decoded once for the three
    assert stats.decoder == "pillow" and stats.images == 11 and stats.decodes == 11 and stats.fallbacks == 0
    assert stats.decodes_per_image == 1.0
    for b, (vectors, errors) in zip(BACKBONES, results):
        np.testing.assert_array_equal(vectors, alone[b][0])  # bit for bit
        assert errors == alone[b][1] and errors[3] == "ImageError: file not found"


def test_where_draft_scales_differ_each_scale_is_one_decode_and_vectors_stay_equal(tmp_path, tmp_cache,
                                                                                  jpeg_decodes):
    paths = [photo(tmp_path / f"{i}.jpg", size, seed=i, quality=90)
             for i, size in enumerate([(1100, 820), (640, 480), (300, 220), (820, 1100), (520, 400)])]
    scales = [len(set(draft_scales(p, (224, 128)).values())) for p in paths]
    assert scales == [2, 1, 1, 2, 2]
    bbs = ["efficientnet_lite0", "phash"]
    alone = {b: compute_vectors(paths, b, "random", batch_size=2) for b in bbs}
    jpeg_decodes.clear()
    results, stats = compute_many(paths, [Job(b, "random") for b in bbs], batch_size=2)
    assert len(jpeg_decodes) == stats.decodes == sum(scales)  # fewer than 2 x 5, never a resize from a finer one
    for b, (vectors, errors) in zip(bbs, results):
        np.testing.assert_array_equal(vectors, alone[b][0])
        assert errors == alone[b][1]


def test_backbones_needing_different_images_each_see_their_own_batches(tmp_path, tmp_cache):
    paths = [photo(tmp_path / f"{i}.jpg", (240, 180), seed=i) for i in range(9)]
    rows = {"efficientnet_lite0": [0, 2, 3, 5, 6, 8], "phash": [1, 2, 3, 4, 7]}
    results, stats = compute_many(paths, [Job(b, "random", r) for b, r in rows.items()], batch_size=4)
    assert stats.images == 9  # the union, each once
    for (b, r), (vectors, errors) in zip(rows.items(), results):
        expected, expected_errors = compute_vectors([paths[i] for i in r], b, "random", batch_size=4)
        np.testing.assert_array_equal(vectors, expected)
        assert errors == expected_errors


def test_vectorize_many_uses_each_cache_and_resumes_after_a_stop(tmp_path, tmp_cache):
    root = write_group_folder(tmp_path / "ds", n_groups=6, per_group=3)
    ds = load_dataset(f"folder:{root}")
    lite0 = vectorize(ds, "efficientnet_lite0", "random", batch_size=4)
    stops = {"n": 0}

    def stop_after_three():  # asked after each decoded batch
        stops["n"] += 1
        return stops["n"] >= 3

    seen = []
    with pytest.raises(Cancelled):
        vectorize_many(ds, ["efficientnet_lite0", "phash", "dhash"], "random", batch_size=4, save_every=0,
                       should_stop=stop_after_three, progress_for=lambda b: lambda *a, **f: seen.append(f["backbone"]))
    assert {"phash", "dhash"} <= set(seen) and "efficientnet_lite0" not in seen  # a cache hit
    for b in ("phash", "dhash"):
        assert len(VectorCache(b, "random").parts(ds.fingerprint).digests) == 12  # three batches of 4, kept
    stats = []
    sets = vectorize_many(load_dataset(f"folder:{root}"), ["efficientnet_lite0", "phash", "dhash"], "random",
                          batch_size=4, stats=stats)
    assert sets["efficientnet_lite0"].computed == 0 and sets["phash"].computed == sets["dhash"].computed == 6
    assert stats[0].images == 6 and stats[0].backbones == ["phash", "dhash"]
    np.testing.assert_array_equal(sets["efficientnet_lite0"].vectors, lite0.vectors)
    for b in ("phash", "dhash"):  # what one backbone alone gives, in a cache of its own
        alone_cache = tmp_path / f"alone-{b}"
        os.environ["SIMLAB_CACHE"] = str(alone_cache)
        try:
            alone = vectorize(load_dataset(f"folder:{root}"), b, "random", batch_size=4)
        finally:
            os.environ["SIMLAB_CACHE"] = str(tmp_cache)
        np.testing.assert_array_equal(sets[b].vectors, alone.vectors)
        assert sets[b].paths == alone.paths
    again = vectorize_many(load_dataset(f"folder:{root}"), ["phash", "efficientnet_lite0"], "random")
    assert all(s.computed == 0 for s in again.values())


def test_cli_vectorizes_several_backbones_from_one_decode(tmp_path):
    root = write_group_folder(tmp_path / "ds", n_groups=4, per_group=2)
    Image.new("RGB", (5, 5)).save(root / "g000" / "tiny.png")
    env = os.environ | {"SIMLAB_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd(), "SIMLAB_DECODE": "pillow"}
    res = subprocess.run([sys.executable, "-m", "simlab", "vectorize", "--dataset", f"folder:{root}", "--backbone",
                          "efficientnet_lite0", "phash", "--weights", "random", "--out", str(tmp_path / "v.npz"),
                          "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["decoder"] == "pillow" and out["decoded"] == out["decoded_images"] == 9
    assert [b["backbone"] for b in out["backbones"]] == ["efficientnet_lite0", "phash"]
    for b, dim in (("efficientnet_lite0", 1280), ("phash", 64)):
        with np.load(tmp_path / f"v-{b}.npz") as z:
            assert z["vectors"].shape == (9, dim) and len(z["paths"]) == 9
    assert DECODERS["pillow"].name == "pillow"


def test_a_grid_over_several_backbones_decodes_each_image_once(tmp_path, tmp_cache, jpeg_decodes, monkeypatch):
    from simlab.experiment import GridConfig, run_grid
    from simlab.store import Store

    spec = f"folder:{write_group_folder(tmp_path / 'ds', n_groups=12, per_group=3)}"
    counts = {}
    for backbones in (["efficientnet_lite0"], ["efficientnet_lite0", "phash"]):
        monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "+".join(backbones)))  # each grid from scratch
        config = GridConfig(dataset=spec, backbones=backbones, merges=["dot"], classifiers=["cosine"],
                            weights="random")
        jpeg_decodes.clear()
        assert len(list(run_grid(config, Store(tmp_path / f"{len(backbones)}.db")))) == len(backbones)
        counts[len(backbones)] = len(jpeg_decodes)
    # loading the dataset checks each file, vectorising decodes it: a second backbone adds no decode
    assert counts[2] == counts[1] >= 36
    assert vectorize(load_dataset(spec), "phash", "random").computed == 0  # its vectors are in its cache
