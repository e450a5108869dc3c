import numpy as np
import pytest

from simlab.backbones import get_backbone, list_backbones, weights_status
from simlab.backbones import keras_apps


def test_registry_lists_the_study_backbones_with_their_sizes():
    sizes = {b.name: (b.input_size, b.dim) for b in list_backbones()}
    assert list_backbones()[0].name == "efficientnet_lite0"
    assert sizes["vgg16"] == (224, 512) and sizes["vgg16_fc2"] == (224, 4096)
    assert sizes["resnet50"] == (224, 2048)
    assert sizes["inceptionv3"] == (299, 2048) and sizes["xception"] == (299, 2048)


def test_weights_status(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    assert weights_status("efficientnet_lite0") == "bundled"
    assert weights_status("resnet50") == "download"
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / get_backbone("resnet50").weights_file).write_bytes(b"x")
    assert weights_status("resnet50") == "cached"


def test_offline_download_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(keras_apps, "_ORIGIN", "http://127.0.0.1:9/{module}/{file}")  # nothing listens there
    with pytest.raises(keras_apps.WeightsUnavailable) as err:
        get_backbone("resnet50").build("imagenet")
    message = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "weights") in message and "efficientnet_lite0" in message


def test_a_keras_application_vectorises_with_its_own_preprocessing():
    bb = get_backbone("resnet50")
    model = bb.build("random")
    images = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3)).astype("float32")
    out = np.asarray(model(bb.preprocess(images)))
    assert out.shape == (2, 2048) and np.isfinite(out).all()


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_backbone("alexnet")
