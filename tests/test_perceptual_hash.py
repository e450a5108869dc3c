"""The weight-free perceptual-hash backbones (phash, dhash): same bits as imagehash on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

HASHES = ("phash", "dhash")
PHOTOS = ("astronaut", "brick", "camera", "cat", "cell", "chelsea", "coffee", "coins", "colorwheel", "grass",
          "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")


pytestmark = pytest.mark.usefixtures("module_cache")  # one SIMLAB_CACHE for the module (conftest)


@pytest.fixture(scope="module")
def ph():
    from simlab.backbones import perceptual_hash

    return perceptual_hash


@pytest.fixture(scope="module")
def models(ph):
    return {kind: ph.build_hash(kind) for kind in HASHES}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory, ph):
    """skimage's sample photos as JPEG files, and each as simlab decodes it (128 px, centre square)."""
    import skimage.data

    from simlab.data.images import load_for_model

    folder = tmp_path_factory.mktemp("photos")
    files, decoded = [], []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        path = folder / f"{name}.jpg"
        Image.fromarray(pixels).convert("RGB").save(path, quality=92)
        files.append(str(path))
        decoded.append(load_for_model(path, ph.INPUT_SIZE))
    return files, np.stack(decoded)


def _imagehash_bits(kind: str, pixels: np.ndarray) -> np.ndarray:
    import imagehash

    h = getattr(imagehash, kind)(Image.fromarray(pixels))
    return np.where(h.hash.flatten(), 1.0, -1.0)


@pytest.mark.parametrize("kind", HASHES)
def test_bits_match_imagehash_on_real_photos(ph, models, photo_files, kind):
    _files, decoded = photo_files
    ours = np.asarray(models[kind](ph.preprocess(decoded.astype(np.float32))))
    assert ours.shape == (len(PHOTOS), 64) and set(np.unique(ours)) <= {-1.0, 1.0}
    theirs = np.stack([_imagehash_bits(kind, image) for image in decoded])
    differing = (ours != theirs).sum(axis=1)  # bits per photo
    # every step follows PIL's 8-bit arithmetic (all 18 agree here); float rounding at an exact tie may
    # still flip a bit on another device
    assert (differing == 0).mean() >= 0.9, differing
    assert differing.max() <= 2, differing


def test_resize_matrix_is_pils_lanczos(ph):
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (128, 128)).astype(np.float32)
    for out in (32, 9, 8, 128):
        ours = ph.resize_matrix(128, out) @ gray @ ph.resize_matrix(128, out).T
        theirs = np.asarray(Image.fromarray(gray, mode="F").resize((out, out), Image.Resampling.LANCZOS))
        np.testing.assert_allclose(ours, theirs, atol=0.05)
    np.testing.assert_allclose(ph.resize_matrix(128, 32).sum(axis=1), 1.0, atol=1e-5)  # 22-bit coefficients


def test_dct_matrix_is_scipys(ph):
    from scipy.fft import dct

    x = np.random.default_rng(1).normal(size=32)
    np.testing.assert_allclose(ph.dct_matrix(32, 8) @ x, dct(x, type=2)[:8], atol=1e-9)


def test_weights_are_ignored_and_checked(ph, models):
    x = np.random.default_rng(2).uniform(0, 255, (3, 128, 128, 3)).astype(np.float32)
    for kind in HASHES:
        random = ph.build_hash(kind, "random")
        np.testing.assert_array_equal(np.asarray(random(x)), np.asarray(models[kind](x)))
        assert random.count_params() == 0
    with pytest.raises(ValueError, match="weights"):
        ph.build_hash("phash", "imagenet21k")
    with pytest.raises(ValueError, match="phash or dhash"):
        ph.projections("ahash")


def test_same_bits_under_mixed_precision(ph, models, photo_files):
    """On a GPU the forward pass is built under mixed_float16: the hash layer keeps float32."""
    import keras

    _files, decoded = photo_files
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        halves = {kind: ph.build_hash(kind) for kind in HASHES}
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = decoded.astype(np.float32)
    for kind in HASHES:
        np.testing.assert_array_equal(np.asarray(halves[kind](x)), np.asarray(models[kind](x)))


def test_brighter_copy_keeps_its_hash(ph, models, photo_files):
    """What a near-duplicate detector is for: a brighter copy hashes alike, another photo does not."""
    _files, decoded = photo_files
    x = decoded.astype(np.float32)
    brighter = np.clip(x * 1.1 + 10, 0, 255)
    for kind in HASHES:
        a, b = np.asarray(models[kind](x)), np.asarray(models[kind](brighter))
        same = (a != b).sum(axis=1)
        other = (a != np.roll(a, 1, axis=0)).sum(axis=1)
        assert np.median(same) <= 4 < np.median(other), (kind, same, other)


def test_registered_as_bundled_and_weight_free(ph):
    from simlab.backbones import BACKBONES, list_backbones, weights_status

    for kind in HASHES:
        entry = BACKBONES[kind]
        assert (entry.input_size, entry.dim, entry.bundled, entry.weights_file) == (128, 64, True, None)
        assert entry.build.func is ph.build_hash and entry.build.args == (kind,)
        assert entry.options["weight_free"] and weights_status(kind) == "bundled"
    assert {"phash", "dhash"} <= {b.name for b in list_backbones()}


def test_vectorize_pipeline(ph, photo_files):
    """Through simlab's own pipeline (decode, compiled forward pass), with the same bits as the model."""
    from simlab.vectors import compute_vectors

    files, decoded = photo_files
    for kind in HASHES:
        vectors, errors = compute_vectors(files, kind, "imagenet", batch_size=5)
        assert errors == [""] * len(files) and vectors.dtype == np.float32 and vectors.shape == (len(files), 64)
        direct = np.asarray(ph.build_hash(kind)(decoded.astype(np.float32)))
        np.testing.assert_array_equal(vectors, direct)
