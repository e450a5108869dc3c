"""KerasHub backbones (DINOv2 ViT-S/14 and ViT-B/14, CLIP ViT-B/16 and SigLIP2 B/16 image towers).

Tests use random weights (the real presets need a download): same architecture as the presets, checked
by parameter count against KerasHub's own preset table. Offline behaviour is a real download attempt
against a Kaggle endpoint where nothing listens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import write_group_folder
from simlab.backbones import get_backbone, list_backbones, weights_status
from simlab.backbones import keras_hub as hub
from simlab.vectors import compute_vectors

NAMES = ("dinov2_small", "dinov2_base", "clip_vit_b16", "siglip2_b16")
FAMILIES = ("dinov2_small", "clip_vit_b16", "siglip2_b16")  # one of each tower: dinov2_base is dinov2_small's,
# larger (its architecture is checked against the preset's below)
NO_KAGGLE = {"KAGGLE_API_ENVIRONMENT": "TEST"}  # kagglesdk's test endpoint: http://localhost:7777


@pytest.fixture
def no_kaggle(monkeypatch):
    """Downloads go to localhost:7777 (refused), whatever this machine's network: a real, failing attempt."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 7777)) == 0:
            pytest.skip("something listens on localhost:7777")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.delenv(hub.ENV_DIR, raising=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = write_group_folder(tmp_path_factory.mktemp("hub") / "ds", n_groups=2, per_group=2, size=160)
    return sorted(str(p) for p in root.rglob("*.jpg"))


@pytest.mark.parametrize("name", FAMILIES)
def test_random_weights_give_unit_vectors_of_the_stated_size_the_same_every_build(name, photos, tmp_cache):
    bb = get_backbone(name)
    vectors, errors = compute_vectors(photos, name, "random", batch_size=2)  # the real vectorising path
    assert not any(errors)
    assert vectors.shape == (len(photos), bb.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4  # different photos, different vectors
    # every build (as another process would make) has the same seeded weights: the same vectors
    pixels = bb.preprocess(_pixels(photos, bb.input_size))
    first, second = (np.asarray(bb.build("random")(pixels)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def _pixels(paths, size):
    from PIL import Image, ImageOps

    return np.stack([np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (size, size), Image.BILINEAR),
                                np.float32) for p in paths])


@pytest.mark.parametrize("name", ["dinov2_small", "dinov2_base"])
def test_the_table_builds_the_presets_architecture(name):
    """At the preset's own 518 px grid, the DINOv2 tower has exactly the parameters KerasHub lists for it."""
    from keras_hub.models import DINOV2Backbone
    from keras_hub.src.models.dinov2.dinov2_presets import backbone_presets

    e = hub.entry(name)
    model = DINOV2Backbone(**e.tower, image_shape=(518, 518, 3))
    assert model.count_params() == backbone_presets[e.preset]["metadata"]["params"]


def test_clip_table_with_its_text_tower_is_the_presets_model():
    """The image tower of the table plus CLIP ViT-B/16's text tower: the preset's parameter count."""
    from keras_hub.models import CLIPBackbone, CLIPTextEncoder, CLIPVisionEncoder
    from keras_hub.src.models.clip.clip_presets import backbone_presets

    e = hub.entry("clip_vit_b16")
    text = CLIPTextEncoder(vocabulary_size=49408, embedding_dim=512, hidden_dim=512, num_layers=12, num_heads=8,
                           intermediate_dim=2048, intermediate_activation="quick_gelu", max_sequence_length=77)
    full = CLIPBackbone(CLIPVisionEncoder(**e.tower, image_shape=(224, 224, 3)), text,
                        projection_dim=e.projection_dim)
    assert full.count_params() == backbone_presets[e.preset]["metadata"]["params"]


def test_offline_stops_with_one_message_naming_the_preset_its_files_and_folders(tmp_cache, no_kaggle, monkeypatch):
    assert weights_status("dinov2_small") == "download"
    with pytest.raises(hub.PresetUnavailable) as err:
        get_backbone("dinov2_small").build("imagenet")
    message = str(err.value)
    for needed in ("dinov2_small", "kaggle://keras/dinov2/keras/dinov2_small/1", "config.json", "model.weights.h5",
                   str(tmp_cache / "weights" / "keras_hub" / "dinov2_small"), hub.ENV_DIR, "--weights random"):
        assert needed in message
    assert not list((tmp_cache / "weights" / "keras_hub").iterdir())  # no half-downloaded folder left
    monkeypatch.setenv(hub.ENV_DIR, str(tmp_cache / "shared"))
    with pytest.raises(hub.PresetUnavailable, match=str(tmp_cache / "shared" / "dinov2_small")):
        get_backbone("dinov2_small").build("imagenet")


def test_a_local_preset_folder_is_used_and_checked(tmp_cache, tmp_path, no_kaggle, monkeypatch, photos):
    """A preset saved by KerasHub into $SIMLAB_KERAS_HUB_DIR/<preset>/ loads with no network."""
    from keras_hub.models import DINOV2Backbone

    e = hub.entry("dinov2_small")
    tower, _ = hub._random_tower(e)
    tower.save_to_preset(str(tmp_path / "presets" / e.preset))
    monkeypatch.setenv(hub.ENV_DIR, str(tmp_path / "presets"))
    assert weights_status("dinov2_small") == "cached"
    bb = get_backbone("dinov2_small")
    pixels = bb.preprocess(_pixels(photos[:2], bb.input_size))
    loaded = np.asarray(bb.build("imagenet")(pixels))
    np.testing.assert_allclose(loaded, np.asarray(bb.build("random")(pixels)), atol=1e-5)

    # another network under the preset's name is refused, with the folder named
    other = tmp_path / "other"
    DINOV2Backbone(**(e.tower | {"hidden_dim": 48, "num_heads": 2, "intermediate_dim": 96, "num_layers": 2}),
                   image_shape=(224, 224, 3)).save_to_preset(str(other / e.preset))
    monkeypatch.setenv(hub.ENV_DIR, str(other))
    with pytest.raises(ValueError, match=r"does not hold DINOv2 ViT-S/14: .*hidden_dim 48 \(expected 384\)"):
        bb.build("imagenet")


def simlab(*args, cache, extra_env=None):
    env = os.environ | {"SIMLAB_CACHE": str(cache), "PYTHONPATH": os.getcwd()} | (extra_env or {})
    env.pop(hub.ENV_DIR, None)
    return subprocess.run([sys.executable, "-m", "simlab", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_backbones_json_lists_bundled_lites_and_keras_hub_status(tmp_path):
    res = simlab("backbones", "--json", cache=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in map(json.loads, res.stdout.splitlines())}
    for lite in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert rows[lite]["weights"] == "bundled" and rows[lite]["weights_present"]
    for name in NAMES:
        row = rows[name]
        assert (row["weights"], row["weights_present"]) == ("download", False)
        assert row["source"] == f"keras_hub:{hub.entry(name).preset}" and row["dim"] == hub.entry(name).dim
        assert row["embedding"] == hub.entry(name).embedding and "L2-normalised" in row["description"]
    assert "CLS token" in rows["dinov2_small"]["embedding"]
    assert "projection" in rows["clip_vit_b16"]["embedding"]
    assert "pooled" in rows["siglip2_b16"]["embedding"]
    assert [b.name for b in list_backbones()][:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

    folder = tmp_path / "weights" / "keras_hub" / "siglip2_base_patch16_224"  # a preset put there by hand
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.weights.h5").write_bytes(b"")
    rows = {r["name"]: r for r in map(json.loads, simlab("backbones", "--json", cache=tmp_path).stdout.splitlines())}
    assert (rows["siglip2_b16"]["weights"], rows["siglip2_b16"]["weights_present"]) == ("cached", True)
    text = simlab("backbones", cache=tmp_path).stdout
    assert "dinov2_small" in text and "download" in text and "cached" in text


def test_vectorize_cli_random_works_and_pretrained_offline_is_one_line(tmp_path):
    data = write_group_folder(tmp_path / "ds", n_groups=2, per_group=2, size=96)
    res = simlab("vectorize", "--dataset", f"folder:{data}", "--backbone", "dinov2_small", "--weights", "random",
                 "--json", cache=tmp_path / "cache", extra_env=NO_KAGGLE)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["images"], out["dim"], out["weights"]) == (4, 384, "random")

    res = simlab("vectorize", "--dataset", f"folder:{data}", "--backbone", "dinov2_small", cache=tmp_path / "cache",
                 extra_env=NO_KAGGLE)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "dinov2_small" in errors[0] and "model.weights.h5" in errors[0] and hub.ENV_DIR in errors[0]
