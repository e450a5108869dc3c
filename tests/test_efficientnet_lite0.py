"""The bundled EfficientNet-Lite backbones (Lite0, Lite1, Lite2) and the numpy-only legacy PyTorch
reader behind them."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from helpers import simlab_cache_at
from simlab.torch_legacy import (
    MAGIC_NUMBER,
    PROTOCOL_VERSION,
    LegacyFormatError,
    UnsafePickleError,
    load_legacy_state_dict,
)

# --------------------------------------------------------------------------- a tiny legacy writer


class _Global:
    """Stands for a global (``module.name``) that does not exist here, e.g. ``torch.FloatStorage``."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise RuntimeError(f"{self.module}.{self.name} is a stand-in")


class _FakeStorage:
    def __init__(self, key: str, type_name: str, data: np.ndarray, view=None):
        self.key, self.type_name, self.data, self.view = key, type_name, data, view


class _FakeTensor:
    """Pickles like a torch tensor: ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_fake_global(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_fake_global

    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.data.size, obj.view)
        return None


def _write_header(f):
    pickle.dump(MAGIC_NUMBER, f, protocol=2)
    pickle.dump(PROTOCOL_VERSION, f, protocol=2)
    pickle.dump({"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {}}, f, protocol=2)


def write_legacy(path, state: OrderedDict[str, _FakeTensor], storages: list[_FakeStorage]):
    """Write ``state`` the way legacy ``torch.save`` does: header, state dict, keys, raw storages."""
    with open(path, "wb") as f:
        _write_header(f)
        _LegacyPickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.data.size))
            f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def simlab_cache(tmp_path_factory):
    """Every test here writes to a temporary cache, never the repository's."""
    root = tmp_path_factory.mktemp("simlab_cache")
    with simlab_cache_at(root):
        yield root


LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@pytest.fixture(scope="module")
def lite():
    from simlab.backbones import efficientnet_lite

    return efficientnet_lite


@pytest.fixture(scope="module")
def converted(lite, simlab_cache):
    """The one-time conversions, into the empty temporary cache: variant -> weights path."""
    paths = {}
    for name in LITE:
        path = lite.weights_path(name)
        assert not path.exists()
        assert lite.ensure_weights(name) == path
        assert path.exists() and path.parent == simlab_cache / "weights"
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def classifiers(lite, converted):
    """Each variant's classifier, built once for the module."""
    return {name: lite.build_classifier(name) for name in LITE}


# --------------------------------------------------------------------------- the reader


def test_reader_contiguous_strided_offset_and_shared(tmp_path):
    a = _FakeStorage("100", "FloatStorage", np.arange(12, dtype=np.float32))
    b = _FakeStorage("200", "FloatStorage", np.arange(20, dtype=np.float32) * 0.5)
    c = _FakeStorage("300", "LongStorage", np.array([7], dtype=np.int64))
    d = _FakeStorage("400", "DoubleStorage", np.linspace(0, 1, 6))
    state = OrderedDict(
        plain=_FakeTensor(a, 0, (2, 3), (3, 1)),
        transposed=_FakeTensor(a, 0, (3, 4), (1, 3)),  # non-contiguous view of the same storage
        offset=_FakeTensor(a, 6, (2, 3), (3, 1)),  # shares storage a, starts mid-way
        strided=_FakeTensor(b, 1, (2, 3), (10, 2)),  # offset and gaps
        broadcast=_FakeTensor(b, 4, (2, 2), (0, 1)),  # stride 0, like expand()
        scalar=_FakeTensor(c, 0, (), ()),
        double=_FakeTensor(d, 0, (6,), (1,)),
        empty=_FakeTensor(d, 0, (0, 3), (3, 1)),
    )
    path = tmp_path / "tiny.pth"
    write_legacy(path, state, [a, b, c, d])

    out = load_legacy_state_dict(path)
    assert isinstance(out, OrderedDict) and list(out) == list(state)
    flat_a, flat_b = a.data, b.data
    np.testing.assert_array_equal(out["plain"], flat_a[:6].reshape(2, 3))
    np.testing.assert_array_equal(out["transposed"], flat_a.reshape(4, 3).T)
    np.testing.assert_array_equal(out["offset"], flat_a[6:].reshape(2, 3))
    np.testing.assert_array_equal(out["strided"], [[flat_b[1 + 10 * i + 2 * j] for j in range(3)] for i in range(2)])
    np.testing.assert_array_equal(out["broadcast"], np.stack([flat_b[4:6]] * 2))
    assert out["scalar"].shape == () and out["scalar"].dtype == np.int64 and int(out["scalar"]) == 7
    assert out["double"].dtype == np.float64
    np.testing.assert_array_equal(out["double"], d.data)
    assert out["empty"].shape == (0, 3)
    for name in ("plain", "transposed", "strided", "broadcast"):
        assert out[name].dtype == np.float32 and out[name].flags.c_contiguous and out[name].flags.owndata
    out["transposed"][0, 0] = -1  # copies: writing one leaves the others alone
    assert out["plain"][0, 0] == 0


def test_reader_storage_view(tmp_path):
    root = _FakeStorage("1", "FloatStorage", np.arange(10, dtype=np.float32), view=("1v", 4, 5))
    path = tmp_path / "view.pth"
    write_legacy(path, OrderedDict(v=_FakeTensor(root, 1, (3,), (1,))), [root])
    np.testing.assert_array_equal(load_legacy_state_dict(path)["v"], [5, 6, 7])


def test_reader_refuses_tensor_past_its_storage(tmp_path):
    s = _FakeStorage("1", "FloatStorage", np.arange(6, dtype=np.float32))
    path = tmp_path / "oob.pth"
    write_legacy(path, OrderedDict(bad=_FakeTensor(s, 2, (3, 3), (3, 1))), [s])
    with pytest.raises(LegacyFormatError, match="past its storage"):
        load_legacy_state_dict(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_reader_refuses_other_globals_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for where in ("state", "header"):
        path = tmp_path / f"evil_{where}.pth"
        with open(path, "wb") as f:
            if where == "header":
                pickle.dump(_Evil(marker), f, protocol=2)
            else:
                _write_header(f)
                pickle.dump(OrderedDict(x=_Evil(marker)), f, protocol=2)
        with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system") as info:
            load_legacy_state_dict(path)
        assert isinstance(info.value, ValueError)
        assert not marker.exists()

    # The classic hand-written payload, GLOBAL 'os system' then REDUCE.
    path = tmp_path / "evil_raw.pth"
    with open(path, "wb") as f:
        _write_header(f)
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_reader_rejects_non_legacy_files(tmp_path):
    zipped = tmp_path / "new_style.pth"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(LegacyFormatError, match="zip"):
        load_legacy_state_dict(zipped)

    wrong_magic = tmp_path / "wrong.pth"
    wrong_magic.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(LegacyFormatError, match="magic"):
        load_legacy_state_dict(wrong_magic)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="legacy"):
        load_legacy_state_dict(garbage)


def test_real_checkpoint_loads(lite):
    state = load_legacy_state_dict(lite.source_path("efficientnet_lite0"))
    assert len(state) == 296
    expected = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.running_var": (32,),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_bn1.num_batches_tracked": (),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert state[key].shape == shape, key
    assert "_blocks.0._expand_conv.weight" not in state
    assert state["_fc.weight"].dtype == np.float32 and state["_fc.weight"].flags.c_contiguous
    assert np.all(state["_bn1.running_var"] > 0)


# Per variant: (repeats per stage, output channels per stage, input size), as the checkpoints hold them.
SHAPES = {
    "efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 224),
    "efficientnet_lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320), 240),
    "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352), 260),
}


@pytest.mark.parametrize("name", LITE)
def test_family_scaling(lite, name):
    repeats, channels, size = SHAPES[name]
    v = lite.VARIANTS[name]
    assert tuple(s[0] for s in lite.stages(v)) == repeats
    assert tuple(s[4] for s in lite.stages(v)) == channels
    assert v.input_size == size and v.weights_file == f"{name}.weights.h5"
    specs = list(lite.block_specs(v))
    assert len(specs) == sum(repeats) and specs[0][4] == lite.STEM_CHANNELS and specs[-1][5] == channels[-1]


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_family_checkpoints_match_the_derived_blocks(lite, name):
    """The blocks derived from the multipliers are the checkpoint's, tensor for tensor."""
    state = load_legacy_state_dict(lite.source_path(name))
    assert len(state) == 386
    for i, kernel, _stride, expansion, cin, cout in lite.block_specs(lite.VARIANTS[name]):
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (cin * expansion, 1, kernel, kernel)
        assert state[f"_blocks.{i}._project_conv.weight"].shape == (cout, cin * expansion, 1, 1)
    assert state["_conv_head.weight"].shape[:2] == (1280, SHAPES[name][1][-1])


def test_unknown_variant(lite):
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        lite.build("efficientnet_lite9")


# --------------------------------------------------------------------------- the Keras port


def _imagenet_probs(lite, classifier, image: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    size = classifier.input_shape[1]
    x = tf.image.resize(tf.cast(image[None], tf.float32), (size, size), method="bilinear")
    return np.asarray(classifier(lite.preprocess(x), training=False))[0]


# (photo, ImageNet label, lowest probability for Lite0, Lite1, Lite2): measured .79/.77/.73, .91/.66/.85
PHOTOS = [("chelsea", 285, (0.6, 0.6, 0.6)), ("coffee", 967, (0.8, 0.55, 0.75))]


@pytest.mark.parametrize(("name", "photo", "label", "min_prob"),
                         [(name, photo, label, probs[i]) for photo, label, probs in PHOTOS
                          for i, name in enumerate(LITE)])
def test_imagenet_predictions(lite, classifiers, name, photo, label, min_prob):
    import skimage.data

    probs = _imagenet_probs(lite, classifiers[name], getattr(skimage.data, photo)())
    assert probs.shape == (1000,)
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    assert int(probs.argmax()) == label
    assert probs[label] > min_prob


@pytest.mark.parametrize("name", LITE)
def test_build_features(lite, classifiers, name):
    from simlab.backbones import get_backbone

    size = SHAPES[name][2]
    model = get_backbone(name).build("imagenet")
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 1280)
    x = lite.preprocess(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32))
    feats = np.asarray(model(x, training=False))
    assert feats.shape == (2, 1280) and np.all(np.isfinite(feats)) and np.all(feats >= 0)  # after ReLU6
    # Same layers as the classifier: its head sees exactly these features.
    classifier = classifiers[name]
    w, b = classifier.get_layer("predictions").get_weights()
    logits = feats @ w + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(classifier(x, training=False)), expected, atol=1e-5)


def test_conversion_happens_once(lite, converted, classifiers, monkeypatch):
    before = {name: path.stat() for name, path in converted.items()}
    import simlab.torch_legacy

    def no_reconversion(*args, **kwargs):
        raise AssertionError("the checkpoint was converted again")

    monkeypatch.setattr(simlab.torch_legacy, "load_legacy_state_dict", no_reconversion)
    for name, path in converted.items():
        assert lite.ensure_weights(name) == path
        after = path.stat()
        assert (after.st_mtime_ns, after.st_ino, after.st_size) == (
            before[name].st_mtime_ns, before[name].st_ino, before[name].st_size)
    lite.build("efficientnet_lite0")
    weights = {p.name for p in converted.values()}
    leftovers = [p.name for p in converted["efficientnet_lite0"].parent.iterdir() if p.name not in weights]
    assert leftovers == []  # the atomic writes left no temp file behind


def test_random_weights_and_bad_choice(lite, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "fresh"))
    name = "efficientnet_lite0"
    a, b = lite.build(name, "random"), lite.build(name, weights="random")
    x = lite.preprocess(np.full((1, 224, 224, 3), 200.0, np.float32))
    fa, fb = np.asarray(a(x)), np.asarray(b(x))
    np.testing.assert_array_equal(fa, fb)  # seeded
    assert fa.shape == (1, 1280) and np.all(np.isfinite(fa)) and fa.std() > 1e-3  # no vanishing signal
    assert not lite.weights_path(name).exists()  # the bundled file was not touched
    with pytest.raises(ValueError, match="weights"):
        lite.build(name, "imagenet21k")
    with pytest.raises(ValueError, match="weights"):
        lite.build_classifier(name, None)


def test_source_checked_before_conversion(lite, tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path / "fresh"))
    fake = tmp_path / "efficientnet-lite1-00000000.pth"
    fake.write_bytes(b"not the checkpoint")
    monkeypatch.setattr(lite, "source_path", lambda name: fake)
    with pytest.raises(ValueError, match="not the bundled EfficientNet-Lite1 weights"):
        lite.ensure_weights("efficientnet_lite1")
    assert not lite.weights_path("efficientnet_lite1").exists()


def test_preprocess_numpy_and_tensor(lite):
    import tensorflow as tf

    x = np.array([0.0, 127.0, 255.0], np.float32)
    np.testing.assert_allclose(lite.preprocess(x), [-127 / 128, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(lite.preprocess(tf.constant(x))), [-127 / 128, 0.0, 1.0])


def test_registered(lite):
    from simlab.backbones import BACKBONES, weights_status

    for name in LITE:
        entry = BACKBONES[name]
        assert entry.build.func is lite.build and entry.build.args == (name,) and entry.preprocess is lite.preprocess
        assert (entry.input_size, entry.dim, entry.bundled) == (SHAPES[name][2], 1280, True)
        assert entry.weights_file == f"{name}.weights.h5" == lite.weights_path(name).name
        assert entry.preprocessing_version == "1" and weights_status(name) == "bundled"
        assert entry.description.startswith(f"EfficientNet-Lite{name[-1]} (ImageNet top-1 ")
