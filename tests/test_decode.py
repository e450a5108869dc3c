"""The decoder seam: which decoder runs (``$SIMLAB_DECODE``, GPU and package), Pillow's one decode
for several sizes, and nvImageCodec's fallback to Pillow and its hand-off to the Keras backend.

nvImageCodec's tests run where its wheel is installed (``requirements-gpu.txt``): on a machine
without a GPU they use its CPU backend (libjpeg-turbo), which gives host images; the DLPack hand-off
from device memory needs a GPU and is exercised by ``benchmarks/device_decode.sh``.
"""

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simlab.data.images import load_for_model
from simlab.vectors import DECODERS, Decoder, DecoderUnavailable, Job, VectorCache, choose_decoder, compute_many
from simlab.vectors.cache import config_key
from simlab.vectors.decode import draft_scales, load_sizes
from simlab.vectors.decoders import nvimgcodec_unavailable

HAS_NVIMGCODEC = importlib.util.find_spec("nvidia") is not None and \
    importlib.util.find_spec("nvidia.nvimgcodec") is not None


def photo(path, size, seed=0, mode="RGB", **save):
    """A photo-like picture (smooth colours, some detail) of ``size`` (w, h), saved to ``path``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noise = rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(base) + noise, 0, 255).astype(np.uint8)).convert(mode)
    img.save(path, **save)
    return str(path)


@pytest.fixture
def no_decoder_env(monkeypatch):
    monkeypatch.delenv("SIMLAB_DECODE", raising=False)
    nvimgcodec_unavailable.cache_clear()
    yield
    nvimgcodec_unavailable.cache_clear()


def test_pillow_is_chosen_without_a_gpu_and_named_values_force_it(no_decoder_env, monkeypatch):
    assert choose_decoder().name == "pillow"  # no GPU here (and, in CI, no nvImageCodec either)
    assert nvimgcodec_unavailable()  # says why
    for value in ("pillow", "threads", "processes", " Pillow "):
        monkeypatch.setenv("SIMLAB_DECODE", value)
        assert choose_decoder().name == "pillow"
    assert choose_decoder("pillow") is DECODERS["pillow"]


def test_forcing_nvimgcodec_where_it_cannot_run_is_one_clear_error(no_decoder_env, monkeypatch):
    monkeypatch.setenv("SIMLAB_DECODE", "nvimgcodec")
    with pytest.raises(DecoderUnavailable) as err:
        choose_decoder()
    message = str(err.value)
    assert "SIMLAB_DECODE=nvimgcodec cannot run here" in message and "\n" not in message
    assert ("requirements-gpu.txt" in message) if not HAS_NVIMGCODEC else ("GPU" in message)
    monkeypatch.setenv("SIMLAB_DECODE", "turbo")
    with pytest.raises(DecoderUnavailable, match="not a decoder: pick one of pillow, nvimgcodec"):
        choose_decoder()


def test_the_cli_refuses_a_forced_decoder_before_any_work(tmp_path):
    env = os.environ | {"SIMLAB_CACHE": str(tmp_path), "PYTHONPATH": os.getcwd(), "SIMLAB_DECODE": "nvimgcodec"}
    res = subprocess.run([sys.executable, "-m", "simlab", "vectorize", "--dataset", "folder:/nonexistent",
                          "--weights", "random"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr
    assert "SIMLAB_DECODE=nvimgcodec cannot run here" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "vectors").exists()


def test_pillow_keys_are_unchanged_and_another_decoder_gets_its_own_sets(no_decoder_env, tmp_cache):
    pillow = VectorCache("efficientnet_lite0", "random")
    assert pillow.decoder == "pillow"
    assert pillow.key == config_key("efficientnet_lite0", "random", "crop", "pillow")
    assert pillow.key == "efficientnet_lite0-random-224-crop-bccf06c79d80"  # as before decoders had a seam
    other = VectorCache("efficientnet_lite0", "random", decoder="nvimgcodec")
    assert other.key != pillow.key and other.key.startswith("efficientnet_lite0-random-224-crop-nvimgcodec-")


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_load_sizes_is_load_for_model_for_every_size_with_one_decode_per_draft_scale(tmp_path, fit):
    files = [photo(tmp_path / "big.jpg", (1100, 820), quality=90),  # 128 -> 1/4, 224 -> 1/2, 260 -> 1/2
             photo(tmp_path / "small.jpg", (300, 220), seed=1, quality=90),  # every size at full scale
             photo(tmp_path / "gray.jpg", (700, 500), seed=2, mode="L"),
             photo(tmp_path / "pic.png", (640, 480), seed=3)]
    sizes = (128, 224, 260)
    assert draft_scales(files[0], sizes) == {128: 4, 224: 2, 260: 2}
    assert draft_scales(files[1], sizes) == {128: 1, 224: 1, 260: 1}
    assert draft_scales(files[3], sizes) == {128: 1, 224: 1, 260: 1}  # not a JPEG: no draft
    out = load_sizes(files, [sizes] * len(files), fit)
    assert [decodes for _, _, decodes in out] == [2, 1, len(set(draft_scales(files[2], sizes).values())), 1]
    for path, (arrays, err, _) in zip(files, out):
        assert err == "" and sorted(arrays) == list(sizes)
        for s in sizes:
            np.testing.assert_array_equal(arrays[s], load_for_model(path, s, fit=fit))
    (arrays, err, _), = load_sizes([str(tmp_path / "gone.jpg")], [sizes], fit)
    assert arrays is None and err == "ImageError: file not found"


@pytest.mark.skipif(not HAS_NVIMGCODEC, reason="nvImageCodec is not installed (requirements-gpu.txt)")
def test_nvimgcodec_takes_plain_jpegs_and_leaves_the_rest_to_pillow(tmp_path, tmp_cache):
    from keras import ops

    from simlab.vectors import nvimgcodec as nv

    files = [photo(tmp_path / f"p{i}.jpg", (480 + 40 * i, 360), seed=i, quality=90) for i in range(5)]
    files += [photo(tmp_path / "gray.jpg", (400, 300), seed=7, mode="L"),
              photo(tmp_path / "prog.jpg", (400, 300), seed=8, quality=85, progressive=True)]
    falls = [photo(tmp_path / "cmyk.jpg", (400, 300), seed=9, mode="CMYK"),
             photo(tmp_path / "pic.png", (400, 300), seed=10)]
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "trunc.jpg").write_bytes(Path(files[0]).read_bytes()[:1500])
    broken = [str(tmp_path / "text.jpg"), str(tmp_path / "trunc.jpg"), str(tmp_path / "gone.jpg")]
    paths = files + falls + broken
    assert [nv._read(p) is not None for p in paths] == [True] * 7 + [False] * 3 + [True, False]

    on_cpu = Decoder("nvimgcodec", functools.partial(nv.nvimgcodec_batches, on_device=False), lambda: "", False)
    jobs = [Job("efficientnet_lite0", "random"), Job("phash", "random")]
    (ours, our_hash), stats = compute_many(paths, jobs, batch_size=4, decoder=on_cpu)
    (theirs, their_hash), _ = compute_many(paths, jobs, batch_size=4, decoder=DECODERS["pillow"])
    # same problem reports, word for word; the truncated JPEG came back empty from nvImageCodec
    assert ours[1] == theirs[1] and our_hash[1] == their_hash[1]
    assert [bool(e) for e in ours[1]] == [False] * 9 + [True] * 3
    fallen = falls + broken  # the truncated JPEG too: nvImageCodec answered it with no image
    assert stats.images == len(paths) and stats.fallbacks == len(fallen)
    assert stats.decodes == 7 + sum(d for _, _, d in load_sizes(fallen, [(128, 224)] * len(fallen)))
    # the files Pillow decoded: its vectors, within float rounding (other images in their batch)
    for i in (7, 8):
        np.testing.assert_allclose(ours[0][i], theirs[0][i], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(our_hash[0][i], their_hash[0][i])
    # nvImageCodec's: full-scale decode, antialiased bilinear in Keras: close to Pillow's, not equal
    a, b = ours[0][:7], theirs[0][:7]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos

    # the hand-off: the batch is the Keras backend's tensor, not numpy; a host image is read in place
    batch = next(nv.nvimgcodec_batches(files[:2], [(224,), (128, 224)], "crop", 4, on_device=False))
    assert not isinstance(batch.images[224], np.ndarray) and tuple(batch.images[224].shape) == (4, 224, 224, 3)
    assert batch.decodes == 2 and batch.fallbacks == 0
    black = ops.convert_to_numpy(batch.images[128])
    assert black[0].max() == 0 and black[1].max() > 0 and black[2:].max() == 0  # 128 only where asked
    from nvidia import nvimgcodec

    image = nv._decoder(False).decode(nv._read(files[0]), params=nv._params())
    tensor = nv.to_backend(image)
    np.testing.assert_array_equal(ops.convert_to_numpy(tensor), np.asarray(image))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(files[0]).convert("RGB")))  # libjpeg-turbo
    assert image.buffer_kind == nvimgcodec.ImageBufferKind.STRIDED_HOST


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_the_device_resize_is_pillows_bilinear_within_a_grey_level(fit):
    """nvImageCodec's resize (Keras ops on the device, any backend; no nvImageCodec needed): Pillow's
    BILINEAR filter as two matrix products, on images padded to a bucket and stacked in a group."""
    from keras import ops

    from simlab.vectors import nvimgcodec as nv

    rng = np.random.default_rng(0)
    shapes = [(480, 640), (640, 480), (333, 1000), (300, 300), (100, 150)]
    arrays = []
    for h, w in shapes:
        base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arrays.append(np.clip(np.asarray(base) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    size = 224
    bucket = (nv._bucket(max(h for h, _ in shapes)), nv._bucket(max(w for _, w in shapes)))
    placed = [ops.pad(ops.convert_to_tensor(a), [[0, bucket[0] - a.shape[0]], [0, bucket[1] - a.shape[1]], [0, 0]])
              for a in arrays]
    stacked = ops.stack(placed + [ops.zeros((*bucket, 3), "uint8")] * 3)
    params = np.zeros((8, 2, 5), np.float32)
    params[:, :, 1] = 1.0
    for j, (h, w) in enumerate(shapes):
        params[j] = nv.resize_params(h, w, size, fit)
    out = ops.convert_to_numpy(nv.resize(stacked, params, size))
    assert out.shape == (8, size, size, 3) and out[5:].max() == 0  # the group's padding: black
    for (h, w), a, got in zip(shapes, arrays, out):
        im = Image.fromarray(a)
        if fit == "crop":
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            ref = im.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
        else:
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            ref = Image.new("RGB", (size, size))
            ref.paste(im.resize((nw, nh), Image.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
        assert np.abs(got.astype(int) - np.asarray(ref)).max() <= 1
